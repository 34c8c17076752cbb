r"""Scores a pilot table of (prompt, response) rows with a list of values: the n × m matrix MAP solves on.

  python -m experiments.score --input=pilot.jsonl --output=pilot.rewards.jsonl \
    --values=humor,positiveness,harmlessness,coherence,diversity,perplexity
  python -m experiments.solve_palette --rewards=pilot.rewards.jsonl \
    --values=humor,positiveness,harmlessness,coherence,diversity,perplexity --quantiles=0.7,0.7,0.7 \
    --keep=coherence,diversity,perplexity

On the MAP authors' pilot data, whose `generated` column is prompt + continuation:

  python -m experiments.score --input=../shared/data/map_reference/opt1.3b-Anthropic-harmless.json \
    --response_field=generated --strip_prompt --values=div=diversity,positiveness --output=/tmp/opt.jsonl

One value at a time: each reward model is loaded, run over the whole table in chunks of --chunk rows, and
freed before the next, so only one model is ever in memory. Every finished chunk is appended to
`OUTPUT.parts/VALUE.jsonl`; after a crash the same command resumes where it stopped (the parts remember a
fingerprint of the input, so a changed table is not silently mixed). The output is JSONL: every input field,
then one float field per value (named as in --values; `NAME=SPEC` renames, e.g. `humor=classifier:DIR:1`).
Values: `python -c "from map_jax.rewards import available_rewards; print(available_rewards())"`.
"""

import gc
import hashlib
import json
import math
import os
import shutil

from absl import app
from absl import flags
from absl import logging

FLAGS = flags.FLAGS


def define_flags():
  """Define the launcher's flags (only when run as a program, so launchers can be imported together)."""
  flags.DEFINE_string("input", None, "Pilot table: .jsonl, .json, .csv or .parquet.")
  flags.DEFINE_string("output", None, "Output .jsonl (default: INPUT stem + .rewards.jsonl).")
  flags.DEFINE_list("values", None, "Values to score: built-in names or specs, NAME=SPEC to rename.")
  flags.DEFINE_string("prompt_field", "prompt", "Column of the prompt.")
  flags.DEFINE_string("response_field", "response", "Column of the response.")
  flags.DEFINE_bool("strip_prompt", False,
      "The response column starts with the prompt (e.g. `generated`): strip it.")
  flags.DEFINE_integer("chunk", 256, "Rows scored (and saved for resuming) at a time.")
  flags.DEFINE_integer("batch_size", None, "Batch size passed to model-backed values.")
  flags.DEFINE_integer("limit", None, "Score only the first N rows.")


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


def _build(spec, kwargs):
  """The value for `spec`, with those launcher-wide options that its constructor takes (model-free values
  such as diversity take no batch size)."""
  from map_jax.rewards import get_reward
  from map_jax.rewards.registry import accepts
  return get_reward(spec, **{k: v for k, v in kwargs.items() if accepts(spec, k)})


def score_table(input_path: str, output: str, specs: list[str], *, prompt_field="prompt",
                response_field="response", strip_prompt=False, chunk=256, limit=None, value_kwargs=None,
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
      value = _build(spec, value_kwargs or {})
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


def main(argv):
  del argv
  if not FLAGS.input or not FLAGS.values:
    raise app.UsageError("--input and --values are required")
  output = FLAGS.output or os.path.splitext(FLAGS.input)[0] + ".rewards.jsonl"
  kw = {"batch_size": FLAGS.batch_size} if FLAGS.batch_size else None
  score_table(FLAGS.input, output, FLAGS.values, prompt_field=FLAGS.prompt_field, response_field=FLAGS.response_field,
              strip_prompt=FLAGS.strip_prompt, chunk=FLAGS.chunk, limit=FLAGS.limit, value_kwargs=kw)
  print(f"wrote {output}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
