r"""A MAP-by-decoding run as cached stages on a work directory: prompts to report, resumable after a kill.

    prompts ─► generate_pilot ─► score_pilot ─► solve ─┐
          └──► generate_candidates ─► score_candidates ─┴─► decode ─► report

`run(config, workdir)` runs every stage up to `until`; each stage writes its files into the workdir and a
record `stages/NAME.json` holding a key (a hash of the config fields it reads and of its inputs' keys) and
its wall time. A stage whose record matches is skipped, so a rerun costs nothing, a changed palette reruns
only solve, decode and report, and a changed model reruns everything that sampled from it. The long stages
(generation, scoring) save their progress batch by batch and resume where a killed run stopped.

The test set is sampled once for every palette: each test prompt gets k + 1 samples from p0; sample 0 is the
original model's answer, samples 1..k are the MAP-D candidates, resampled per palette with probabilities
softmax(λᵀr) (`map_jax.align.decode.select`). The original answer is thus an independent p0 sample, not one
of the candidates MAP-D chose from.

Files in the workdir:
  config.json                      the config of the last run
  prompts.json                     {"pilot": [...], "test": [...]}, disjoint
  pilot.jsonl                      prompt, response for n = num_pilot · samples_per_prompt pilot samples
  pilot.rewards.jsonl              the same rows with one column per value
  candidates.jsonl(.rewards.jsonl) test prompt × (k + 1) samples, sample 0 the original answer
  palettes.json                    per palette: c, λ, realized (the promise), feasibility, margin, ESS, ...
  decoded.json                     per palette: the chosen candidate of each test prompt
  report.md, report.json, *.png    see `map_jax.eval.report`: the report of the config's palette set
  reports/SET/                     the reports of earlier palette sets (moved there when another set runs)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from typing import Any, Callable, Sequence

from absl import logging
import numpy as np

from map_jax.plugins import load_plugins
from map_jax.spec import palette_quantiles, parse_palettes, value_names, value_options, value_specs
from map_jax.store import content_key, plain, write_jsonl, write_text
from map_jax.workdir import Workdir

STAGES = (
  "prompts",
  "generate_pilot",
  "score_pilot",
  "solve",
  "generate_candidates",
  "score_candidates",
  "decode",
  "generate_map_f",
  "score_map_f",
  "report",
)
DEPENDS = {
  "prompts": (),
  "generate_pilot": ("prompts",),
  "score_pilot": ("generate_pilot",),
  "solve": ("score_pilot",),
  "generate_candidates": ("prompts",),
  "score_candidates": ("generate_candidates",),
  "decode": ("solve", "score_candidates"),
  "generate_map_f": ("prompts",),
  "score_map_f": ("generate_map_f",),
  "report": ("decode", "score_map_f"),
}
MAP_F_STAGES = ("generate_map_f", "score_map_f")  # run only when config.map_f names a MAP-F run
# Stages that run a model over the config's mesh: in a multi-host run every process runs them. The others read
# and write files only, and run on process 0 while the rest wait.
COLLECTIVE = ("generate_pilot", "score_pilot", "generate_candidates", "score_candidates") + MAP_F_STAGES


def upstream(stage: str) -> list[str]:
  """`stage` and every stage it reads from, in run order."""
  seen, todo = set(), [stage]
  while todo:
    s = todo.pop()
    if s not in seen:
      seen.add(s)
      todo.extend(DEPENDS[s])
  return [s for s in STAGES if s in seen]


# ---------------------------------------------------------------------------------------------------------
# Config helpers


def validate(config) -> None:
  """Check a config before anything runs: values, palettes, sizes, decode mode (fast, no model loaded)."""
  targeted, kept = value_names(config)
  parse_palettes(config.palettes, targeted, kept)
  value_options(config)
  p = config.prompts
  for name in ("num_pilot", "num_test"):
    if int(p[name]) < 1:
      raise ValueError(f"config.prompts.{name} must be >= 1, got {p[name]}")
  if int(config.pilot.samples_per_prompt) < 1:
    raise ValueError("config.pilot.samples_per_prompt must be >= 1")
  if int(config.decode.num_candidates) < 1:
    raise ValueError("config.decode.num_candidates must be >= 1")
  from map_jax.align.decode import MODES

  if config.decode.mode not in MODES:
    raise ValueError(f"config.decode.mode must be one of {MODES}, got {config.decode.mode!r}")
  if config.adjust not in (None, "interpolate", "greedy"):
    raise ValueError(f"config.adjust must be interpolate, greedy or None, got {config.adjust!r}")
  mesh_of(config)


def mesh_of(config):
  """The device mesh of `config.mesh` (data, fsdp, tensor sizes), or None for one device (all sizes 1).

  Not part of any stage key: a run resumed on another mesh keeps the batches and chunks already done (the
  same draws on every mesh; see `map_jax.sampling.generate`)."""
  from map_jax import parallel

  m = config.get("mesh")
  sizes = {a: int(m.get(a, 1)) for a in parallel.MESH_AXES} if m is not None else {}
  if not sizes or all(v == 1 for v in sizes.values()):
    return None
  bad = {a: v for a, v in sizes.items() if v < 1 and v != -1}
  if bad:
    raise ValueError(f"config.mesh sizes must be >= 1 or -1 (the remaining devices), got {bad}")
  try:
    return parallel.make_mesh(**sizes)
  except ValueError as e:
    raise ValueError(f"config.mesh: {e}") from None


# ---------------------------------------------------------------------------------------------------------
# The work directory


def stage_keys(config) -> dict[str, str]:
  """Each stage's key: the config fields it reads and the keys of the stages it reads from."""
  c = config
  k = {}
  k["prompts"] = content_key(c.prompts)
  model = (c.model, c.dtype, c.chat, c.generation, c.seed)
  k["generate_pilot"] = content_key(k["prompts"], model, c.pilot.samples_per_prompt)
  values = (c.targeted, c.kept, c.value_options)
  k["score_pilot"] = content_key(k["generate_pilot"], values)
  k["solve"] = content_key(k["score_pilot"], c.palettes, c.adjust)
  k["generate_candidates"] = content_key(k["prompts"], model, c.decode.num_candidates)
  k["score_candidates"] = content_key(k["generate_candidates"], values)
  k["decode"] = content_key(k["solve"], k["score_candidates"], c.decode.mode, c.seed)
  k["generate_map_f"] = content_key(k["prompts"], c.generation, c.seed, map_f_run(c))
  k["score_map_f"] = content_key(k["generate_map_f"], values)
  k["report"] = content_key(k["decode"], k["score_pilot"], k["score_map_f"], c.report)
  return k


# ---------------------------------------------------------------------------------------------------------
# Stages


def map_f_run(config) -> dict | None:
  """The run.json of the MAP-F (PPO) run named by `config.map_f`, or None when there is none.

  `experiments/train_ppo.py` writes it into its workdir: the base model, the fine-tuned params directory,
  chat, λ and the values it was trained on. Its test answers become the report's "MAP-F" row, scored with
  this run's values, beside the original model and MAP-D.
  """
  path = config.get("map_f")
  if not path:
    return None
  run = os.path.join(path, "run.json")
  if not os.path.isfile(run):
    raise FileNotFoundError(f"config.map_f = {path}: no run.json there (the workdir of experiments.train_ppo)")
  with open(run) as f:
    rec = json.load(f)
  missing = [k for k in ("model", "params") if k not in rec]
  if missing:
    raise ValueError(f"{run}: no field {missing[0]!r}")
  return rec


def _map_f_loader(config):
  """Load the fine-tuned policy: the base model's config and tokenizer with the PPO run's params."""

  def load():
    from map_jax.models.loading import load_model, restore_params

    run = map_f_run(config)
    base = load_model(run["model"], dtype=run.get("dtype", config.dtype))
    return base._replace(params=restore_params(run["params"], base.config))

  return load


def make_prompts(config, wd: Workdir) -> dict:
  from map_jax.data.prompts import load_prompts, split_prompts

  p = config.prompts
  prompts = load_prompts(
    p.source, split=p.split, field=p.field, data_files=p.data_files, max_chars=p.max_chars, seed=p.seed
  )
  pilot, test = split_prompts(prompts, int(p.num_pilot), int(p.num_test), seed=p.seed)
  out = {"pilot": pilot, "test": test}
  wd.write_json(wd.path("prompts.json"), out)
  return {"pilot": len(pilot), "test": len(test)}


def sample_table(
  config,
  prompts: Sequence[str],
  samples_per_prompt: int,
  output: str,
  *,
  stream: int,
  desc: str,
  load: Callable[[], Any],
  model_key: Any,
  chat: bool | None = None,
) -> int:
  """`samples_per_prompt` samples from p0 per prompt into `output` (JSONL), in batches, resumable.

  Prompts are generated in batches of `config.generation.batch_size`, grouped by length so a batch pads
  little (generation cost grows with the longest prompt in the batch). Batch b samples with the key
  fold_in(fold_in(key(seed), stream), b), so a resumed run draws exactly what an uninterrupted one would.
  Each finished batch goes to `output.parts`, a `map_jax.store.ChunkStore` keyed by everything that
  determines the samples (the prompts, `model_key` naming the model, the sampling settings, seed and stream),
  so a rerun with another seed, prompt set or model never reuses a killed run's batches. Rows come out in
  prompt order with a `sample` index. In a multi-host run every process takes part in every batch (its devices
  sample their rows of it) and process 0 writes.
  """
  import jax
  from tqdm.auto import tqdm

  from map_jax import parallel
  from map_jax.sampling import for_decoding, generate

  writer = parallel.is_writer()
  g = config.generation
  B = int(g.batch_size)
  order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
  batches = [order[s : s + B] for s in range(0, len(order), B)]
  chat = bool(config.chat if chat is None else chat)
  store = parallel.open_store(
    output + ".parts",
    content_key(list(prompts), samples_per_prompt, stream, model_key, chat, config.generation, config.seed),
  )
  done = store.chunks
  todo = [b for b in range(len(batches)) if b not in store]
  if todo:
    model = load()
    module, params = for_decoding(model.module, model.params)  # once for every batch
    mesh = mesh_of(config)
    params = parallel.place_model(module, params, mesh)
    base = jax.random.fold_in(jax.random.key(int(config.seed)), stream)
    k = samples_per_prompt
    initial = sum(len(rows) for rows in done.values())
    with tqdm(total=len(prompts) * k, initial=initial, desc=desc, unit="sample", disable=not writer) as bar:
      for b in todo:
        idx = batches[b]
        out = generate(
          module,
          params,
          model.tokenizer,
          [prompts[i] for i in idx],
          key=jax.random.fold_in(base, b),
          max_new_tokens=int(g.max_new_tokens),
          temperature=float(g.temperature),
          top_k=g.top_k,
          top_p=g.top_p,
          num_return_sequences=k,
          chat=chat,
          min_bucket=int(g.min_bucket),
          mesh=mesh,
        )
        rows = [
          {"prompt_index": idx[r // k], "sample": r % k, "response": out.text[r], "num_tokens": int(out.lengths[r])}
          for r in range(len(idx) * k)
        ]
        store.append(b, rows)
        bar.update(len(rows))
  rows = sorted((r for b in done.values() for r in b), key=lambda r: (r["prompt_index"], r["sample"]))
  if len(rows) != len(prompts) * samples_per_prompt:
    raise RuntimeError(
      f"{store.path}: {len(rows)} rows for {len(prompts)} prompts x {samples_per_prompt}; delete it to regenerate"
    )
  if writer:
    write_jsonl(output, ({"prompt": prompts[r["prompt_index"]], **r} for r in rows))
  store.finish()
  return len(rows)


def score(config, wd: Workdir, table: str) -> str:
  from map_jax.rewards.scoring import score_table

  targeted, kept = value_specs(config)
  out = wd.path(table.replace(".jsonl", ".rewards.jsonl"))
  options = value_options(config)
  mesh = mesh_of(config)
  return score_table(
    wd.path(table),
    out,
    targeted + kept,
    chunk=int(config.score_chunk),
    options=options,
    value_kwargs=None if mesh is None else {"mesh": mesh},
  )


def _rewards(wd: Workdir, table: str, names: Sequence[str]) -> np.ndarray:
  from map_jax.data.pilot import load_pilot

  R, _ = load_pilot(wd.path(table), list(names))
  return np.asarray(R, np.float64)


def solve(config, wd: Workdir) -> dict:
  """Solve every palette on the pilot rewards (float64), adjusting infeasible ones; writes palettes.json."""
  import jax

  from map_jax.core.dual import prepare_pilot, solve_dual
  from map_jax.core.palette import adjust_palette, quantile_palette
  from map_jax.eval.report import low_ess_warning, solution_record

  targeted, kept = value_names(config)
  names = targeted + kept
  R = _rewards(wd, "pilot.rewards.jsonl", names)
  records = []
  with jax.enable_x64(True):
    pilot = prepare_pilot(jax.numpy.asarray(R))
    for label, qs in parse_palettes(config.palettes, targeted, kept):
      c = np.asarray(quantile_palette(R, palette_quantiles(qs, names)))
      rec = solution_record(R, names, c, solve_dual(pilot, c))
      rec.update(label=label, quantiles={v: qs.get(v) for v in names}, use="palette")
      if not rec["feasible"] and config.adjust:
        adj = adjust_palette(R, c, method=config.adjust)
        arec = solution_record(R, names, np.asarray(adj.palette), solve_dual(pilot, adj.palette))
        arec.update(method=config.adjust, rho=float(adj.rho))
        rec.update(adjusted=arec, use="adjusted")
      warning = low_ess_warning({**(rec.get("adjusted") or rec), "n": int(R.shape[0])})
      if warning:
        logging.warning("palette %s: %s", label, warning)
      records.append(rec)
  wd.write_json(
    wd.path("palettes.json"),
    {"values": names, "targeted": targeted, "kept": kept, "n": int(R.shape[0]), "palettes": records},
  )
  return {"palettes": len(records), "infeasible": sum(not r["feasible"] for r in records)}


def candidate_rewards(wd: Workdir, names: Sequence[str], num_prompts: int, k1: int) -> np.ndarray:
  """Rewards [P, k + 1, m] of the test samples (sample 0 the original answer)."""
  R = _rewards(wd, "candidates.rewards.jsonl", names)
  if R.shape[0] != num_prompts * k1:
    raise ValueError(f"candidates.rewards.jsonl has {R.shape[0]} rows, expected {num_prompts} x {k1}")
  return R.reshape(num_prompts, k1, len(names))


def palette_key(seed: int, label: str):
  """The resampling key of one palette: a function of the seed and its label only, so adding or reordering
  palettes leaves every other palette's draw unchanged."""
  import jax

  label_id = int(hashlib.sha1(label.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 2), label_id)


def decode(config, wd: Workdir) -> dict:
  """Resample one of the k candidates per test prompt for each palette: softmax(λᵀr) (or argmax)."""
  import jax.numpy as jnp

  from map_jax.align.decode import select

  pal = wd.read_json("palettes.json")
  names = pal["values"]
  P = len(wd.read_json("prompts.json")["test"])
  R = candidate_rewards(wd, names, P, int(config.decode.num_candidates) + 1)
  out = []
  for rec in pal["palettes"]:
    lam = (rec["adjusted"] if rec["use"] == "adjusted" else rec)["lambda"]
    sel = select(
      palette_key(int(config.seed), rec["label"]),
      jnp.asarray(R[:, 1:], jnp.float32),
      jnp.asarray(lam, jnp.float32),
      mode=config.decode.mode,
    )
    probs = np.asarray(sel.probs, np.float64)
    out.append(
      {
        "label": rec["label"],
        "lambda": lam,
        "index": (np.asarray(sel.index) + 1).tolist(),
        "candidate_ess": (1.0 / (probs**2).sum(-1)).tolist(),
      }
    )
  wd.write_json(wd.path("decoded.json"), {"mode": config.decode.mode, "palettes": out})
  return {"palettes": len(out)}


def _responses(wd: Workdir, table: str) -> list[str]:
  with open(wd.path(table)) as f:
    return [json.loads(line)["response"] for line in f if line.strip()]


def palette_set(config) -> str:
  """A short id of the config's palettes and adjustment: one report is kept per palette set."""
  return content_key(config.palettes, config.adjust)[:8]


def _archive_report(wd: Workdir, current: str) -> None:
  """Move the workdir's report of another palette set, with its figures, to reports/SET/ (the top level
  holds the latest report; earlier palette sets' reports stay whole, and no stale figure stays beside it)."""
  if not os.path.isfile(wd.path("report.json")):
    return
  try:
    old = wd.read_json("report.json")
  except ValueError:
    return  # unreadable: it is replaced
  previous = old.get("palette_set") or "earlier"
  if previous == current:
    return
  files = ["report.md", "report.json", "radar.png"] + [p["histogram"] for p in old.get("palettes", [])]
  files += [old["map_f"]["histogram"]] if old.get("map_f") else []
  dest = wd.path("reports", previous)
  os.makedirs(dest, exist_ok=True)
  for name in files:
    if os.path.isfile(wd.path(name)):
      os.replace(wd.path(name), os.path.join(dest, name))
  logging.info("report of palette set %s moved to %s", previous, dest)


def report(config, wd: Workdir, timings: dict) -> dict:
  """Read the run's records and arrays and write report.json, report.md and the figures."""
  from map_jax.eval import report as report_lib

  pal = wd.read_json("palettes.json")
  prompts = wd.read_json("prompts.json")
  names = pal["values"]
  k = int(config.decode.num_candidates)
  map_f = None
  run = map_f_run(config)
  if run is not None:
    map_f = {
      "run": run,
      "workdir": config.map_f,
      "rewards": _rewards(wd, "map_f.rewards.jsonl", names),
      "texts": _responses(wd, "map_f.jsonl"),
    }
  rep, figures = report_lib.decoding_report(
    palettes=pal,
    decoded=wd.read_json("decoded.json"),
    test_prompts=prompts["test"],
    pilot=_rewards(wd, "pilot.rewards.jsonl", names),
    candidates=candidate_rewards(wd, names, len(prompts["test"]), k + 1),
    texts=_responses(wd, "candidates.jsonl"),
    map_f=map_f,
    model=config.model,
    prompts_source=config.prompts.source,
    confidence=float(config.report.confidence),
    num_samples=int(config.report.num_samples),
    seed=int(config.seed),
    timings=timings,
    num_pilot_samples=len(prompts["pilot"]) * int(config.pilot.samples_per_prompt),
  )
  rep["palette_set"] = palette_set(config)
  _archive_report(wd, rep["palette_set"])
  for name, draw in figures.items():
    draw(wd.path(name))
  wd.write_json(wd.path("report.json"), rep)
  write_text(wd.path("report.md"), report_lib.markdown(rep))
  return {"palettes": len(rep["palettes"]), "checks_passed": report_lib.checks_passed(rep)}


# ---------------------------------------------------------------------------------------------------------
# Driver


@contextlib.contextmanager
def loaded_model(config):
  """Load the base model at most once per run, on first use."""
  cache = {}

  def load():
    if "m" not in cache:
      from map_jax.models.loading import load_model

      logging.info("loading %s", config.model)
      cache["m"] = load_model(config.model, dtype=config.dtype)
    return cache["m"]

  yield load
  cache.clear()


def run(
  config,
  workdir: str,
  *,
  until: str = "report",
  force: Sequence[str] = (),
  on_stage: Callable[[str, bool], None] | None = None,
) -> dict:
  """Run the stages up to and including `until`, skipping those already done with the same key.

  Args:
    config: an `ml_collections.ConfigDict` as built by `configs/default.py`.
    workdir: the run directory (created if needed).
    until: the last stage to run (`STAGES`).
    force: stages to rerun even when their record matches.
    on_stage: called as on_stage(stage, skipped) before each stage (launchers print it).

  Returns:
    {stage: {"seconds": wall time when it ran (or when it last ran, if skipped), "skipped": bool, ...}}.

  Multi-host: after `map_jax.parallel.initialize_distributed()`, every process calls `run` with the same
  config and workdir, on a filesystem all hosts see. The sampling and scoring stages run on every process
  over the config's mesh (which spans the hosts' devices); process 0 alone writes files, runs the stages that
  only read and write files (`COLLECTIVE` names the others) and decides which stages are done, and every
  stage ends with every process learning whether all of them finished it (so the next stage reads what
  process 0 wrote, and an error on one process stops them all, each naming it).
  """
  if until not in STAGES:
    raise ValueError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}")
  unknown = [s for s in force if s not in STAGES]
  if unknown:
    raise ValueError(f"unknown stage {unknown[0]!r} in force; stages: {', '.join(STAGES)}")
  load_plugins(config.get("plugins"))
  validate(config)
  has_map_f = map_f_run(config) is not None
  if until in MAP_F_STAGES and not has_map_f:
    raise ValueError(f"stage {until} has nothing to do: config.map_f names no MAP-F run")
  from map_jax import parallel

  writer = parallel.is_writer()
  wd = Workdir(workdir)
  if writer:
    wd.write_json(wd.path("config.json"), plain(config))
  keys = stage_keys(config)
  needed = [s for s in upstream(until) if has_map_f or s not in MAP_F_STAGES]
  timings: dict[str, dict] = {}
  with loaded_model(config) as load:
    for stage in needed:
      if parallel.agree(wd.done(stage, keys[stage]) and stage not in force and stage != "report"):
        rec = wd.record(stage) or {}
        timings[stage] = {**rec, "skipped": True}
        if on_stage:
          on_stage(stage, True)
        logging.info("stage %s: done (%.1f s when it ran), skipped", stage, rec.get("seconds", 0.0))
        continue
      logging.info("stage %s", stage)
      if on_stage:
        on_stage(stage, False)
      start = time.perf_counter()
      error = None
      try:
        info = _run_stage(stage, config, wd, load, timings) if writer or stage in COLLECTIVE else {}
      except Exception as e:  # noqa: BLE001  (raised below, once every process knows)
        error = e
      seconds = time.perf_counter() - start
      failed = parallel.failed_processes(error is None)  # the stage's end on every process
      if error is not None:
        raise error
      if failed:
        raise RuntimeError(f"stage {stage} failed on process {failed[0]} (its log names the error)")
      info = dict(info or {})
      if writer:
        wd.mark(stage, keys[stage], seconds, **info)
      timings[stage] = {"key": keys[stage], "seconds": seconds, "skipped": False, **info}
  return timings


def _run_stage(stage, config, wd, load, timings):
  if stage == "prompts":
    return make_prompts(config, wd)
  if stage == "generate_pilot":
    prompts = wd.read_json("prompts.json")["pilot"]
    n = sample_table(
      config,
      prompts,
      int(config.pilot.samples_per_prompt),
      wd.path("pilot.jsonl"),
      stream=0,
      desc="pilot samples from p0",
      load=load,
      model_key=(config.model, config.dtype),
    )
    return {"rows": n}
  if stage == "score_pilot":
    score(config, wd, "pilot.jsonl")
    return {}
  if stage == "solve":
    return solve(config, wd)
  if stage == "generate_candidates":
    prompts = wd.read_json("prompts.json")["test"]
    n = sample_table(
      config,
      prompts,
      int(config.decode.num_candidates) + 1,
      wd.path("candidates.jsonl"),
      stream=1,
      desc="test samples (original + candidates)",
      load=load,
      model_key=(config.model, config.dtype),
    )
    return {"rows": n}
  if stage == "score_candidates":
    score(config, wd, "candidates.jsonl")
    return {}
  if stage == "decode":
    return decode(config, wd)
  if stage == "generate_map_f":
    run = map_f_run(config)
    prompts = wd.read_json("prompts.json")["test"]
    n = sample_table(
      config,
      prompts,
      1,
      wd.path("map_f.jsonl"),
      stream=3,
      desc="test answers of MAP-F",
      load=_map_f_loader(config),
      model_key=run,
      chat=run.get("chat", config.chat),
    )
    return {"rows": n, "map_f": config.map_f}
  if stage == "score_map_f":
    score(config, wd, "map_f.jsonl")
    return {}
  return report(config, wd, timings)


__all__ = ["STAGES", "loaded_model", "run", "sample_table", "score", "stage_keys", "validate"]
