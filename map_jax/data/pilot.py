"""Pilot reward tables: read an n × m reward matrix from JSON, JSONL, CSV or .npy files.

A pilot table holds one row per pilot sample (x_j, y_j ~ p0) and one column per
value. JSON may be a list of records (``[{"humor": 1.2, ...}, ...]``, as the MAP
authors publish their pilot data) or a mapping from value name to column; JSONL holds
one record per line; CSV has a header row; ``.npy`` holds a bare matrix whose columns
are named by ``values`` (or ``value_0``, ``value_1``, ... when not given). Extra fields
(prompt, generated text) are ignored; a missing value or a non-numeric or non-finite
reward is an error that names the file, the row and the value.
"""

import csv
import json
import math
import os
from typing import Any, Sequence

import numpy as np


class PilotFormatError(ValueError):
  """A pilot table that cannot be read as an n × m matrix of finite rewards."""


def _records_to_matrix(records: Sequence[Any], values: Sequence[str] | None, path: str,
                       row_label: str) -> tuple[np.ndarray, list[str]]:
  if not records:
    raise PilotFormatError(f"{path}: no rows.")
  first = records[0]
  if not isinstance(first, dict):
    raise PilotFormatError(f"{path}: {row_label} 0 is a {type(first).__name__}, expected an "
                           "object mapping value names to rewards.")
  if values is None:
    values = [k for k, v in first.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not values:
      raise PilotFormatError(f"{path}: {row_label} 0 has no numeric fields to use as values.")
  values = list(values)
  out = np.empty((len(records), len(values)), dtype=np.float64)
  for j, rec in enumerate(records):
    if not isinstance(rec, dict):
      raise PilotFormatError(f"{path}: {row_label} {j} is a {type(rec).__name__}, expected an "
                             "object.")
    for i, name in enumerate(values):
      if name not in rec:
        known = ", ".join(sorted(rec)[:12])
        raise PilotFormatError(f"{path}: {row_label} {j} has no value {name!r} "
                               f"(fields: {known}).")
      out[j, i] = _to_float(rec[name], path, row_label, j, name)
  return out, values


def _to_float(raw: Any, path: str, row_label: str, j: int, name: str) -> float:
  try:
    x = float(raw)
  except (TypeError, ValueError):
    raise PilotFormatError(f"{path}: {row_label} {j}, value {name!r}: {raw!r} is not a "
                           "number.") from None
  if not math.isfinite(x):
    raise PilotFormatError(f"{path}: {row_label} {j}, value {name!r} is not finite ({raw!r}).")
  return x


def load_pilot(path: str, values: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
  """Reads a pilot reward table.

  Args:
    path: a ``.json``, ``.jsonl``, ``.csv`` or ``.npy`` file.
    values: the value columns to read, in order; default: every numeric field of the
      first record (or every column of a ``.npy`` matrix).

  Returns:
    ``(rewards, names)``: a float64 (n, m) matrix and the m value names.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    PilotFormatError: the file cannot be parsed, a row lacks a value, or a reward is
      not a finite number; the message names the file, row and value.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"pilot table not found: {path}")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".npy":
    mat = np.load(path, allow_pickle=False)
    if mat.ndim != 2:
      raise PilotFormatError(f"{path}: expected a 2-D (samples × values) array, got shape "
                             f"{mat.shape}.")
    names = list(values) if values is not None else [f"value_{i}" for i in range(mat.shape[1])]
    if len(names) != mat.shape[1]:
      raise PilotFormatError(f"{path}: {mat.shape[1]} columns but {len(names)} value names "
                             f"({', '.join(names)}).")
    bad = ~np.isfinite(mat)
    if bad.any():
      j, i = np.argwhere(bad)[0]
      raise PilotFormatError(f"{path}: row {j}, value {names[i]!r} is not finite "
                             f"({mat[j, i]}).")
    return mat.astype(np.float64), names
  if ext == ".json":
    try:
      with open(path) as f:
        data = json.load(f)
    except json.JSONDecodeError as e:
      raise PilotFormatError(f"{path}: not valid JSON ({e}).") from None
    if isinstance(data, dict):
      names = list(values) if values is not None else list(data)
      missing = [v for v in names if v not in data]
      if missing:
        raise PilotFormatError(f"{path}: no column named {missing[0]!r} "
                               f"(columns: {', '.join(data)}).")
      lengths = {v: len(data[v]) for v in names}
      if len(set(lengths.values())) != 1:
        raise PilotFormatError(f"{path}: columns have different lengths {lengths}.")
      records = [{v: data[v][j] for v in names} for j in range(lengths[names[0]])]
      return _records_to_matrix(records, names, path, "row")
    if not isinstance(data, list):
      raise PilotFormatError(f"{path}: expected a list of records or a mapping of columns.")
    return _records_to_matrix(data, values, path, "row")
  if ext == ".jsonl":
    records = []
    with open(path) as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise PilotFormatError(f"{path}: line {lineno} is not valid JSON ({e}).") from None
    return _records_to_matrix(records, values, path, "row")
  if ext == ".csv":
    with open(path, newline="") as f:
      records = list(csv.DictReader(f))
    if values is None and records:
      values = [k for k, v in records[0].items() if _is_number(v)]
    return _records_to_matrix(records, values, path, "row")
  raise PilotFormatError(f"{path}: unknown pilot table format {ext!r}; use .json, .jsonl, "
                         ".csv or .npy.")


def _is_number(text: Any) -> bool:
  try:
    float(text)
  except (TypeError, ValueError):
    return False
  return True
