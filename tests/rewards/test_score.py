"""experiments.score: a pilot table scored one value at a time, resumed after a crash, read by solve_palette."""

import json

import numpy as np
import pytest

from experiments import score
from map_jax.data.pilot import load_pilot
from map_jax.rewards import RewardFn, get_reward, register

ROWS = [
  {"id": i, "prompt": p, "response": r}
  for i, (p, r) in enumerate(
    [
      ("How was the trip?", "Wonderful, we loved every minute of it!"),
      ("How was the trip?", "Awful. The hotel was dirty and the food was terrible."),
      ("Any tips for sleep?", "Keep a regular schedule and avoid screens before bed."),
      ("Any tips for sleep?", ""),
      ("Tell me a joke.", "Why did the chicken cross the road? To get to the other side."),
    ]
  )
]


def _write(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  return str(path)


class Flaky(RewardFn):
  """Diversity that dies after `fail_after` calls: a crash in the middle of a table."""

  name = "flaky"
  calls = 0
  fail_after = None

  def _score(self, prompts, responses):
    Flaky.calls += 1
    if Flaky.fail_after is not None and Flaky.calls > Flaky.fail_after:
      raise RuntimeError("simulated crash")
    return get_reward("diversity")(prompts, responses)


register("flaky-test", Flaky)


def test_score_table_writes_values_next_to_text_and_feeds_solve_palette(tmp_path):
  src = _write(tmp_path / "pilot.jsonl", ROWS)
  out = score.score_table(src, str(tmp_path / "out.jsonl"), ["positiveness", "div=diversity"], chunk=2, progress=False)
  rows = [json.loads(line) for line in open(out)]
  assert [r["id"] for r in rows] == list(range(5)) and rows[0]["response"] == ROWS[0]["response"]
  prompts, responses = [r["prompt"] for r in ROWS], [r["response"] for r in ROWS]
  np.testing.assert_allclose([r["positiveness"] for r in rows], get_reward("positiveness")(prompts, responses))
  np.testing.assert_allclose([r["div"] for r in rows], get_reward("diversity")(prompts, responses))
  matrix, names = load_pilot(out, ["positiveness", "div"])
  assert matrix.shape == (5, 2) and names == ["positiveness", "div"]
  assert not (tmp_path / "out.jsonl.parts").exists()
  from experiments import solve_palette

  record = solve_palette.run(out, ["positiveness", "div"], ["div"], quantiles=["0.6"])
  assert record["feasible"] and record["values"] == ["positiveness", "div"]


def test_parquet_input(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  path = tmp_path / "pilot.parquet"
  pq.write_table(pa.Table.from_pylist(ROWS), path)
  out = score.score_table(str(path), str(tmp_path / "o.jsonl"), ["length"], progress=False)
  lengths = [json.loads(line)["length"] for line in open(out)]
  np.testing.assert_array_equal(lengths, get_reward("length")([""] * 5, [r["response"] for r in ROWS]))


def test_resume_after_a_crash_scores_only_what_is_missing(tmp_path):
  src = _write(tmp_path / "pilot.jsonl", ROWS)
  out = str(tmp_path / "out.jsonl")
  Flaky.calls, Flaky.fail_after = 0, 2
  with pytest.raises(RuntimeError, match="simulated crash"):
    score.score_table(src, out, ["positiveness", "flaky-test"], chunk=2, progress=False)
  parts = tmp_path / "out.jsonl.parts"
  assert len((parts / "flaky-test.jsonl").read_text().splitlines()) == 1 + 2  # header, chunks [0:2], [2:4]
  with open(parts / "flaky-test.jsonl", "a") as f:
    f.write('{"chunk": 4, "da')  # a torn write from the moment of the crash
  Flaky.calls, Flaky.fail_after = 0, None
  score.score_table(src, out, ["positiveness", "flaky-test"], chunk=2, progress=False)
  assert Flaky.calls == 1  # only the last chunk was scored again
  matrix, _ = load_pilot(out, ["flaky-test"])
  np.testing.assert_allclose(
    matrix[:, 0], get_reward("diversity")([r["prompt"] for r in ROWS], [r["response"] for r in ROWS])
  )
  # Partial scores of another table, or of another spec under the same name, are never mixed in.
  Flaky.calls, Flaky.fail_after = 0, 1
  with pytest.raises(RuntimeError, match="simulated crash"):
    score.score_table(src, out, ["flaky-test"], chunk=2, progress=False)
  _write(tmp_path / "pilot.jsonl", ROWS[::-1])
  score.score_table(src, out, ["flaky-test=length"], chunk=2, progress=False)
  clean = score.score_table(src, str(tmp_path / "clean.jsonl"), ["flaky-test=length"], chunk=2, progress=False)
  assert open(out).read() == open(clean).read()


def test_bad_tables_name_the_row(tmp_path):
  bad = _write(tmp_path / "bad.jsonl", ROWS[:2] + [{"prompt": "p", "response": 3}])
  with pytest.raises(ValueError, match=r"row 2, field 'response' is int"):
    score.score_table(bad, str(tmp_path / "o.jsonl"), ["diversity"], progress=False)
  missing = _write(tmp_path / "missing.jsonl", [{"prompt": "p", "text": "t"}])
  with pytest.raises(ValueError, match=r"row 0 has no field 'response' \(fields: prompt, text\)"):
    score.score_table(missing, str(tmp_path / "o.jsonl"), ["diversity"], progress=False)
  with pytest.raises(Exception, match="unknown reward value 'wit'"):
    score.score_table(_write(tmp_path / "ok.jsonl", ROWS), str(tmp_path / "o.jsonl"), ["wit"], progress=False)


def test_reference_opt_texts_diversity_and_cli(reference_rows, tmp_path):
  import subprocess
  import sys

  from .conftest import REFERENCE

  out = tmp_path / "opt.jsonl"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.score",
      f"--input={REFERENCE}",
      "--response_field=generated",
      "--values=div=diversity,positiveness",
      "--limit=400",
      "--batch_size=8",
      f"--output={out}",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  rows = [json.loads(line) for line in open(out)]
  ours, theirs = np.array([r["div"] for r in rows]), np.array([r["diversity"] for r in rows])
  assert len(rows) == 400 and np.mean(np.abs(ours - theirs) < 1e-9) > 0.7
  assert np.abs(ours - theirs).mean() < 0.005


def test_text_that_is_not_unicode_names_the_row(tmp_path):
  src = tmp_path / "bad.jsonl"
  src.write_text('{"prompt": "p", "response": "ok"}\n{"prompt": "p", "response": "x\\ud800y"}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl: row 1, field 'response' is not valid Unicode"):
    score.score_table(str(src), str(tmp_path / "o.jsonl"), ["diversity"], progress=False)
  assert not (tmp_path / "o.jsonl").exists()


def test_a_scored_table_says_which_fields_are_values(tmp_path):
  rows = [dict(r, num_tokens=len(r["response"])) for r in ROWS]  # numeric fields that are not values
  src = _write(tmp_path / "pilot.jsonl", rows)
  out = score.score_table(src, str(tmp_path / "out.jsonl"), ["positiveness", "div=diversity"], progress=False)
  matrix, names = load_pilot(out)
  assert names == ["positiveness", "div"] and matrix.shape == (5, 2)
  with open(out, "a") as f:  # the table changes after its value list was written: every numeric field again
    f.write(
      json.dumps({"id": 9, "prompt": "p", "response": "r", "num_tokens": 1, "positiveness": 0.0, "div": 0.0}) + "\n"
    )
  assert load_pilot(out)[1] == ["id", "num_tokens", "positiveness", "div"]
