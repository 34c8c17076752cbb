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
