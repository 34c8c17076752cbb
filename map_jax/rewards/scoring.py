"""Scoring a table of (prompt, response) rows with reward values, one value at a time, resumable.

`score_table` is the scoring stage of a MAP run (`experiments/score.py` and `map_jax.pipeline` call it): each
value's model is loaded, run over the table in chunks, and freed before the next one loads, so only one reward
model is ever in memory. Finished chunks go to `OUTPUT.parts/VALUE.jsonl`, with a fingerprint of the input,
so a killed run resumes where it stopped and a changed table is never silently mixed with old scores.
"""

import gc
import hashlib
import json
import math
import os
import shutil

from absl import logging


def value_name(spec: str) -> str:
  """The column name a spec will get: NAME in NAME=SPEC, else the spec itself."""
  head = spec.split(":", 1)[0]
  return spec.split("=", 1)[0] if "=" in head else spec


def fingerprint(prompts, responses) -> str:
  h = hashlib.sha1()
  for p, r in zip(prompts, responses):
    h.update(p.encode() + b"\x00" + r.encode() + b"\x01")
  return h.hexdigest()


def texts(rows, path, prompt_field, response_field, strip_prompt):
  """Prompts and responses, checked row by row (a missing field or non-text names the row)."""
  prompts, responses = [], []
  for i, row in enumerate(rows):
    for f in (prompt_field, response_field):
      if f not in row:
        raise ValueError(f"{path}: row {i} has no field {f!r} (fields: {', '.join(sorted(row))})")
      if not isinstance(row[f], str):
        raise ValueError(f"{path}: row {i}, field {f!r} is {type(row[f]).__name__} {row[f]!r:.40}, expected text")
    p, r = row[prompt_field], row[response_field]
    if strip_prompt:
      if not r.startswith(p):
        raise ValueError(f"{path}: row {i}: --strip_prompt but {response_field!r} does not start with the prompt")
      r = r[len(p):]
    prompts.append(p)
    responses.append(r)
  return prompts, responses


def read_parts(path: str, n: int) -> list[float | None]:
  """Scores saved so far for one value (None where not scored yet); a torn last line is ignored."""
  scores = [None] * n
  if os.path.isfile(path):
    with open(path) as f:
      for line in f:
        try:
          chunk = json.loads(line)
        except json.JSONDecodeError:
          break  # the process died mid-write: that chunk is scored again
        start = chunk["start"]
        scores[start:start + len(chunk["scores"])] = chunk["scores"]
  return scores


def _build(spec, kwargs, own=None):
  """The value for `spec`, with those launcher-wide options that its constructor takes (model-free values
  such as diversity take no batch size), and `own`, options meant for this value alone."""
  from map_jax.rewards import get_reward
  from map_jax.rewards.registry import accepts
  return get_reward(spec, **{k: v for k, v in kwargs.items() if accepts(spec, k)}, **(own or {}))


def score_table(input_path: str, output: str, specs: list[str], *, prompt_field="prompt",
                response_field="response", strip_prompt=False, chunk=256, limit=None, value_kwargs=None, options=None,
                progress=True) -> str:
  """Score `input_path` with each value spec in turn, resumable; writes JSONL to `output` and returns it."""
  from map_jax.rewards.tables import read_table

  rows = read_table(input_path)[:limit]
  if not rows:
    raise ValueError(f"{input_path}: no rows")
  prompts, responses = texts(rows, input_path, prompt_field, response_field, strip_prompt)
  names = [value_name(s) for s in specs]
  dupes = {n for n in names if names.count(n) > 1}
  if dupes:
    raise ValueError(f"--values names {sorted(dupes)} more than once; rename with NAME=SPEC")
  parts = output + ".parts"
  os.makedirs(parts, exist_ok=True)
  fp = fingerprint(prompts, responses)
  meta_path = os.path.join(parts, "input.json")
  if os.path.isfile(meta_path):
    with open(meta_path) as f:
      old = json.load(f)
    if old["fingerprint"] != fp:
      raise ValueError(f"{parts}: partial scores of a different input ({old['input']}, {old['rows']} rows); "
                       "delete that directory or choose another --output")
  else:
    with open(meta_path, "w") as f:
      json.dump({"input": os.path.abspath(input_path), "rows": len(rows), "fingerprint": fp}, f)

  n = len(rows)
  columns = {}
  for spec, name in zip(specs, names):
    part = os.path.join(parts, f"{name.replace('/', '_')}.jsonl")
    scores = read_parts(part, n)
    todo = [s for s in range(0, n, chunk) if any(x is None for x in scores[s:s + chunk])]
    if todo:
      logging.info("%s: scoring %d of %d rows", name, sum(min(chunk, n - s) for s in todo), n)
      value = _build(spec, value_kwargs or {}, (options or {}).get(name, {}))
      it = todo
      if progress:
        from tqdm.auto import tqdm
        it = tqdm(todo, desc=f"scoring {name}", unit="chunk")
      with open(part, "a") as f:
        for s in it:
          r = value(prompts[s:s + chunk], responses[s:s + chunk]).tolist()
          bad = [s + i for i, x in enumerate(r) if not math.isfinite(x)]
          if bad:
            raise ValueError(f"value {name!r} gave a non-finite reward {r[bad[0] - s]} at row {bad[0]} of "
                             f"{input_path}")
          f.write(json.dumps({"start": s, "scores": r}) + "\n")
          f.flush()
          os.fsync(f.fileno())
          scores[s:s + len(r)] = r
      value.close()
      del value
      gc.collect()  # drop this value's model before the next one loads
      import jax
      jax.clear_caches()
    columns[name] = scores

  clash = [k for k in names if k in rows[0]]
  if clash:
    logging.warning("output columns %s replace input fields of the same name", clash)
  tmp = output + ".tmp"
  with open(tmp, "w") as f:
    for j, row in enumerate(rows):
      out = dict(row)
      out.update({k: columns[k][j] for k in names})
      f.write(json.dumps(out) + "\n")
  os.replace(tmp, output)  # atomic: a reader never sees a half-written table
  shutil.rmtree(parts)
  return output
