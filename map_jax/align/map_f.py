"""MAP-F: fine-tune a model toward the MAP solution p0·exp(λᵀr) with PPO, jointly or one value at a time.

`fine_tune` runs `map_jax.align.ppo.PPOMethod` on the shared loop (`map_jax.align.trainer.train`): KL to the
model as given, reward λᵀr, checkpoints and bitwise resume in the workdir.

`fine_tune_sequential` is the paper's memory-light alternative: align one value at a time, with only that value's
reward model loaded, following the coordinate-ascent λ schedule of `map_jax.core.sequential`.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import numpy as np

from map_jax.align import ppo, trainer


def fine_tune(
  model,
  prompts: Sequence[str],
  values: Sequence[Any],
  lam,
  cfg: ppo.PPOConfig,
  run: trainer.RunConfig,
  workdir: str | None = None,
  *,
  config_record: dict | None = None,
  on_step: Callable[[int, dict], None] | None = None,
) -> trainer.TrainResult:
  """Fine-tune `model` toward λᵀr with PPO (KL to the model as given) on the shared loop, resuming from `workdir`.

  Args:
    model: a `LoadedModel` (config, params, tokenizer); its params are both the starting policy and the frozen
      reference p0. Tokenizer None: prompts and responses are space-separated token ids.
    prompts: raw prompt texts, cycled in seeded shuffles.
    values: the m reward values: callables `value(prompts, responses)`, or names for `get_reward`, which are
      loaded once here and closed when the run ends.
    lam: λ [m], e.g. `solve_dual(R_pilot, palette).lam`.
    cfg: PPO hyperparameters; run: the loop's settings.
    workdir: where metrics, checkpoints and the final params go (None: nothing is written, no resume).
    config_record: extra fields (e.g. the model name) saved with checkpoints and checked on resume.
    on_step: called as on_step(step, metrics) after each step's checkpoint.

  Returns:
    `map_jax.align.trainer.TrainResult`.

  Raises:
    TrainingError: a non-finite reward or loss (message: step, cause, newest checkpoint).
    map_jax.checkpoint.ConfigMismatchError: workdir holds a run with a different config.
  """
  return trainer.train(
    ppo.PPOMethod(model, prompts, values, lam, cfg, run),
    run,
    workdir,
    config_record=config_record,
    on_step=on_step,
  )


# ------------------------------------------------------------------------------------------------ sequential


class Stage(NamedTuple):
  """One stage of sequential alignment: fine-tune toward `lam_step` · r_value, KL to the previous stage's model.

  round: the pass over the values (0-based); value: the value's index; lam_step: the change of λ_value the
  solver made at this step; lam: the full λ after the stage (the tilt the stage's model targets).
  """

  round: int
  value: int
  lam_step: float
  lam: np.ndarray


def sequential_stages(
  rewards, palette, *, rounds: int, order: Sequence[int] | None = None, min_step: float = 1e-8
) -> list[Stage]:
  r"""The sequential λ schedule of `map_jax.core.sequential.sequential_solve`, as fine-tuning stages.

  Step k of the solver moves one coordinate: λ_k = λ_{k−1} + Δ e_i. Since
  p0·exp(λ_kᵀr) ∝ [p0·exp(λ_{k−1}ᵀr)]·exp(Δ r_i), a PPO stage with reward Δ·r_i, β = 1 and the
  previous stage's model as KL reference has the next tilted model as its optimum: only r_i is needed, so
  only its reward model is loaded. Steps with |Δ| < `min_step` (the value already met) are dropped.

  Args:
    rewards: pilot reward matrix R (n, m) of the base model's responses; palette: c (m,).
    rounds, order: as for `sequential_solve`.

  Returns:
    The stages in order.
  """
  from map_jax.core.sequential import sequential_solve

  R = np.asarray(rewards, np.float64)
  order = list(range(R.shape[1])) if order is None else [int(i) for i in order]
  with jax.enable_x64(True):
    sol = sequential_solve(R, np.asarray(palette, np.float64), rounds=rounds, order=order)
    traj = np.asarray(sol.trajectory)
  stages, prev = [], np.zeros(R.shape[1])
  for r in range(rounds):
    for k, i in enumerate(order):
      lam = traj[r, k]
      if abs(lam[i] - prev[i]) >= min_step:
        stages.append(Stage(r, i, float(lam[i] - prev[i]), lam))
      prev = lam
  return stages


def fine_tune_sequential(
  model,
  prompts: Sequence[str],
  values: Sequence[Any],
  stages: Sequence[Stage],
  cfg: ppo.PPOConfig,
  run: trainer.RunConfig,
  workdir: str,
  *,
  config_record: dict | None = None,
) -> trainer.TrainResult:
  """Align one value at a time: each stage runs `fine_tune` with a single value, its λ step and, as both start
  and KL reference, the previous stage's model; only that value's reward model is loaded meanwhile.

  Each stage writes into `workdir/stage_SS_NAME/` (resumable like `fine_tune`); a finished stage (its params saved)
  is skipped when the sequence is run again. The last stage's policy is saved to `workdir/params`.

  Args:
    model: the base `LoadedModel`; values: the m values (names are loaded per stage and closed after it).
    stages: from `sequential_stages`; cfg, run: as for `fine_tune` (run.num_steps is per stage).

  Returns:
    The last stage's `TrainResult` (params_dir: workdir/params).
  """
  from map_jax.models.loading import restore_params, save_params

  names = ppo.value_names(values)
  result = None
  for s, stage in enumerate(stages):
    stage_dir = os.path.join(workdir, f"stage_{s:02d}_{names[stage.value]}")
    done = os.path.join(stage_dir, "params")
    if os.path.isdir(done) and result is None and os.path.exists(os.path.join(stage_dir, "done")):
      model = model._replace(params=restore_params(done, model.config))
      continue
    record = dict(
      config_record or {},
      stage=s,
      stage_round=stage.round,
      stage_value=names[stage.value],
      stage_lam=[float(x) for x in stage.lam],
    )
    # A value given by name is loaded by `fine_tune` and freed when the stage ends, before the next loads.
    result = fine_tune(
      model, prompts, [values[stage.value]], [stage.lam_step], cfg, run, stage_dir, config_record=record
    )
    open(os.path.join(stage_dir, "done"), "w").close()
    model = model._replace(params=result.params)
  params = nn.meta.unbox(model.params)
  out = os.path.join(os.path.abspath(workdir), "params")
  if os.path.isdir(out):
    shutil.rmtree(out)
  save_params(out, params)
  if result is None:
    return trainer.TrainResult(None, params, [], out)
  return result._replace(params_dir=out)


__all__ = ["Stage", "fine_tune", "fine_tune_sequential", "sequential_stages"]
