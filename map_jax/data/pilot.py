"""Pilot reward tables: read an n × m reward matrix from JSON, JSONL, CSV or .npy files.

A pilot table holds one row per pilot sample (x_j, y_j ~ p0) and one column per
value. JSON, JSONL, CSV and Parquet tables are read by `map_jax.data.tables.read_table` (JSON
may be a list of records, ``[{"humor": 1.2, ...}, ...]`` as the MAP authors publish
their pilot data, or a mapping from value name to column); ``.npy`` holds a bare matrix
whose columns are named by ``values`` (or ``value_0``, ``value_1``, ... when not given).
Extra fields (prompt, generated text) are ignored; a missing value, a boolean, or a
non-numeric or non-finite reward is an error that names the file, the row and the value.
"""

import hashlib
import json
import math
import os
from typing import Any, Sequence

from absl import logging
import numpy as np

from map_jax.data.tables import TableError, read_table, table_format


class PilotFormatError(TableError):
  """A pilot table that cannot be read as an n × m matrix of finite rewards."""


def _is_reward(v: Any) -> bool:
  """A JSON number or a CSV cell that parses as one (booleans are not rewards)."""
  if isinstance(v, bool):
    return False
  if isinstance(v, (int, float)):
    return True
  if isinstance(v, str) and v.strip():
    try:
      float(v)
    except ValueError:
      return False
    return True
  return False


def _records_to_matrix(records: Sequence[Any], values: Sequence[str] | None, path: str) -> tuple[np.ndarray, list[str]]:
  if not records:
    raise PilotFormatError(f"{path}: no rows.")
  if values is None:
    # Every field that holds a number in some row, in the order first seen: a value missing from the first
    # row (an empty CSV cell, a JSON null) is then an error naming that row, not a silently dropped column.
    values = list(dict.fromkeys(k for rec in records for k, v in rec.items() if _is_reward(v)))
    if not values:
      raise PilotFormatError(f"{path}: no numeric fields to use as values.")
  values = list(values)
  out = np.empty((len(records), len(values)), dtype=np.float64)
  for j, rec in enumerate(records):
    for i, name in enumerate(values):
      if name not in rec:
        known = ", ".join(sorted(rec)[:12])
        raise PilotFormatError(f"{path}: row {j} has no value {name!r} (fields: {known}).")
      out[j, i] = _to_float(rec[name], path, j, name)
  return out, values


def _to_float(raw: Any, path: str, j: int, name: str) -> float:
  if isinstance(raw, bool):
    raise PilotFormatError(f"{path}: row {j}, value {name!r}: {raw!r} is a boolean, not a reward.")
  try:
    x = float(raw)
  except (TypeError, ValueError):
    raise PilotFormatError(f"{path}: row {j}, value {name!r}: {raw!r} is not a number.") from None
  if not math.isfinite(x):
    raise PilotFormatError(f"{path}: row {j}, value {name!r} is not finite ({raw!r}).")
  return x


def load_pilot(path: str, values: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
  """Reads a pilot reward table.

  Args:
    path: a ``.json``, ``.jsonl``, ``.csv``, ``.parquet`` (read by `map_jax.data.tables.read_table`) or
      ``.npy`` file.
    values: the value columns to read, in order; default: the columns its value list names (`VALUES_SUFFIX`,
      written beside every table `map_jax.rewards.scoring.score_table` scores), else every field that holds a
      number in some row (or every column of a ``.npy`` matrix).

  Returns:
    ``(rewards, names)``: a float64 (n, m) matrix and the m value names.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    PilotFormatError: the file cannot be parsed, a row lacks a value, or a reward is
      not a finite number; the message names the file, row and value.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"pilot table not found: {path}")
  if values is not None and (isinstance(values, str) or not all(isinstance(v, str) for v in values)):
    raise PilotFormatError(f"{path}: values must be a list of column names, got {values!r}.")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".npy":
    mat = np.load(path, allow_pickle=False)
    if mat.ndim != 2:
      raise PilotFormatError(f"{path}: expected a 2-D (samples × values) array, got shape {mat.shape}.")
    names = list(values) if values is not None else [f"value_{i}" for i in range(mat.shape[1])]
    if len(names) != mat.shape[1]:
      raise PilotFormatError(f"{path}: {mat.shape[1]} columns but {len(names)} value names ({', '.join(names)}).")
    bad = ~np.isfinite(mat)
    if bad.any():
      j, i = np.argwhere(bad)[0]
      raise PilotFormatError(f"{path}: row {j}, value {names[i]!r} is not finite ({mat[j, i]}).")
    return mat.astype(np.float64), names
  try:
    table_format(path)
  except TableError:
    raise PilotFormatError(
      f"{path}: unknown pilot table format {ext!r}; use .json, .jsonl, .csv, .parquet or .npy."
    ) from None
  try:
    records = read_table(path)
  except TableError as e:
    raise PilotFormatError(str(e)) from None
  if values is None:
    values = value_columns(path)
  return _records_to_matrix(records, values, path)


# Beside a scored table, which of its fields are values (a pipeline table also holds numeric fields that are
# not: prompt_index, sample, num_tokens).
VALUES_SUFFIX = ".values.json"


def _digest(path: str) -> str:
  h = hashlib.sha1()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def write_value_columns(path: str, names: Sequence[str]) -> None:
  """Record that `names` are the value columns of the table at `path` (tied to its current bytes)."""
  from map_jax.store import write_json

  write_json(path + VALUES_SUFFIX, {"values": list(names), "table_sha1": _digest(path)})


def value_columns(path: str) -> list[str] | None:
  """The value columns recorded beside `path`, or None when there is no record or the table has changed
  since (then every numeric field is read, and a log line says why)."""
  side = path + VALUES_SUFFIX
  if not os.path.isfile(side):
    return None
  try:
    with open(side) as f:
      rec = json.load(f)
    names, digest = rec["values"], rec["table_sha1"]
  except (ValueError, KeyError, TypeError):
    logging.warning("%s: unreadable value list, ignored", side)
    return None
  if digest != _digest(path):
    logging.warning("%s: the table changed after its value list was written; reading every numeric field", side)
    return None
  return list(names)
