"""The work directory of a MAP run: where each stage's files live, and the records of the stages that ran.

Every stage of `map_jax.pipeline` writes its files here and a record `stages/NAME.json` holding its key (a hash
of the config fields it reads and of its inputs' keys) and wall time. Writes are atomic (`map_jax.store`).
Nothing below the pipeline reads a workdir: reports and plots take the records and arrays the pipeline
reads from it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from map_jax import store


class Workdir:
  """Paths, stage records and atomic writes in one run directory."""

  def __init__(self, path: str):
    self.root = os.path.abspath(path)
    os.makedirs(os.path.join(self.root, "stages"), exist_ok=True)

  def path(self, *name: str) -> str:
    return os.path.join(self.root, *name)

  def record(self, stage: str) -> dict | None:
    try:
      with open(self.path("stages", f"{stage}.json")) as f:
        return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
      return None

  def done(self, stage: str, key: str) -> bool:
    rec = self.record(stage)
    return rec is not None and rec.get("key") == key

  def mark(self, stage: str, key: str, seconds: float, **info) -> None:
    self.write_json(self.path("stages", f"{stage}.json"), {"key": key, "seconds": seconds, **info})

  @staticmethod
  def write_json(path: str, obj: Any) -> None:
    store.write_json(path, obj)  # atomic: a reader never sees half a file

  def read_json(self, name: str) -> Any:
    with open(self.path(name)) as f:
      return json.load(f)


__all__ = ["Workdir"]
