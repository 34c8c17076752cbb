r"""Scores a pilot table of (prompt, response) rows with a list of values: the n × m matrix MAP solves on.

  python -m experiments.score --input=pilot.jsonl --output=pilot.rewards.jsonl \
    --values=humor,positiveness,harmlessness,coherence,diversity,perplexity
  python -m experiments.solve_palette --rewards=pilot.rewards.jsonl \
    --values=humor,positiveness,harmlessness,coherence,diversity,perplexity --quantiles=0.7,0.7,0.7 \
    --keep=coherence,diversity,perplexity

On the MAP authors' pilot data, whose `generated` column is prompt + continuation:

  python -m experiments.score --input=examples/map_reference/opt1.3b-Anthropic-harmless.json \
    --response_field=generated --strip_prompt --values=div=diversity,positiveness --output=/tmp/opt.jsonl

One value at a time: each reward model is loaded, run over the whole table in chunks of --chunk rows, and
freed before the next, so only one model is ever in memory. Every finished chunk is appended to
`OUTPUT.parts/VALUE.jsonl`; after a crash the same command resumes where it stopped (the parts remember a
fingerprint of the input, so a changed table is not silently mixed). The output is JSONL: every input field,
then one float field per value (named as in --values; `NAME=SPEC` renames, e.g. `humor=classifier:DIR:1`).
Values: `python -c "from map_jax.rewards import available_rewards; print(available_rewards())"`.
"""

import os

from absl import app, flags

from experiments import _launch
from map_jax.plugins import load_plugins
from map_jax.rewards.scoring import score_table

FLAGS = flags.FLAGS


def define_flags():
  """Define the launcher's flags (only when run as a program, so launchers can be imported together)."""
  flags.DEFINE_string("input", None, "Pilot table: .jsonl, .json, .csv or .parquet.")
  flags.DEFINE_string("output", None, "Output .jsonl (default: INPUT stem + .rewards.jsonl).")
  flags.DEFINE_list("values", None, "Values to score: built-in names or specs, NAME=SPEC to rename.")
  flags.DEFINE_string("prompt_field", "prompt", "Column of the prompt.")
  flags.DEFINE_string("response_field", "response", "Column of the response.")
  flags.DEFINE_bool("strip_prompt", False, "The response column starts with the prompt (e.g. `generated`): strip it.")
  flags.DEFINE_integer("chunk", 256, "Rows scored (and saved for resuming) at a time.")
  flags.DEFINE_integer("batch_size", None, "Batch size passed to model-backed values.")
  flags.DEFINE_integer("limit", None, "Score only the first N rows.")
  flags.DEFINE_list("plugins", [], "Modules that register values (map_jax.plugins), e.g. my_pkg.values.")


def main(argv):
  del argv
  if not FLAGS.input or not FLAGS.values:
    raise app.UsageError("--input and --values are required")
  output = FLAGS.output or os.path.splitext(FLAGS.input)[0] + ".rewards.jsonl"
  load_plugins(FLAGS.plugins)
  kw = {"batch_size": FLAGS.batch_size} if FLAGS.batch_size else None
  score_table(
    FLAGS.input,
    output,
    FLAGS.values,
    prompt_field=FLAGS.prompt_field,
    response_field=FLAGS.response_field,
    strip_prompt=FLAGS.strip_prompt,
    chunk=FLAGS.chunk,
    limit=FLAGS.limit,
    value_kwargs=kw,
  )
  print(f"wrote {output}")


if __name__ == "__main__":
  define_flags()
  _launch.run(main)
