r"""The paper's method comparison (Table 3, Figure 7): MAP-D and MAP-F against MORL-D/F, DPO(β) and DPO-Soup(β).

Every aligned model answers the same held-out test prompts once and is scored with the same values; the
comparison report (`map_jax.eval.comparison`) places each model by expected reward and by win rate against the
original model, and gives each method's navigation efficiency and cost. The methods:

  MAP-D    resample k candidates by softmax(λᵀr), λ of random palettes (`random_palettes`: uniform between
           the pilot mean and maximum of each targeted value, feasible, ||λ||₁ <= max_l1)
  MORL-D   the same decoding with random λ (`morl_lambdas` over the targeted values)
  MAP-F    PPO toward λᵀr (`map_jax.align.map_f.fine_tune`), λ of the first MAP palettes
  MORL-F   the same PPO with the first MORL λ
  DPO      DPO(β) on a mixture of two value-specific preference sets: a share α from the second targeted
           value's set, 1 − α from the first's (`map_jax.align.dpo`)
  DPO-Soup (1 − α)·θ_A + α·θ_B of the two value-specific DPO(β) models (α = 0 and α = 1), no training

The decoding methods share one pool of candidates per test prompt (the MAP-D pipeline's `candidates.jsonl`,
sample 0 the original model's answer), so each of their λ costs nothing but a resampling. Preference sets come
from the scored pilot (per value, two responses to one prompt, the better one chosen when the rewards differ by
more than `dpo.min_gap` pilot standard deviations) or from HH-RLHF-schema files (`map_jax.data.preferences`).

Work directory (`workdir/`):

  decoding/          the MAP-D pipeline's stages up to scored candidates (`map_jax.pipeline`)
  lambdas.json       the MAP palettes with their λ, and the MORL λ
  models/NAME/       each fine-tuned model's training run (checkpoints, metrics.jsonl, params/)
  answers/NAME.jsonl its answers to the test prompts, and NAME.rewards.jsonl their scores
  stages/            one record per finished unit: its key (what determines it) and costs
  comparison.json, comparison.md, expected.png, win_rate.png

Each model is a unit keyed by what determines it (its method, λ or preference mixture, hyperparameters, the
model and the data), so a killed comparison resumes where it stopped (training from its newest checkpoint,
answers and scores from their finished chunks), and adding a method, a palette or a β reuses every other unit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Callable, Sequence

import numpy as np

from map_jax import pipeline
from map_jax.plugins import load_plugins
from map_jax.spec import value_names, value_options, value_specs
from map_jax.store import content_key, plain, write_json, write_text
from map_jax.workdir import Workdir

METHODS = ("MAP-D", "MORL-D", "MAP-F", "MORL-F", "DPO", "DPO-Soup")
ANSWER_STREAM = 4  # `sample_table`'s key stream of the test answers (pilot 0, candidates 1, MAP-F 3)


def methods_of(config) -> list[str]:
  methods = [m.strip() for m in str(config.compare.methods).split(",") if m.strip()]
  unknown = [m for m in methods if m not in METHODS]
  if unknown or not methods:
    raise ValueError(f"config.compare.methods: unknown {unknown or 'none given'}; methods: {', '.join(METHODS)}")
  return methods


def validate(config) -> None:
  """Check a comparison config before anything runs (no model loaded)."""
  pipeline.validate(config)
  methods_of(config)
  targeted, _ = value_names(config)
  c = config.compare
  if int(c.num_palettes) < 1 or int(c.num_finetuned) < 0:
    raise ValueError("config.compare.num_palettes must be >= 1 and num_finetuned >= 0")
  if int(c.num_finetuned) > int(c.num_palettes):
    raise ValueError(f"config.compare.num_finetuned={c.num_finetuned} exceeds num_palettes={c.num_palettes}")
  if not float(c.max_l1) > 0:
    raise ValueError(f"config.compare.max_l1 must be > 0, got {c.max_l1}")
  if len(targeted) < 2 and {"DPO", "DPO-Soup"} & set(methods_of(config)):
    raise ValueError("DPO and DPO-Soup mix two value-specific preference sets: target at least two values")
  for a in list(config.dpo.alphas) + list(config.soup.alphas):
    if not 0.0 <= float(a) <= 1.0:
      raise ValueError(f"mixing ratios must lie in [0, 1], got {a}")
  if int(config.pilot.samples_per_prompt) < 2 and "pilot" in (config.preferences.a, config.preferences.b):
    raise ValueError("preference pairs from the pilot need config.pilot.samples_per_prompt >= 2")
  _ppo_config(config).validate(int(config.run.batch_size))
  _dpo_config(config, float(config.dpo.betas[0])).validate()
  for name in ("num_steps", "batch_size", "num_pairs"):
    if int(config.dpo[name]) < 1:
      raise ValueError(f"config.dpo.{name} must be >= 1, got {config.dpo[name]}")


# ---------------------------------------------------------------------------------------------------------
# λ: random palettes (MAP) and random λ (MORL)


def draw_lambdas(R: np.ndarray, targeted: Sequence[int], num: int, *, max_l1: float, seed: int) -> dict:
  """`num` MAP palettes with their λ, and `num` MORL λ, over the targeted columns of the pilot rewards R.

  Palettes are drawn in blocks of 64 with keys fold_in(key, block) and kept in order, so the first N are the
  same whatever `num` is (growing the comparison keeps every earlier λ, and the models trained on it).
  """
  import jax

  from map_jax.core.frontier import morl_lambdas, random_palettes

  key = jax.random.fold_in(jax.random.key(seed), 5)
  palettes, lams = [], []
  with jax.enable_x64(True):
    R64 = np.asarray(R, np.float64)
    for block in range(64):
      cand = random_palettes(jax.random.fold_in(key, block), R64, 64, max_l1=max_l1, values=list(targeted))
      keep = np.asarray(cand.keep)
      palettes += np.asarray(cand.palettes)[keep].tolist()
      lams += np.asarray(cand.solution.lam)[keep].tolist()
      if len(palettes) >= num:
        break
  if len(palettes) < num:
    raise ValueError(
      f"only {len(palettes)} of {64 * 64} random palettes are feasible with ||λ||₁ <= {max_l1}; raise "
      "config.compare.max_l1 or lower num_palettes"
    )
  m = R.shape[1]
  morl = np.zeros((num, m))
  t = list(targeted)
  for i in range(num):
    morl[i, t] = np.asarray(morl_lambdas(jax.random.fold_in(jax.random.fold_in(key, 1000), i), 1, len(t)))[0]
  return {
    "MAP": [{"palette": c, "lambda": lam} for c, lam in zip(palettes[:num], lams[:num])],
    "MORL": [{"lambda": lam.tolist()} for lam in morl],
  }


# ---------------------------------------------------------------------------------------------------------
# Units: one aligned model each


@dataclasses.dataclass
class Unit:
  """One fine-tuned (or souped) model: its name, method label, the kind of work and what determines it."""

  name: str
  method: str
  kind: str  # "ppo", "dpo" or "soup"
  spec: dict  # λ, β, α, ... (part of the key)
  needs: tuple[str, ...] = ()  # units whose params it reads (a soup's endpoints)


def _ppo_config(config):
  from map_jax.align.ppo import PPOConfig

  return PPOConfig(**plain(config.ppo))


def _dpo_config(config, beta: float):
  from map_jax.align.dpo import DPOConfig

  d = config.dpo
  return DPOConfig(
    beta=beta,
    learning_rate=float(d.learning_rate),
    max_response_tokens=int(d.max_response_tokens),
    max_grad_norm=float(d.max_grad_norm),
    lora_rank=int(d.get("lora_rank", 0)),
    lora_alpha=float(d.get("lora_alpha", 16.0)),
  )


def _run_config(config, num_steps: int, batch_size: int | None = None):
  from map_jax.align.trainer import RunConfig

  run = {**plain(config.run), "num_steps": int(num_steps), "chat": bool(config.chat), "seed": int(config.seed)}
  if batch_size is not None:
    run["batch_size"] = int(batch_size)
  return RunConfig(**run)


def _tag(x: float) -> str:
  return f"{float(x):g}"


def units(config, lambdas: dict) -> list[Unit]:
  """The fine-tuned and souped models the config asks for, endpoints before the soups that read them."""
  methods = methods_of(config)
  out: list[Unit] = []
  n = int(config.compare.num_finetuned)
  for method, source in (("MAP-F", "MAP"), ("MORL-F", "MORL")):
    if method in methods:
      for i in range(n):
        out.append(Unit(f"{method}-{i:02d}", method, "ppo", {"lambda": lambdas[source][i]["lambda"]}))
  dpo_alphas = [float(a) for a in config.dpo.alphas] if "DPO" in methods else []
  soup_alphas = [float(a) for a in config.soup.alphas] if "DPO-Soup" in methods else []
  for beta in (float(b) for b in config.dpo.betas):
    alphas = sorted(set(dpo_alphas) | ({0.0, 1.0} if soup_alphas else set()))
    for a in alphas:
      label = f"DPO({_tag(beta)})" if a in dpo_alphas else "DPO-Soup endpoint"
      out.append(Unit(f"DPO-b{_tag(beta)}-a{_tag(a)}", label, "dpo", {"beta": beta, "alpha": a}))
    for a in soup_alphas:
      ends = (f"DPO-b{_tag(beta)}-a0", f"DPO-b{_tag(beta)}-a1")
      out.append(
        Unit(f"Soup-b{_tag(beta)}-a{_tag(a)}", f"DPO-Soup({_tag(beta)})", "soup", {"beta": beta, "alpha": a}, ends)
      )
  return out


def _unit_key(config, unit: Unit, data_key: str) -> str:
  """What determines a unit's model: the base model, its method's settings and data, and its spec."""
  base = (config.model, config.dtype, config.chat, config.seed, unit.kind, unit.spec, plain(config.run))
  if unit.kind == "ppo":
    return content_key(base, plain(config.ppo), int(config.compare.ppo_steps), data_key)
  if unit.kind == "dpo":
    d = config.dpo
    return content_key(
      base,
      d.learning_rate,
      d.max_response_tokens,
      d.max_grad_norm,
      d.num_pairs,
      d.num_steps,
      d.batch_size,
      d.min_gap,
      *((("lora", int(d.lora_rank), float(d.lora_alpha)),) if d.get("lora_rank") else ()),
      data_key,
    )
  return content_key(base, data_key)  # a soup: its endpoints' keys are in data_key


# ---------------------------------------------------------------------------------------------------------
# Driver


class _Comparison:
  """One comparison run: the workdir, the base model and reward values loaded once, the pilot's data."""

  def __init__(self, config, workdir: str, load: Callable[[], Any]):
    self.config, self.wd, self.load = config, Workdir(workdir), load
    self.base = Workdir(self.wd.path("decoding"))
    self.targeted, kept = value_names(config)
    self.names = self.targeted + kept
    self.specs = sum(value_specs(config), [])
    self.prompts = self.base.read_json("prompts.json")
    self.keys = pipeline.stage_keys(config)
    self._values = None
    os.makedirs(self.wd.path("models"), exist_ok=True)
    os.makedirs(self.wd.path("answers"), exist_ok=True)

  # data ------------------------------------------------------------------------------------------------

  def rewards(self, table: str, wd: Workdir | None = None) -> np.ndarray:
    from map_jax.data.pilot import load_pilot

    R, _ = load_pilot((wd or self.base).path(table), self.names)
    return np.asarray(R, np.float64)

  def values(self) -> list:
    """The reward values, loaded once for every PPO unit (closed by `close`)."""
    if self._values is None:
      from map_jax.rewards import get_reward

      options = value_options(self.config)
      self._values = [get_reward(s, **options.get(n, {})) for s, n in zip(self.specs, self.names)]
    return self._values

  def close(self) -> None:
    for v in self._values or []:
      v.close()

  def preference_set(self, which: str, value: str) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) texts for one value: from the scored pilot, or an HH-RLHF-schema file."""
    if which != "pilot":
      from map_jax.data.preferences import hh_pairs

      return hh_pairs(which)
    from map_jax.align.dpo import preference_pairs
    from map_jax.data.tables import read_table

    rows = read_table(self.base.path("pilot.jsonl"))
    R = self.rewards("pilot.rewards.jsonl")[:, self.names.index(value)]
    gap = float(self.config.dpo.min_gap) * float(R.std())
    pairs = preference_pairs([r["prompt_index"] for r in rows], R, min_gap=gap)
    return [(rows[c]["prompt"], rows[c]["response"], rows[r]["response"]) for c, r in zip(pairs.chosen, pairs.rejected)]

  def dpo_data(self) -> tuple[list, list, str]:
    """The two value-specific preference sets (targeted[0], targeted[1]) and their key."""
    p = self.config.preferences
    a = self.preference_set(p.a, self.targeted[0])
    b = self.preference_set(p.b, self.targeted[1])
    return a, b, content_key(a, b)

  # units -----------------------------------------------------------------------------------------------

  def model_dir(self, unit: Unit, key: str) -> str:
    """models/NAME, emptied when it holds a model of another key (a changed λ, β, model, ...)."""
    d = self.wd.path("models", unit.name)
    marker = os.path.join(d, "unit.json")
    if os.path.isdir(d):
      try:
        with open(marker) as f:
          same = json.load(f).get("key") == key
      except (OSError, ValueError):
        same = False
      if not same:
        shutil.rmtree(d)
    os.makedirs(d, exist_ok=True)
    write_json(marker, {"key": key, "name": unit.name})
    return d

  def train(self, unit: Unit, key: str, dpo_sets) -> dict:
    """Train (or soup) one unit into models/NAME/params; returns its costs."""
    from map_jax.align import dpo, map_f, trainer

    config, d = self.config, self.model_dir(unit, key)
    record = {"model": config.model, "dtype": config.dtype, "unit": unit.name, "unit_key": key}
    if unit.kind == "soup":
      return {"train_seconds": 0.0, "training_tokens": 0, "rollouts": 0}
    start = time.perf_counter()
    if unit.kind == "ppo":
      cfg, steps = _ppo_config(config), int(config.compare.ppo_steps)
      run = _run_config(config, steps)
      map_f.fine_tune(
        self.load(), self.prompts["pilot"], self.values(), unit.spec["lambda"], cfg, run, d, config_record=record
      )
      tokens = steps * run.batch_size * (run.max_prompt_tokens + cfg.max_new_tokens)
      return {
        "train_seconds": time.perf_counter() - start,
        "training_tokens": tokens,
        "rollouts": steps * run.batch_size,
      }
    import jax

    a, b, _ = dpo_sets
    num = min(int(config.dpo.num_pairs), len(a), len(b))
    source, index = dpo.mix_pairs(
      len(a), len(b), unit.spec["alpha"], num, jax.random.fold_in(jax.random.key(int(config.seed)), 6)
    )
    pairs = [(a, b)[s][i] for s, i in zip(source, index)]
    run = _run_config(config, int(config.dpo.num_steps), int(config.dpo.batch_size))
    cfg = _dpo_config(config, unit.spec["beta"])
    trainer.train(dpo.DPOMethod(self.load(), pairs, cfg, run), run, d, config_record=record)
    tokens = run.num_steps * run.batch_size * 2 * (run.max_prompt_tokens + cfg.max_response_tokens)
    return {"train_seconds": time.perf_counter() - start, "training_tokens": tokens, "rollouts": 0, "pairs": num}

  def loader(self, unit: Unit) -> Callable[[], Any]:
    def load():
      from map_jax.align.soup import soup
      from map_jax.models.loading import restore_params

      base = self.load()
      if unit.kind != "soup":
        return base._replace(params=restore_params(self.wd.path("models", unit.name, "params"), base.config))
      a, b = (restore_params(self.wd.path("models", n, "params"), base.config) for n in unit.needs)
      return base._replace(params=soup(a, b, unit.spec["alpha"]))

    return load

  def answer(self, unit: Unit, key: str) -> float:
    """The unit's answers to the test prompts, scored; returns the seconds it took."""
    start = time.perf_counter()
    table = os.path.join("answers", f"{unit.name}.jsonl")
    pipeline.sample_table(
      self.config,
      self.prompts["test"],
      1,
      self.wd.path(table),
      stream=ANSWER_STREAM,
      desc=f"test answers of {unit.name}",
      load=self.loader(unit),
      model_key=key,
    )
    pipeline.score(self.config, self.wd, table)
    return time.perf_counter() - start


def run(config, workdir: str, *, on_unit: Callable[[str, bool], None] | None = None) -> dict:
  """Run the comparison into `workdir` (see the module docstring); returns the report.

  Args:
    config: a config like `configs/compare_default.py`'s.
    workdir: the comparison's directory (created if needed; a rerun resumes there).
    on_unit: called as on_unit(name, skipped) before each unit (launchers print it).
  """
  load_plugins(config.get("plugins"))
  validate(config)
  wd = Workdir(workdir)
  wd.write_json(wd.path("config.json"), plain(config))
  for until in ("score_pilot", "score_candidates"):
    pipeline.run(config, wd.path("decoding"), until=until, on_stage=on_unit)
  with pipeline.loaded_model(config) as load:
    cmp = _Comparison(config, workdir, load)
    try:
      return _run(cmp, on_unit)
    finally:
      cmp.close()


def _stage(wd: Workdir, name: str, key: str, fn: Callable[[], dict], on_unit) -> dict:
  if wd.done(name, key):
    if on_unit:
      on_unit(name, True)
    return wd.record(name)
  if on_unit:
    on_unit(name, False)
  start = time.perf_counter()
  info = dict(fn() or {})
  wd.mark(name, key, time.perf_counter() - start, **info)
  return wd.record(name)


def _run(cmp: _Comparison, on_unit) -> dict:
  config, wd = cmp.config, cmp.wd
  targeted_cols = [cmp.names.index(v) for v in cmp.targeted]
  R = cmp.rewards("pilot.rewards.jsonl")
  num = int(config.compare.num_palettes)
  lam_key = content_key(cmp.keys["score_pilot"], num, float(config.compare.max_l1), int(config.seed))

  def lambdas_stage():
    lams = draw_lambdas(R, targeted_cols, num, max_l1=float(config.compare.max_l1), seed=int(config.seed))
    wd.write_json(wd.path("lambdas.json"), {"values": cmp.names, "targeted": cmp.targeted, **lams})
    return {"palettes": num}

  _stage(wd, "lambdas", lam_key, lambdas_stage, on_unit)
  lambdas = wd.read_json("lambdas.json")

  todo = units(config, lambdas)
  dpo_sets, keys, records = None, {}, {}
  for unit in todo:
    if unit.kind == "ppo":
      data_key = content_key(cmp.prompts["pilot"], cmp.keys["score_pilot"], config.targeted, config.kept)
    elif unit.kind == "dpo":
      if dpo_sets is None:
        dpo_sets = cmp.dpo_data()
      data_key = dpo_sets[2]
    else:
      data_key = content_key([keys[n] for n in unit.needs])
    keys[unit.name] = _unit_key(config, unit, data_key)
    answer_key = content_key(keys[unit.name], cmp.keys["prompts"], config.generation, config.targeted, config.kept)

    def work(unit=unit):
      costs = cmp.train(unit, keys[unit.name], dpo_sets)
      return {**costs, "answer_seconds": cmp.answer(unit, keys[unit.name]), "method": unit.method}

    records[unit.name] = _stage(wd, f"model_{unit.name}", answer_key, work, on_unit)

  return _report(cmp, lambdas, todo, records)


def _report(cmp: _Comparison, lambdas: dict, todo: Sequence[Unit], records: dict) -> dict:
  import jax
  import jax.numpy as jnp

  from map_jax.align.decode import select
  from map_jax.eval import comparison

  config, wd = cmp.config, cmp.wd
  methods = methods_of(config)
  P, k = len(cmp.prompts["test"]), int(config.decode.num_candidates)
  C = pipeline.candidate_rewards(cmp.base, cmp.names, P, k + 1)
  original = C[:, 0]
  models = []
  for method, source in (("MAP-D", "MAP"), ("MORL-D", "MORL")):
    if method in methods:
      for i, rec in enumerate(lambdas[source]):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(int(config.seed)), 7), i + 1000 * (source == "MORL"))
        sel = select(
          key, jnp.asarray(C[:, 1:], jnp.float32), jnp.asarray(rec["lambda"], jnp.float32), mode=config.decode.mode
        )
        rewards = np.take_along_axis(C[:, 1:], np.asarray(sel.index)[:, None, None], axis=1)[:, 0]
        models.append({"name": f"{method}-{i:02d}", "method": method, "lambda": rec["lambda"], "rewards": rewards})
  for unit in todo:
    if unit.method == "DPO-Soup endpoint":
      continue
    R = cmp.rewards(os.path.join("answers", f"{unit.name}.rewards.jsonl"), wd)
    models.append({"name": unit.name, "method": unit.method, **unit.spec, "rewards": R})

  base = {s: (cmp.base.record(s) or {}).get("seconds", 0.0) for s in pipeline.STAGES}
  pool = base["generate_candidates"] + base["score_candidates"]
  n_pilot = len(cmp.prompts["pilot"]) * int(config.pilot.samples_per_prompt)
  costs = {
    "MAP-D": {
      "seconds": pool + base["generate_pilot"] + base["score_pilot"],
      "samples": n_pilot + P * (k + 1),
      "training_tokens": 0,
      "notes": f"pilot of {n_pilot}, {k} candidates per prompt shared with MORL-D",
    },
    "MORL-D": {"seconds": pool, "samples": P * (k + 1), "training_tokens": 0, "notes": "the shared candidate pool"},
  }
  for unit in todo:
    rec = records[unit.name]
    label = unit.method if unit.method != "DPO-Soup endpoint" else f"DPO-Soup({_tag(unit.spec['beta'])})"
    c = costs.setdefault(label, {"seconds": 0.0, "samples": 0, "training_tokens": 0, "notes": ""})
    c["seconds"] += rec.get("train_seconds", 0.0) + rec.get("answer_seconds", 0.0)
    c["samples"] += rec.get("rollouts", 0) + P
    c["training_tokens"] += rec.get("training_tokens", 0)
  for label, c in costs.items():
    if label.startswith("DPO-Soup"):
      c["notes"] = "soups train nothing: they reuse DPO(β) at α = 0 and 1 (counted here only when DPO runs none)"
    if label.startswith(("MAP-F", "MORL-F")):
      c["notes"] = f"{config.compare.ppo_steps} PPO steps of {config.run.batch_size} prompts per model"
    if label.startswith("DPO("):
      c["notes"] = f"{config.dpo.num_steps} DPO steps of {config.dpo.batch_size} pairs per model"
  for m in ("MAP-D", "MORL-D"):
    if m not in methods:
      costs.pop(m)
  setup = {
    "model": config.model,
    "values": f"targeted {', '.join(cmp.targeted)}; scored also {', '.join(cmp.names[len(cmp.targeted) :]) or '-'}",
    "prompts": f"{config.prompts.source}: {len(cmp.prompts['pilot'])} pilot (training) prompts, {P} test prompts",
  }
  report, figures = comparison.comparison_report(
    original,
    models,
    names=cmp.names,
    targeted=cmp.targeted,
    costs=costs,
    confidence=float(config.report.confidence),
    setup=setup,
  )
  for name, draw in figures.items():
    draw(wd.path(name))
  wd.write_json(wd.path("comparison.json"), report)
  write_text(wd.path("comparison.md"), comparison.markdown(report))
  return report


__all__ = ["METHODS", "Unit", "draw_lambdas", "run", "units", "validate"]
