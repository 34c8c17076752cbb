"""Reading tables of texts (JSONL / JSON / CSV / Parquet) through `datasets`, with errors that name the row."""

from __future__ import annotations

import os


def read_table(path: str) -> list[dict]:
    """Rows of a .jsonl/.json/.csv/.parquet table as dicts, via `datasets` (one loader for every format)."""
    import datasets
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    builder = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}.get(ext)
    if builder is None:
        raise ValueError(f"{path}: unknown table format {ext!r}; use .jsonl, .json, .csv or .parquet")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such table")
    ds = datasets.load_dataset(builder, data_files=path, split="train")
    return ds.to_list()


def column(rows: list[dict], field: str, path: str, kind=str) -> list:
    """One column, checked: every row has it and it has the right type (errors name the row)."""
    out = []
    for i, row in enumerate(rows):
        if field not in row:
            raise ValueError(f"{path}: row {i} has no field {field!r} (fields: {', '.join(sorted(row))})")
        v = row[field]
        if kind is float:
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{path}: row {i}, field {field!r}: {v!r} is not a number") from None
        elif not isinstance(v, str):
            raise ValueError(f"{path}: row {i}, field {field!r} is {type(v).__name__}, expected text")
        out.append(v)
    return out
