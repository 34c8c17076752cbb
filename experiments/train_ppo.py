r"""MAP-F: fine-tunes a language model toward a MAP palette with PPO, logging and checkpointing into --workdir.

  python -m experiments.train_ppo --config=configs/ppo_default.py --workdir=/tmp/ppo_smollm2
  python -m experiments.train_ppo --config=configs/ppo_opt1.3b.py --workdir=/ckpt/opt --config.run.num_steps=10

Stages:
  1. λ: `config.lam` when given; else a pilot: `pilot.samples` responses of the base model to each of the first
     `pilot.num_prompts` prompts, scored with the values (config.targeted + config.kept); palette
     c = quantile_palette(R, quantiles) for the one palette of config.palettes (the same schema and
     mini-language as run_map's, `map_jax.spec`);
     λ = solve_dual(R, c).lam (pilot.json records R's means, c, λ and feasibility).
  2. PPO (`map_jax.align.map_f.fine_tune`) toward λᵀr with KL to the base model, or with
     `sequential.rounds > 0` one value at a time along the solver's sequential λ schedule
     (`fine_tune_sequential`).
  3. run.json: what the evaluation stage needs to load the fine-tuned model as a "MAP-F" row.

Output layout (`workdir/`):
  config.json       the config as run
  pilot.json        the pilot's palette and λ (absent when config.lam was given)
  metrics.jsonl     per step: reward/<value>, score (λᵀr), kl, entropy, policy/value loss, tokens_per_s, times
  tb/               the same for TensorBoard
  checkpoints/S/    orbax TrainState (+ metadata) every run.checkpoint_every steps and at the end
  params/           the fine-tuned policy: restore_params(workdir/params, load_model(config.model).config)
  run.json          {"method": "MAP-F", "model", "dtype", "params", "values", "lam", "palette", ...}
  stage_SS_NAME/    (sequential only) one such tree per stage; params/ then holds the last stage's policy

Run the same command again to resume from the newest checkpoint; a changed config is refused with the fields
named (run.num_steps may grow). A non-finite reward or loss stops with the step and the last good checkpoint.
"""

import dataclasses
import json
import os

from absl import app, flags, logging

from experiments import _launch
from map_jax.spec import palette_quantiles, parse_palettes, value_names, value_options, value_specs
from map_jax.store import write_json, write_text


def define_flags():
  """Define the launcher's flags (only when run as a program, so launchers can be imported together)."""
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/ppo_*.py).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Output directory (metrics, checkpoints, params).")


def build(config):
  """(PPOConfig, RunConfig) from the config, validated: bad fields fail before any model loads."""
  from map_jax.align.ppo import PPOConfig
  from map_jax.align.trainer import RunConfig
  from map_jax.plugins import load_plugins

  load_plugins(config.get("plugins"))
  cfg = PPOConfig(**_plain(config.ppo))
  run_cfg = RunConfig(**_plain(config.run))
  cfg.validate(run_cfg.batch_size)
  specs, names = values_of(config)
  from map_jax.rewards import available_rewards
  from map_jax.rewards.registry import is_known

  unknown = [v for v in specs if not is_known(v)]
  if unknown:
    raise ValueError(f"unknown values {unknown}; available: {sorted(available_rewards())}")
  if config.lam and len(config.lam) != len(names):
    raise ValueError(f"config.lam has {len(config.lam)} entries for {len(names)} values ({', '.join(names)})")
  if not config.lam:
    quantiles_of(config)
  if config.sequential.rounds and config.lam:
    raise ValueError("sequential alignment follows the solver's schedule on a pilot: leave config.lam empty")
  if config.sequential.rounds and value_options(config):
    raise ValueError("sequential alignment loads each value by its spec alone: leave config.value_options empty")
  return cfg, run_cfg


def values_of(config) -> tuple[list[str], list[str]]:
  """(specs, names) of the run's values, targeted then kept (`map_jax.spec`)."""
  targeted, kept = value_specs(config)
  names = value_names(config)
  return targeted + kept, names[0] + names[1]


def quantiles_of(config) -> list[float | None]:
  """The quantile per value (None: kept at its mean) of the run's one palette."""
  targeted, kept = value_names(config)
  palettes = parse_palettes(config.palettes, targeted, kept)
  if len(palettes) != 1:
    raise ValueError(f"config.palettes names {len(palettes)} palettes; a PPO run aligns to exactly one")
  return palette_quantiles(palettes[0][1], targeted + kept)


def _plain(cd) -> dict:
  """A ConfigDict section as a dict of plain Python values (tuples for sequences)."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in cd.to_dict().items()}


def pilot(model, prompts, values, config, cfg, run_cfg):
  """Pilot rewards R [n, m] of base-model responses, the palette c and λ = solve_dual(R, c).lam.

  `values` are reward callables or names; names are loaded one at a time and closed after scoring (as in
  sequential alignment, where only one reward model may fit next to the LM).
  """
  import jax
  import numpy as np

  from map_jax.align.decode import score_candidates
  from map_jax.align.trainer import encode_prompts
  from map_jax.core.dual import solve_dual
  from map_jax.core.palette import quantile_palette
  from map_jax.rewards import get_reward
  from map_jax.sampling import generate

  p = config.pilot
  pilot_prompts = prompts[: p.num_prompts]
  k = p.samples
  ids = encode_prompts(model.tokenizer, pilot_prompts, run_cfg.chat, run_cfg.max_prompt_tokens)  # as PPO sees them
  out = generate(
    model.module,
    model.params,
    model.tokenizer,
    ids,
    key=jax.random.key(p.seed),
    max_new_tokens=cfg.max_new_tokens,
    temperature=cfg.temperature,
    top_k=cfg.top_k,
    top_p=cfg.top_p,
    num_return_sequences=k,
  )
  candidates = [out.text[i : i + k] for i in range(0, len(out.text), k)]
  columns = []
  for v in values:
    fn = get_reward(v) if isinstance(v, str) else v
    columns.append(score_candidates(pilot_prompts, candidates, [fn])[0].reshape(-1))
    if isinstance(v, str):
      fn.close()
  R = np.stack(columns, axis=1)
  with jax.enable_x64(True):
    c = np.asarray(quantile_palette(R, quantiles_of(config)))
    sol = solve_dual(R, c)
    lam, feasible = np.asarray(sol.lam), bool(sol.feasible)
  if not feasible:
    raise ValueError(
      f"palette {c.round(4).tolist()} is infeasible on the pilot set; lower its quantiles "
      "(map_jax.adjust_palette finds the nearest feasible one)"
    )
  return R, c, lam


def run(config, workdir: str) -> dict:
  """Runs the experiment into `workdir`; returns the run.json record."""
  import numpy as np

  from map_jax.align import map_f
  from map_jax.data.prompts import load_prompts
  from map_jax.models.loading import load_model
  from map_jax.rewards import get_reward

  cfg, run_cfg = build(config)
  os.makedirs(workdir, exist_ok=True)
  write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  model = load_model(config.model, dtype=config.dtype, param_dtype=config.param_dtype)
  pr = config.prompts
  prompts = load_prompts(pr.source, split=pr.split, num=pr.num, seed=pr.seed)
  record = {"model": config.model, "dtype": config.dtype, "prompts": pr.to_dict()}
  specs, names = values_of(config)
  options = value_options(config)
  # Sequential alignment loads one reward model at a time (by name); joint PPO keeps all of them loaded.
  values = specs if config.sequential.rounds else [get_reward(s, **options.get(n, {})) for s, n in zip(specs, names)]
  palette = None
  try:
    if config.lam:
      lam = np.asarray(config.lam, np.float64)
    else:
      R, palette, lam = pilot(model, prompts, values, config, cfg, run_cfg)
      write_json(
        os.path.join(workdir, "pilot.json"),
        {
          "values": names,
          "n": int(R.shape[0]),
          "mean": R.mean(0).tolist(),
          "palette": palette.tolist(),
          "lam": lam.tolist(),
        },
      )
      logging.info("pilot: palette %s, λ %s", palette, lam)
    if config.sequential.rounds:
      order = list(config.sequential.order) or None
      stages = map_f.sequential_stages(R, palette, rounds=config.sequential.rounds, order=order)
      result = map_f.fine_tune_sequential(model, prompts, specs, stages, cfg, run_cfg, workdir, config_record=record)
    else:
      result = map_f.fine_tune(
        model,
        prompts,
        values,
        lam,
        cfg,
        run_cfg,
        workdir,
        config_record=dict(record, lam_source="config" if config.lam else "pilot"),
      )
  finally:
    for v in values:
      if not isinstance(v, str):
        v.close()
  out = {
    "method": "MAP-F",
    "model": config.model,
    "dtype": config.dtype,
    "param_dtype": config.param_dtype,
    "params": result.params_dir,
    "values": names,
    "lam": [float(x) for x in lam],
    "palette": None if palette is None else [float(x) for x in palette],
    "sequential_rounds": int(config.sequential.rounds),
    "ppo": dataclasses.asdict(cfg),
    "steps": run_cfg.num_steps,
    "chat": run_cfg.chat,
    "restore": "map_jax.models.loading.restore_params(params, load_model(model).config)",
  }
  write_json(os.path.join(workdir, "run.json"), out)
  return out


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  if FLAGS.config is None or not FLAGS.workdir:
    raise app.UsageError("--config and --workdir are required")
  out = run(FLAGS.config, FLAGS.workdir)
  print(json.dumps({k: out[k] for k in ("params", "values", "lam")}, indent=2))


if __name__ == "__main__":
  define_flags()
  _launch.run(main)
