"""The one table reader: rows of a JSON, JSONL, CSV or Parquet file (optionally gzipped) as dicts.

Pilot reward tables (`map_jax.data.pilot`), local prompt files (`map_jax.data.prompts`) and the tables the
scoring stage reads all come through `read_table`, so every format is read, and fails, the same way:

  .json      a list of records, or a mapping from column name to a list (all of one length);
             a file of one record per line is read as JSONL
  .jsonl     one record per line (blank lines skipped)
  .csv       a header row, then one row per record; cells are strings
  .parquet   via pyarrow
  + .gz      any of the above, gzipped

Errors name the file and the line or row: a malformed line, a record that is not an object, bytes that are not
UTF-8, columns of different lengths.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from typing import Any

FORMATS = (".json", ".jsonl", ".csv", ".parquet")


class TableError(ValueError):
  """A table that cannot be read as rows of records; the message names the file and the line or row."""


def table_format(path: str) -> str:
  """The format of `path` by its extension (".json", ".jsonl", ".csv", ".parquet"), a trailing .gz ignored."""
  base = path[:-3] if path.endswith(".gz") else path
  ext = os.path.splitext(base)[1].lower()
  if ext not in FORMATS:
    raise TableError(
      f"{path}: unknown table format {ext or '(none)'!r}; use one of {', '.join(FORMATS)} (optionally .gz)"
    )
  return ext


def _open(path: str, mode: str = "rb"):
  return gzip.open(path, mode) if path.endswith(".gz") else open(path, mode)


def _text(path: str) -> str:
  with _open(path) as f:
    data = f.read()
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data[: e.start].count(b"\n") + 1
    raise TableError(f"{path}: line {line} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _jsonl(path: str, text: str) -> list[Any]:
  rows = []
  for lineno, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      raise TableError(f"{path}: line {lineno} is not valid JSON ({e.msg}, column {e.colno})") from None
  return rows


def _columns_to_records(path: str, data: dict) -> list[dict]:
  bad = [k for k, v in data.items() if not isinstance(v, list)]
  if bad:
    raise TableError(
      f"{path}: column {bad[0]!r} is a {type(data[bad[0]]).__name__}, not a list; a JSON object "
      "maps column names to lists of equal length"
    )
  lengths = {k: len(v) for k, v in data.items()}
  if len(set(lengths.values())) > 1:
    raise TableError(f"{path}: columns have different lengths {lengths}")
  n = next(iter(lengths.values()), 0)
  return [{k: data[k][j] for k in data} for j in range(n)]


def read_table(path: str) -> list[dict]:
  """The rows of the table at `path`, each a dict (see the module docstring for the formats).

  Raises:
    FileNotFoundError: `path` does not exist.
    TableError: an unknown format, a malformed line, a row that is not a record, non-UTF-8 bytes.
  """
  ext = table_format(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such table")
  if ext == ".parquet":
    import pyarrow.parquet as pq

    try:
      with _open(path) as f:
        rows = pq.read_table(io.BytesIO(f.read())).to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file
      raise TableError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
  elif ext == ".csv":
    text = _text(path)
    try:
      rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as e:
      raise TableError(f"{path}: malformed CSV ({e})") from None
    for i, row in enumerate(rows):
      if None in row or any(v is None for v in row.values()):
        raise TableError(
          f"{path}: row {i} (line {i + 2}) has {'more' if None in row else 'fewer'} cells than the header"
        )
  elif ext == ".jsonl":
    rows = _jsonl(path, _text(path))
  else:
    text = _text(path)
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      if e.msg != "Extra data":
        raise TableError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}, column {e.colno})") from None
      data = _jsonl(path, text)  # JSON Lines under a .json name
    if isinstance(data, dict):
      data = _columns_to_records(path, data)
    if not isinstance(data, list):
      raise TableError(f"{path}: expected a list of records or a mapping of columns, got a {type(data).__name__}")
    rows = data
  for i, row in enumerate(rows):
    if not isinstance(row, dict):
      raise TableError(f"{path}: row {i} is a {type(row).__name__}, expected an object of named fields")
  return rows


def column(rows: list[dict], field: str, path: str, kind=str) -> list:
  """One column, checked: every row has it and it has the right type (errors name the row)."""
  out = []
  for i, row in enumerate(rows):
    if field not in row:
      raise TableError(f"{path}: row {i} has no field {field!r} (fields: {', '.join(sorted(row))})")
    v = row[field]
    if kind is float:
      if isinstance(v, bool):
        raise TableError(f"{path}: row {i}, field {field!r}: {v!r} is a boolean, not a number")
      try:
        v = float(v)
      except (TypeError, ValueError):
        raise TableError(f"{path}: row {i}, field {field!r}: {v!r} is not a number") from None
    elif not isinstance(v, str):
      raise TableError(f"{path}: row {i}, field {field!r} is {type(v).__name__}, expected text")
    out.append(v)
  return out


__all__ = ["FORMATS", "TableError", "column", "read_table", "table_format"]
