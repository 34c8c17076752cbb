"""The one resumable record store: chunks appended as they finish, keyed by the content that determines them.

Long stages (sampling, scoring) write their output in chunks so that a killed run resumes where it stopped.
`ChunkStore(path, key)` is a JSONL file whose first line is a header holding `key`, a content hash
(`content_key`) of everything that determines the chunks: the inputs, the model, the seed, the options. Every
later line is one finished chunk, `{"chunk": id, "data": ...}`, written whole, flushed and fsync'd.

Opening a store
  - with the same key returns the chunks already finished;
  - with another key (a changed seed, prompt set, model or value spec) discards the old chunks, so nothing of
    another run is ever mixed in;
  - cuts a torn last line (a kill mid-write), so chunks appended afterwards stay readable.
`finish()` deletes the file once the caller has written its final output (with `write_json`/`write_jsonl`,
which are atomic: a reader sees the old file or the new one, never half of one).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable

from absl import logging
import numpy as np


def plain(x: Any) -> Any:
  """A config (ConfigDict, dict, list, scalar) as plain JSON-able Python, keys sorted; tuples become lists and
  NumPy scalars Python numbers."""
  if isinstance(x, np.generic):
    return x.item()
  if hasattr(x, "to_dict"):
    x = x.to_dict()
  if isinstance(x, dict):
    return {k: plain(v) for k, v in sorted(x.items())}
  if isinstance(x, (list, tuple)):
    return [plain(v) for v in x]
  return x


def content_key(*parts: Any) -> str:
  """A short hash of `parts` (configs, lists of texts, numbers) in canonical JSON."""
  blob = json.dumps([plain(p) for p in parts], sort_keys=True)
  return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _fsync_dir(path: str) -> None:
  try:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_text(path: str, text: str) -> None:
  """Write `text` to `path` atomically: a temporary file beside it, fsync'd, then renamed over it."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  _fsync_dir(path)


def write_json(path: str, obj: Any) -> None:
  """`obj` as indented JSON at `path`, atomically."""
  write_text(path, json.dumps(obj, indent=1))


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
  """One JSON record per line at `path`, atomically."""
  write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def append_jsonl(path: str, record: Any) -> None:
  """Append one record as a JSON line, flushed and fsync'd before returning (a kill leaves at most a torn last
  line, which `read_jsonl(..., repair=True)` cuts)."""
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def read_jsonl(path: str, *, repair: bool = False) -> list[Any]:
  """The records of a JSONL file up to its first line that does not parse ([] when there is no file).

  A line that does not parse is what a kill mid-write leaves at the end of an appended file; with `repair`
  it and everything after it are cut off the file, so records appended later stay readable.
  """
  if not os.path.isfile(path):
    return []
  records, good = [], 0
  with open(path, "rb") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        break
      good += len(line)
  if repair and good < os.path.getsize(path):
    with open(path, "r+b") as f:
      f.truncate(good)
  return records


class ChunkStore:
  """Finished chunks of one long computation, resumable after a kill and tied to the content key that made them.

  Args:
    path: the JSONL file of the chunks (its directory must exist).
    key: `content_key(...)` of everything that determines the chunks.
    meta: JSON-able facts kept in the header for a reader (never compared; the key is).
    readonly: read the chunks of a store another process writes (a multi-host run's process 0; see
      `map_jax.parallel.open_store`): the file is never written, repaired or deleted, and `append` keeps the
      chunk in memory only.

  Attributes:
    chunks: {chunk id: data} of the chunks finished so far (with this key).
  """

  def __init__(self, path: str, key: str, meta: Any = None, *, readonly: bool = False):
    self.path, self.key, self.readonly = path, key, readonly
    self.chunks: dict[Any, Any] = {}
    header = {"key": key, "meta": meta}
    if not self._resume() and not readonly:
      write_text(path, json.dumps(header) + "\n")

  def _resume(self) -> bool:
    """Read the chunks of a previous run with the same key; False when there is nothing to resume."""
    records = read_jsonl(self.path, repair=not self.readonly)
    if not records:
      return False  # no file, an empty one, or a torn header: start afresh
    header = records[0]
    if not isinstance(header, dict) or header.get("key") != self.key:
      logging.info(
        "%s: chunks of another run (key %s, now %s) are discarded",
        self.path,
        header.get("key") if isinstance(header, dict) else None,
        self.key,
      )
      return False
    chunks = {}
    for rec in records[1:]:
      if not (isinstance(rec, dict) and "chunk" in rec and "data" in rec):
        return False  # not a chunk file of ours: start afresh
      chunks[rec["chunk"]] = rec["data"]
    self.chunks = chunks
    return True

  def __contains__(self, chunk: Any) -> bool:
    return chunk in self.chunks

  def append(self, chunk: Any, data: Any) -> None:
    """Record a finished chunk (a JSON-able id and payload), durably, before returning."""
    if not self.readonly:
      append_jsonl(self.path, {"chunk": chunk, "data": data})
    self.chunks[chunk] = data

  def finish(self) -> None:
    """Delete the chunk file (call after the final output is written)."""
    if not self.readonly and os.path.exists(self.path):
      os.remove(self.path)


__all__ = [
  "ChunkStore",
  "append_jsonl",
  "content_key",
  "plain",
  "read_jsonl",
  "write_json",
  "write_jsonl",
  "write_text",
]
