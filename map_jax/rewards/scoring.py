"""Scoring a table of (prompt, response) rows with reward values, one value at a time, resumable.

`score_table` is the scoring stage of a MAP run (`experiments/score.py` and `map_jax.pipeline` call it): each
value's model is loaded, run over the table in chunks, and freed before the next one loads, so only one reward
model is ever in memory. Finished chunks go to `OUTPUT.parts/VALUE.jsonl` (a `map_jax.store.ChunkStore`) keyed
by the input texts, the value's spec and its options, so a killed run resumes where it stopped, and a changed
table, spec or option never mixes old scores into the new output. In a multi-host run every process scores
(model-backed values over the mesh they are given) and process 0 alone writes.
"""

import gc
import hashlib
import math
import os
import shutil

from absl import logging

from map_jax import parallel
from map_jax.data.pilot import write_value_columns
from map_jax.rewards.registry import get_reward, value_name
from map_jax.store import content_key, write_jsonl


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
      try:
        row[f].encode("utf-8")
      except UnicodeEncodeError as e:  # a lone surrogate ("\ud800" in JSON) is no text a tokenizer can read
        raise ValueError(
          f"{path}: row {i}, field {f!r} is not valid Unicode ({e.reason} at character {e.start})"
        ) from None
    p, r = row[prompt_field], row[response_field]
    if strip_prompt:
      if not r.startswith(p):
        raise ValueError(f"{path}: row {i}: --strip_prompt but {response_field!r} does not start with the prompt")
      r = r[len(p) :]
    prompts.append(p)
    responses.append(r)
  return prompts, responses


def _options(spec, kwargs, own=None) -> dict:
  """The options `spec`'s constructor gets: those launcher-wide options it takes (model-free values such as
  diversity take no batch size), and `own`, options meant for this value alone."""
  from map_jax.rewards.registry import accepts

  return {**{k: v for k, v in kwargs.items() if accepts(spec, k)}, **(own or {})}


def score_table(
  input_path: str,
  output: str,
  specs: list[str],
  *,
  prompt_field="prompt",
  response_field="response",
  strip_prompt=False,
  chunk=256,
  limit=None,
  value_kwargs=None,
  options=None,
  progress=True,
) -> str:
  """Score `input_path` with each value spec in turn, resumable; writes JSONL to `output` and returns it."""
  from map_jax.data.tables import read_table

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
  writer = parallel.is_writer()
  fp = fingerprint(prompts, responses)

  n = len(rows)
  columns = {}
  for spec, name in zip(specs, names):
    opts = _options(spec, value_kwargs or {}, (options or {}).get(name, {}))
    # Everything that determines this value's scores: the texts, the spec and its options, the chunking (not
    # the device mesh the value runs over: a run resumed on another mesh keeps its finished chunks).
    store = parallel.open_store(
      os.path.join(parts, f"{name.replace('/', '_')}.jsonl"),
      content_key(fp, spec, {k: v for k, v in opts.items() if k != "mesh"}, chunk),
      meta={"input": os.path.abspath(input_path), "rows": n, "value": spec},
    )
    scores = [None] * n
    for start, chunk_scores in store.chunks.items():
      scores[start : start + len(chunk_scores)] = chunk_scores
    todo = [s for s in range(0, n, chunk) if s not in store]
    if todo:
      logging.info("%s: scoring %d of %d rows", name, sum(min(chunk, n - s) for s in todo), n)
      value = get_reward(spec, **opts)
      it = todo
      if progress and writer:
        from tqdm.auto import tqdm

        it = tqdm(todo, desc=f"scoring {name}", unit="chunk")
      for s in it:
        r = value(prompts[s : s + chunk], responses[s : s + chunk]).tolist()
        bad = [s + i for i, x in enumerate(r) if not math.isfinite(x)]
        if bad:
          raise ValueError(f"value {name!r} gave a non-finite reward {r[bad[0] - s]} at row {bad[0]} of {input_path}")
        store.append(s, r)
        scores[s : s + len(r)] = r
      value.close()
      del value
      gc.collect()  # drop this value's model before the next one loads
      import jax

      jax.clear_caches()
    columns[name] = scores

  clash = [k for k in names if k in rows[0]]
  if clash:
    logging.warning("output columns %s replace input fields of the same name", clash)
  if writer:
    write_jsonl(output, ({**row, **{k: columns[k][j] for k in names}} for j, row in enumerate(rows)))
    write_value_columns(output, names)
    shutil.rmtree(parts)
  return output
