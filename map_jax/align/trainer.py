"""The MAP-F training loop around `ppo.iteration`: data order, logging, checkpoints, faults, sequential alignment.

`fine_tune` trains a model toward λᵀr for `num_steps` PPO iterations of `batch_size` prompts each:

    workdir/
      metrics.jsonl    one line per step: reward/<value>, score, kl, entropy, losses, tokens_per_s, times
      tb/              the same scalars for TensorBoard
      checkpoints/S/   orbax TrainState + metadata every `checkpoint_every` steps and at the end
      params/          the fine-tuned policy (orbax; `map_jax.models.loading.restore_params(path, config)`)

Run it again with the same workdir and it resumes from the newest checkpoint (bitwise identically on CPU, see
`map_jax.checkpoint`); a different config is refused with the differing fields named. A non-finite reward or
loss stops the run with a `TrainingError` before anything is saved, so the newest checkpoint is the last good
state.

`fine_tune_sequential` is the paper's memory-light alternative: align one value at a time, with only that value's
reward model loaded, following the coordinate-ascent λ schedule of `map_jax.core.sequential`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import numpy as np

from map_jax import parallel, store
from map_jax.align import ppo
from map_jax.checkpoint import Checkpointer

# Fields that may change when resuming a run: how long it runs, how often it saves and on how many devices
# (orbax reshards the state onto the new mesh), not what it learns.
RESUMABLE = (
  "run.num_steps",
  "run.checkpoint_every",
  "run.keep_checkpoints",
  "run.progress",
  "run.tensorboard",
  "run.mesh_data",
  "run.mesh_fsdp",
)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """The loop around PPO.

  num_steps: PPO iterations (one rollout of `batch_size` prompts and its update each).
  batch_size: prompts per iteration; a multiple of the mesh's batch devices and of PPO's
    num_minibatches × grad_accum.
  seed: seeds the run's PRNG key and the prompt order.
  max_prompt_tokens: prompts are left-padded (or cut from the left) to this many tokens: one compiled shape.
  chat: wrap prompts in the tokenizer's chat template (instruct models).
  checkpoint_every: save every N steps (0: only at the end); keep_checkpoints: how many to keep.
  mesh_data, mesh_fsdp: mesh axis sizes for `parallel.make_mesh` (-1: the remaining devices).
  progress: show a progress bar; tensorboard: also write TensorBoard events (tensorboardX imports PyTorch
    when it is installed, seconds of start-up that tests skip).
  """

  num_steps: int = 10
  batch_size: int = 8
  seed: int = 0
  max_prompt_tokens: int = 64
  chat: bool = True
  checkpoint_every: int = 0
  keep_checkpoints: int = 2
  mesh_data: int = 1
  mesh_fsdp: int = -1
  progress: bool = False
  tensorboard: bool = True


class TrainingError(RuntimeError):
  """A step gave a non-finite reward or loss; the run stopped and its newest checkpoint is the last good one."""


class TrainResult(NamedTuple):
  """state: the final TrainState; params: the policy's plain params; history: per-step metrics (this process's
  steps only); params_dir: where the policy was saved (None without a workdir)."""

  state: ppo.TrainState
  params: Any
  history: list[dict]
  params_dir: str | None


def prompt_order(num_prompts: int, seed: int, position: int, count: int) -> np.ndarray:
  """Indices of the `count` prompts after the first `position` of an endless stream of seeded shuffles.

  Epoch e is `default_rng((seed, e)).permutation(num_prompts)`; the stream is a function of (seed, position)
  alone, which is what a resumed run restores.
  """
  out = []
  while len(out) < count:
    epoch, offset = divmod(position, num_prompts)
    perm = np.random.default_rng((seed, epoch)).permutation(num_prompts)
    take = perm[offset : offset + count - len(out)]
    out.extend(take.tolist())
    position += len(take)
  return np.asarray(out, np.int64)


class MetricWriter:
  """Per-step scalars to `workdir/metrics.jsonl` and TensorBoard (`workdir/tb`); resuming at step s drops
  the lines of later steps that the crashed run wrote, so the log reads as one run."""

  def __init__(self, workdir: str, start_step: int = 0, tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(self.path):  # a line torn by the kill is dropped with the later steps
      kept = [rec for rec in store.read_jsonl(self.path) if rec["step"] <= start_step]
      store.write_jsonl(self.path, kept)
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start_step + 1 if start_step else None)

  def write(self, step: int, metrics: dict) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **metrics}) + "\n")
    for k, v in metrics.items():
      if self._tb is not None and isinstance(v, (int, float)):
        self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _codec(tokenizer, chat: bool):
  """(encode prompts -> id lists, decode id lists -> texts). Without a tokenizer, text is space-separated ids
  ("3 17 5"): tiny random models and synthetic rewards in tests use that."""
  if tokenizer is None:
    return (lambda ps: [[int(t) for t in p.split()] for p in ps], lambda ids: [" ".join(map(str, t)) for t in ids])
  from map_jax.sampling import _prompt_ids

  return (
    lambda ps: _prompt_ids(tokenizer, list(ps), chat),
    lambda ids: tokenizer.batch_decode(ids, skip_special_tokens=True),
  )


def encode_prompts(tokenizer, prompts: Sequence[str], chat: bool, max_tokens: int) -> list[list[int]]:
  """Token ids of each prompt (chat template applied if `chat`), cut to its last `max_tokens` tokens: the end
  holds the template's assistant-turn marker, which the response must follow."""
  ids = [p[-max_tokens:] for p in _codec(tokenizer, chat)[0](prompts)]
  if any(len(p) == 0 for p in ids):
    raise ValueError("every prompt needs at least one token")
  return ids


def _value_names(values) -> list[str]:
  return [v if isinstance(v, str) else getattr(v, "name", f"value_{i}") for i, v in enumerate(values)]


def fine_tune(
  model,
  prompts: Sequence[str],
  values: Sequence[Any],
  lam,
  cfg: ppo.PPOConfig,
  run: RunConfig,
  workdir: str | None = None,
  *,
  config_record: dict | None = None,
  on_step: Callable[[int, dict], None] | None = None,
) -> TrainResult:
  """Fine-tune `model` toward λᵀr with PPO (KL to the model as given), resuming from `workdir` if it has a run.

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
    `TrainResult`.

  Raises:
    TrainingError: a non-finite reward or loss (message: step, cause, newest checkpoint).
    map_jax.checkpoint.ConfigMismatchError: workdir holds a run with a different config.
  """
  module, tokenizer = model.config.module(), model.tokenizer
  lam = [float(x) for x in np.asarray(lam, np.float64).reshape(-1)]
  if len(lam) != len(values):
    raise ValueError(f"lam has {len(lam)} entries but {len(values)} values were given")
  mesh = parallel.make_mesh(run.mesh_data, run.mesh_fsdp)
  parallel.check_batch_size(run.batch_size, mesh, "run.batch_size")
  cfg.validate(run.batch_size)
  context = module.config.max_position_embeddings
  if run.max_prompt_tokens + cfg.max_new_tokens > context:
    raise ValueError(
      f"max_prompt_tokens={run.max_prompt_tokens} + max_new_tokens={cfg.max_new_tokens} exceeds "
      f"the model's context of {context}"
    )
  prompts = list(prompts)
  ids = encode_prompts(tokenizer, prompts, run.chat, run.max_prompt_tokens)
  decode = _codec(tokenizer, run.chat)[1]
  from map_jax.models import tokenizer as tok_lib
  from map_jax.sampling import _eos_ids

  eos = _eos_ids(module, tokenizer, None)
  pad_id = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0

  record = {
    "ppo": dataclasses.asdict(cfg),
    "run": dataclasses.asdict(run),
    "lam": lam,
    "values": _value_names(values),
    "num_prompts": len(prompts),
    "prompts_hash": _hash(prompts),
    **(config_record or {}),
  }
  shardings = ppo.state_shardings(module, cfg, mesh)
  ref = parallel.shard(nn.meta.unbox(model.params), shardings.params["policy"])
  ckpt = (
    Checkpointer(
      os.path.join(workdir, "checkpoints"),
      every=run.checkpoint_every,
      config=record,
      resumable=RESUMABLE,
      max_to_keep=run.keep_checkpoints,
    )
    if workdir
    else None
  )
  step, position = 0, 0
  if ckpt is not None and ckpt.latest_step() is not None:
    state, meta = ckpt.restore(ppo.abstract_state(module, cfg), shardings)
    step, position = int(meta["step"]), int(meta["data_position"])
  else:
    state = ppo.compile_init(module, cfg, mesh)(nn.meta.unbox(model.params), jax.random.key(run.seed))
  writer = MetricWriter(workdir, step, run.tensorboard) if workdir else None
  from map_jax.rewards import get_reward

  fns = [get_reward(v) if isinstance(v, str) else v for v in values]
  history: list[dict] = []
  steps = range(step, run.num_steps)
  if run.progress:
    from tqdm.auto import tqdm

    steps = tqdm(steps, desc="PPO", unit="step", initial=step, total=run.num_steps)
  try:
    for step in steps:
      idx = prompt_order(len(prompts), run.seed, position, run.batch_size)
      tokens, mask = tok_lib.pad_left([ids[i] for i in idx], pad_id, length=run.max_prompt_tokens)
      try:
        res = ppo.iteration(
          module,
          state,
          ref,
          [prompts[i] for i in idx],
          tokens,
          mask,
          fns,
          lam,
          cfg,
          mesh=mesh,
          step=step,
          detokenize=decode,
          eos_ids=eos,
          pad_id=pad_id,
        )
      except ValueError as e:
        if "non-finite" not in str(e):
          raise
        raise TrainingError(_stopped(step + 1, str(e), ckpt)) from e
      bad = sorted(k for k, v in res.metrics.items() if isinstance(v, float) and not math.isfinite(v))
      if bad:
        raise TrainingError(_stopped(step + 1, f"non-finite {', '.join(bad)} (loss {res.metrics['loss']})", ckpt))
      state, position = res.state, position + run.batch_size
      history.append(res.metrics)
      if writer:
        writer.write(step + 1, res.metrics)
      if ckpt:
        ckpt.save(step + 1, state, data_position=position)
      if run.progress:
        steps.set_postfix(score=f"{res.metrics['score']:.3f}", kl=f"{res.metrics['kl']:.3f}")
      if on_step:
        on_step(step + 1, res.metrics)
    if ckpt:
      ckpt.save(run.num_steps, state, data_position=position, force=True)
  finally:
    if ckpt:
      ckpt.close()
    if writer:
      writer.close()
    for v, fn in zip(values, fns):
      if isinstance(v, str):
        fn.close()  # a reward model this run loaded
  params = state.params["policy"]
  params_dir = None
  if workdir:
    from map_jax.models.loading import save_params

    params_dir = os.path.join(os.path.abspath(workdir), "params")
    if os.path.isdir(params_dir):
      shutil.rmtree(params_dir)
    save_params(params_dir, params)
  return TrainResult(state, params, history, params_dir)


def _hash(texts: Sequence[str]) -> str:
  h = hashlib.sha1()
  for t in texts:
    h.update(t.encode() + b"\x00")
  return h.hexdigest()[:16]


def _stopped(step: int, cause: str, ckpt: Checkpointer | None) -> str:
  last = ckpt.latest_step() if ckpt is not None else None
  where = (
    f"the newest checkpoint, step {last} in {ckpt.directory}, is the last good state"
    if last is not None
    else "no checkpoint was written before it"
  )
  return f"PPO step {step} stopped: {cause}. Nothing of this step was saved; {where}."


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
  run: RunConfig,
  workdir: str,
  *,
  config_record: dict | None = None,
) -> TrainResult:
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

  names = _value_names(values)
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
    return TrainResult(None, params, [], out)
  return result._replace(params_dir=out)
