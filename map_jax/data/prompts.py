"""Prompt datasets for MAP runs: chitchat openers, HH-RLHF first turns, IMDB prefixes, or a local prompt column.

MAP needs prompts twice: a pilot set, on which the base model's samples are scored to solve for λ, and a
disjoint test set, on which the aligned model is evaluated. `load_prompts` reads one source into a list of
clean, non-empty, deduplicated strings; `split_prompts` cuts that list into the two sets.

    >>> prompts = load_prompts("chitchat")                          # embedded, offline
    >>> pilot, test = split_prompts(prompts, num_pilot=2000, num_test=500, seed=0)
    >>> load_prompts("hh-rlhf", num=1000, seed=0)                   # Anthropic/hh-rlhf, harmless-base
    >>> load_prompts("imdb", split="test", num=500)                 # 20-30 character review prefixes
    >>> load_prompts("my_prompts.jsonl", field="question")          # any JSONL / JSON / Parquet / CSV file
    >>> load_prompts("hh-rlhf", data_files="harmless-base/train.jsonl.gz")   # hub schema, local file

Sources
  chitchat   The first message of each Chit Chat Challenge conversation (pip package `chitchat-dataset`):
             the utterances its sender typed before the other side answered, joined by spaces ("Hello How
             are you doing today?"), as `map_jax.rewards.heads` joins them for the rating heads.
  hh-rlhf    Anthropic/hh-rlhf (hub), `data_dir="harmless-base"` by default as in the MAP paper: the text
             between the first "\\n\\nHuman:" and the first "\\n\\nAssistant:" of the `chosen` column (the
             rejected column shares that turn). Aliases: hh, Anthropic/hh-rlhf.
  imdb       stanfordnlp/imdb (hub): reviews longer than 30 characters, cut to a random 20-30 characters
             (seeded, one length per review), the sentiment-steering prompts of the MAP paper. Alias:
             stanfordnlp/imdb.
  a path     A local .jsonl / .json / .parquet / .csv file (optionally .gz) with a prompt column (`field`,
             default "prompt").

The hub sources read through `datasets.load_dataset`, so they need the network or the hub cache; pass
`data_files=` (or write the source as "NAME:PATH") to read local files of the same schema instead, which is
how the tests exercise them offline.

Every source is cleaned the same way: whitespace runs collapse to one space, ends are stripped, empty
prompts are dropped, and duplicates (compared case-insensitively) keep their first occurrence, so that a
pilot/test split by position is also disjoint as text.
"""

from __future__ import annotations

import os
import re
from typing import Any, Sequence

from absl import logging
import numpy as np

from map_jax.data.tables import FORMATS, TableError, read_table, table_format

HH_HUB_ID = "Anthropic/hh-rlhf"
IMDB_HUB_ID = "stanfordnlp/imdb"
_ALIASES = {
  "chitchat": "chitchat",
  "hh": "hh-rlhf",
  "hh-rlhf": "hh-rlhf",
  HH_HUB_ID.lower(): "hh-rlhf",
  "imdb": "imdb",
  IMDB_HUB_ID.lower(): "imdb",
}


class PromptFormatError(TableError):
  """A prompt file or dataset without the expected column, or with no usable prompt; the message names it."""


def clean(text: Any) -> str:
  """One prompt as it will be fed to the model: whitespace runs collapsed to a space, ends stripped.

  Non-strings (None, NaN from a Parquet null) become "", which `load_prompts` then drops.
  """
  if not isinstance(text, str):
    return ""
  return re.sub(r"\s+", " ", text).strip()


def dedupe(prompts: Sequence[str]) -> list[str]:
  """Clean, drop empty, and keep the first of prompts that are equal ignoring case, in order."""
  seen, out = set(), []
  for p in prompts:
    p = clean(p)
    key = p.casefold()
    if p and key not in seen:
      seen.add(key)
      out.append(p)
  return out


def hh_first_turn(dialogue: str) -> str | None:
  """The first human turn of an HH-RLHF dialogue: text between the first "\\n\\nHuman:" and the first
  "\\n\\nAssistant:" after it; None when either marker is missing."""
  if not isinstance(dialogue, str):
    return None
  start = dialogue.find("\n\nHuman:")
  if start < 0:
    return None
  start += len("\n\nHuman:")
  end = dialogue.find("\n\nAssistant:", start)
  return None if end < 0 else dialogue[start:end]


def imdb_prefixes(reviews: Sequence[str], seed: int, min_chars: int = 20, max_chars: int = 30) -> list[str]:
  """Cut each review longer than `max_chars` characters to a random `min_chars`..`max_chars` prefix.

  The review's HTML line breaks ("<br />") become spaces first, so a cut never lands inside a tag. Lengths
  are drawn uniformly (inclusive) from `default_rng(seed)`, one per kept review in order, so a given seed
  always gives the same prefix for the same review list. Trailing spaces of a prefix are dropped, since a
  prompt ending in a space tokenizes unlike any text the model saw.
  """
  kept = [clean(r.replace("<br />", " ")) for r in reviews if isinstance(r, str)]
  kept = [r for r in kept if len(r) > max_chars]
  lengths = np.random.default_rng(seed).integers(min_chars, max_chars + 1, size=len(kept))
  return [r[:n].rstrip() for r, n in zip(kept, lengths)]


def _load_column(
  split: str,
  field: str,
  *,
  hub_id: str | None = None,
  data_dir: str | None = None,
  data_files: str | Sequence[str] | dict | None = None,
) -> tuple[list, str]:
  """(one column of one split, where it came from), from local files when given, else from the hub.

  Local files are read by `map_jax.data.tables.read_table`; a plain path (or list of paths) is read as the
  requested split, so `split="test"` works on a single local file; a dict maps split names to files.
  """
  if data_files is None:
    import datasets  # heavy; only the hub sources need it

    try:
      table = datasets.load_dataset(hub_id, data_dir=data_dir, split=split)
    except OSError as e:  # ConnectionError offline: say how to run without the hub
      raise OSError(
        f"{hub_id} (data_dir={data_dir}, split={split}) could not be loaded from the hub or its "
        f"cache; pass data_files= (or 'NAME:PATH') to read a local copy of the same schema. "
        f"Cause: {e}"
      ) from e
    if field not in table.column_names:
      raise PromptFormatError(f"{hub_id}: no column {field!r} (columns: {', '.join(table.column_names)})")
    return table[field], hub_id
  files = data_files if isinstance(data_files, dict) else {split: data_files}
  if split not in files:
    raise PromptFormatError(f"data_files has no split {split!r} (splits: {', '.join(files)})")
  paths = [files[split]] if isinstance(files[split], str) else list(files[split])
  for p in paths:
    if not os.path.exists(p):
      raise FileNotFoundError(f"prompt file not found: {p}")
  out = []
  for p in paths:
    try:
      rows = read_table(p)
    except TableError as e:
      raise PromptFormatError(str(e)) from None
    missing = [i for i, r in enumerate(rows) if field not in r]
    if missing and len(missing) == len(rows):
      columns = list(dict.fromkeys(k for r in rows for k in r))
      raise PromptFormatError(f"{p}: no column {field!r} (columns: {', '.join(columns)})")
    if missing:
      raise PromptFormatError(f"{p}: row {missing[0]} has no field {field!r}")
    # A null is an empty prompt (dropped, as documented); anything else that is not text is an error.
    bad = [i for i, r in enumerate(rows) if r[field] is not None and not isinstance(r[field], str)]
    if bad:
      v = rows[bad[0]][field]
      raise PromptFormatError(f"{p}: row {bad[0]}, field {field!r} is {type(v).__name__} {v!r:.40}, expected text")
    out.extend(r[field] for r in rows)
  where = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} files)"
  return out, where


def _chitchat() -> list[str]:
  try:
    import chitchat_dataset
  except ImportError:
    raise PromptFormatError("source 'chitchat' needs the pip package 'chitchat-dataset'") from None
  out = []
  for conv in chitchat_dataset.Dataset().values():
    messages = conv.get("messages") or []
    if messages and messages[0]:
      out.append(" ".join(u.get("text") or "" for u in messages[0]))
  return out


def _resolve(source: str, data_files) -> tuple[str, Any]:
  """(kind, data_files) for a source string: a known name (with ":PATH" for local files) or a file path."""
  name, _, path = source.partition(":")
  kind = _ALIASES.get(name.lower())
  if kind is not None and path:
    if data_files is not None:
      raise ValueError(f"source {source!r} names a file and data_files is given too; pass one")
    return kind, path
  if kind is not None:
    return kind, data_files
  try:
    table_format(source)
    return "file", source
  except TableError:
    raise ValueError(
      f"unknown prompt source {source!r}: expected chitchat, hh-rlhf, imdb (optionally "
      f"NAME:PATH for a local copy) or a path to a {'/'.join(sorted(FORMATS))} file"
    ) from None


def load_prompts(
  source: str,
  *,
  split: str = "train",
  num: int | None = None,
  seed: int = 0,
  field: str | None = None,
  data_files: str | Sequence[str] | dict | None = None,
  data_dir: str | None = "harmless-base",
  max_chars: int | None = None,
) -> list[str]:
  """Prompts from a named dataset or a local file: cleaned, non-empty, deduplicated, optionally subsampled.

  Args:
    source: "chitchat", "hh-rlhf", "imdb" (or their hub ids), "NAME:PATH" for a hub source read from a
      local file of its schema, or a path to a .jsonl / .json / .parquet / .csv file (optionally .gz).
    split: dataset split ("train", "test"); chitchat has one split and ignores it.
    num: how many prompts to return: a uniformly random subset (seeded) of that size, in the source's
      order; None returns all. More than are available is an error, not a silent shortfall.
    seed: seeds the subset and the IMDB cut lengths.
    field: the column holding the text; defaults to "prompt" for files, "chosen" for hh-rlhf and "text"
      for imdb.
    data_files: local files for a hub source (a path, a list of paths, or {split: path}).
    data_dir: the hh-rlhf subset on the hub ("harmless-base" as in the MAP paper, "helpful-base", ...).
    max_chars: keep only prompts of at most this many characters (after cleaning), before subsampling.
      Chitchat's openers are mostly a few words, but a few run to thousands of characters, and one such
      prompt pads a whole generation batch to its length; how many were left out is logged.

  Returns:
    A list of distinct, non-empty prompt strings.

  Raises:
    FileNotFoundError: a local file does not exist.
    PromptFormatError: a file lacks the column (the message names file, column and the columns it has),
      or the source yields no prompt.
    ValueError: an unknown source, or `num` larger than the prompts available.
  """
  kind, data_files = _resolve(source, data_files)
  if kind == "chitchat":
    raw, where = _chitchat(), "chitchat"
  elif kind == "hh-rlhf":
    dialogues, where = _load_column(
      split, field or "chosen", hub_id=HH_HUB_ID, data_dir=data_dir, data_files=data_files
    )
    raw = [hh_first_turn(d) for d in dialogues]
    raw = [r for r in raw if r is not None]
  elif kind == "imdb":
    reviews, where = _load_column(split, field or "text", hub_id=IMDB_HUB_ID, data_files=data_files)
    raw = imdb_prefixes(reviews, seed)
  else:
    raw, where = _load_column(split, field or "prompt", data_files=data_files)
  prompts = dedupe(raw)
  if max_chars is not None:
    if max_chars < 1:
      raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    kept = [p for p in prompts if len(p) <= max_chars]
    logging.info("%s: %d of %d distinct prompts have at most %d characters", where, len(kept), len(prompts), max_chars)
    prompts = kept
  if not prompts:
    raise PromptFormatError(
      f"{where}: no non-empty prompt in split {split!r}"
      + (f" of at most {max_chars} characters" if max_chars is not None else "")
    )
  if num is None:
    return prompts
  if num > len(prompts):
    raise ValueError(f"{where}: asked for {num} prompts but split {split!r} has {len(prompts)} distinct ones")
  keep = np.sort(np.random.default_rng(seed).choice(len(prompts), size=num, replace=False))
  return [prompts[i] for i in keep]


def split_prompts(prompts: Sequence[str], num_pilot: int, num_test: int, seed: int = 0) -> tuple[list[str], list[str]]:
  """Disjoint pilot and test sets: a seeded permutation of the distinct prompts, cut in two.

  Duplicates (after `clean`, ignoring case) are removed first, so the two sets never share a prompt text:
  a test prompt seen in the pilot would flatter the realized levels MAP is judged on.

  Args:
    prompts: candidate prompts, e.g. from `load_prompts`.
    num_pilot, num_test: sizes of the two sets (>= 0).
    seed: the permutation's seed; the same (prompts, sizes, seed) always give the same sets.

  Returns:
    (pilot, test), each in shuffled order.
  """
  if num_pilot < 0 or num_test < 0:
    raise ValueError(f"set sizes must be >= 0, got num_pilot={num_pilot}, num_test={num_test}")
  distinct = dedupe(prompts)
  if num_pilot + num_test > len(distinct):
    raise ValueError(f"num_pilot + num_test = {num_pilot + num_test} exceeds the {len(distinct)} distinct prompts")
  order = np.random.default_rng(seed).permutation(len(distinct))
  pilot = [distinct[i] for i in order[:num_pilot]]
  test = [distinct[i] for i in order[num_pilot : num_pilot + num_test]]
  return pilot, test


__all__ = ["PromptFormatError", "clean", "dedupe", "hh_first_turn", "imdb_prefixes", "load_prompts", "split_prompts"]
