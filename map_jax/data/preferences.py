r"""Preference pairs from tables of Anthropic HH-RLHF's chosen/rejected schema (helpful-base, harmless-base).

Each row holds two whole dialogues that share every turn but the last assistant reply:

    {"chosen":   "\n\nHuman: How do I ...?\n\nAssistant: You could ...",
     "rejected": "\n\nHuman: How do I ...?\n\nAssistant: I won't ..."}

A row becomes (prompt, chosen reply, rejected reply): the prompt is the dialogue before the last
"\n\nAssistant:" (for a single exchange, the human turn's text alone, as `map_jax.data.prompts` reads HH prompts;
for longer dialogues, the transcript with its "Human:"/"Assistant:" turns), each reply the text after it. Files
are read with `map_jax.data.tables.read_table` (JSONL, JSON, CSV, Parquet, gzipped too), so the hub's
`helpful-base/train.jsonl.gz` works as downloaded.

A row whose two dialogues differ before the last reply, or that lacks the markers, is an error naming the file,
row and field; a row whose two replies are the same text carries no preference and is left out, with a count
in the log.
"""

from __future__ import annotations

from absl import logging

from map_jax.data.tables import TableError, column, read_table

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def _split(dialogue: str, path: str, row: int, field: str) -> tuple[str, str]:
  cut = dialogue.rfind(ASSISTANT)
  if cut < 0 or HUMAN not in dialogue[:cut]:
    raise TableError(f"{path}: row {row}, field {field!r}: no {HUMAN.strip()!r} turn then {ASSISTANT.strip()!r}")
  return dialogue[:cut], dialogue[cut + len(ASSISTANT) :].strip()


def prompt_of(context: str) -> str:
  """The prompt text of a dialogue before its last assistant reply (see the module docstring)."""
  if context.count(HUMAN) == 1 and ASSISTANT not in context:
    return context.split(HUMAN, 1)[1].strip()
  return context.strip()


def hh_pairs(
  path: str, *, chosen_field: str = "chosen", rejected_field: str = "rejected"
) -> list[tuple[str, str, str]]:
  """(prompt, chosen reply, rejected reply) of every row of an HH-RLHF-schema table."""
  rows = read_table(path)
  if not rows:
    raise TableError(f"{path}: no rows")
  chosen, rejected = column(rows, chosen_field, path), column(rows, rejected_field, path)
  pairs, same = [], 0
  for i, (c, r) in enumerate(zip(chosen, rejected)):
    context, good = _split(c, path, i, chosen_field)
    other, bad = _split(r, path, i, rejected_field)
    if context != other:
      raise TableError(f"{path}: row {i}: {chosen_field!r} and {rejected_field!r} differ before the last reply")
    if good == bad:
      same += 1
      continue
    pairs.append((prompt_of(context), good, bad))
  if same:
    logging.warning("%s: %d of %d rows have the same chosen and rejected reply; left out", path, same, len(rows))
  if not pairs:
    raise TableError(f"{path}: no row prefers one reply to another")
  return pairs


__all__ = ["hh_pairs", "prompt_of"]
