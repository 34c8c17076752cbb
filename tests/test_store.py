"""map_jax.store: chunks resume under the same key, are discarded under another, torn lines are cut, writes are
atomic; and content keys depend on every part."""

import json
import os

from map_jax import store
from map_jax.store import ChunkStore, content_key


def test_chunks_resume_under_the_same_key_and_are_discarded_under_another(tmp_path):
  path = str(tmp_path / "out.parts")
  s = ChunkStore(path, "k1", meta={"rows": 4})
  s.append(0, [1.0, 2.0])
  s.append(2, [3.0])
  assert ChunkStore(path, "k1").chunks == {0: [1.0, 2.0], 2: [3.0]}
  assert 2 in ChunkStore(path, "k1") and 1 not in ChunkStore(path, "k1")
  other = ChunkStore(path, "k2")
  assert other.chunks == {}
  assert ChunkStore(path, "k1").chunks == {}  # the old run's chunks are gone for good
  other.finish()
  assert not os.path.exists(path)


def test_torn_lines_and_torn_headers(tmp_path):
  path = tmp_path / "out.parts"
  s = ChunkStore(str(path), "k")
  s.append("a", {"x": 1})
  with open(path, "a") as f:
    f.write('{"chunk": "b", "da')  # a kill mid-write
  resumed = ChunkStore(str(path), "k")
  assert resumed.chunks == {"a": {"x": 1}}
  resumed.append("b", {"x": 2})  # appended after the cut: readable by the next resume
  assert ChunkStore(str(path), "k").chunks == {"a": {"x": 1}, "b": {"x": 2}}
  for broken in ("", '{"key": "k", "me', "[1, 2]\n", "not json\n"):
    path.write_text(broken)
    assert ChunkStore(str(path), "k").chunks == {}
    assert json.loads(path.read_text().splitlines()[0])["key"] == "k"


def test_a_readonly_store_reads_what_the_writer_holds_and_never_touches_the_file(tmp_path):
  """The view of a multi-host run's other processes: process 0's chunks, a torn line left as it is, appends
  in memory only, no header written and nothing deleted."""
  path = tmp_path / "out.parts"
  assert ChunkStore(str(path), "k", readonly=True).chunks == {} and not path.exists()
  writer = ChunkStore(str(path), "k")
  writer.append(0, [1.0])
  with open(path, "a") as f:
    f.write('{"chunk": 1, "da')  # the writer is mid-append
  before = path.read_bytes()
  reader = ChunkStore(str(path), "k", readonly=True)
  assert reader.chunks == {0: [1.0]}
  reader.append(1, [2.0])
  reader.finish()
  assert reader.chunks == {0: [1.0], 1: [2.0]} and path.read_bytes() == before
  assert ChunkStore(str(path), "other", readonly=True).chunks == {} and path.read_bytes() == before


def test_atomic_writes_leave_no_temporary_files(tmp_path):
  store.write_json(str(tmp_path / "a.json"), {"b": [1, 2]})
  store.write_jsonl(str(tmp_path / "a.jsonl"), [{"x": "\udcff"}, {"x": "é"}])
  assert json.loads((tmp_path / "a.json").read_text()) == {"b": [1, 2]}
  assert [json.loads(line)["x"] for line in (tmp_path / "a.jsonl").read_text().splitlines()] == ["\udcff", "é"]
  assert sorted(os.listdir(tmp_path)) == ["a.json", "a.jsonl"]


def test_content_key_depends_on_every_part():
  base = content_key(["a", "b"], {"seed": 0, "model": "m"}, 3)
  assert base == content_key(["a", "b"], {"model": "m", "seed": 0}, 3)  # key order does not matter
  for other in (
    (["b", "a"], {"seed": 0, "model": "m"}, 3),
    (["a", "b"], {"seed": 1, "model": "m"}, 3),
    (["a", "b"], {"seed": 0, "model": "m"}, 4),
    (["a", "b"], {"seed": 0, "model": "m2"}, 3),
  ):
    assert content_key(*other) != base


def test_read_jsonl_stops_at_a_torn_line_and_repairs_only_when_asked(tmp_path):
  path = tmp_path / "log.jsonl"
  assert store.read_jsonl(str(path)) == []
  path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
  assert store.read_jsonl(str(path)) == [{"step": 1}, {"step": 2}]
  assert path.read_text().endswith('"lo')  # untouched without repair
  assert store.read_jsonl(str(path), repair=True) == [{"step": 1}, {"step": 2}]
  assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


WRITER = """
import sys

from map_jax.store import ChunkStore, write_text

path, size = sys.argv[1], 1_000_000
store = ChunkStore(path + ".parts", "key")
print(len(store.chunks), flush=True)
i = len(store.chunks)
while True:
  write_text(path, str(i % 10) * size)
  store.append(i, {"i": i, "pad": "x" * 100_000})
  i += 1
"""


def test_a_kill_during_any_write_leaves_each_file_whole(tmp_path):
  """SIGKILL a process that rewrites a file and appends chunks in a loop, at random moments: the file is always
  one whole version, the chunk file resumes at a whole chunk, and the next process carries on from there."""
  import random
  import signal
  import subprocess
  import sys
  import time

  path = tmp_path / "out.txt"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  rng, seen = random.Random(0), 0
  for _ in range(5):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, cwd=root)
    assert int(proc.stdout.readline()) == seen  # it resumed after every chunk the last one finished
    time.sleep(rng.uniform(0.05, 0.4))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    text = path.read_text() if path.exists() else ""
    assert len(text) in (0, 1_000_000) and len(set(text)) <= 1, "a torn rewrite"
    chunks = ChunkStore(str(path) + ".parts", "key").chunks
    assert list(chunks) == list(range(len(chunks))) and all(
      d == {"i": i, "pad": "x" * 100_000} for i, d in chunks.items()
    )
    assert len(chunks) >= seen
    seen = len(chunks)
  assert seen > 0
