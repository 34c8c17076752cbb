"""Bad pilot tables, one case per row: every loader answers with one line naming the file, the row (or line)
and the field, and a launcher exits 1 with that line and writes nothing."""

import json
import pathlib
import subprocess
import sys

import pytest

from map_jax.data.pilot import PilotFormatError, load_pilot
from map_jax.data.tables import TableError, read_table

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOOD = [{"prompt": "a", "humor": 1.0, "harm": 0.5}, {"prompt": "b", "humor": 2.0, "harm": 0.1}]

# (file name, bytes, the pattern the one-line error must match)
CASES = [
  ("empty.jsonl", b"", r"empty.jsonl: no rows"),
  ("empty.csv", b"", r"empty.csv: no rows"),
  ("malformed.json", b'[{"humor": 1.0,', r"malformed.json: not valid JSON .*line 1"),
  ("torn.jsonl", b'{"humor": 1.0, "harm": 0.5}\n{"humor": 2.', r"torn.jsonl: line 2 is not valid JSON"),
  (
    "text.jsonl",
    b'{"humor": 1.0, "harm": 0.5}\n{"humor": "high", "harm": 0.1}\n',
    r"text.jsonl: row 1, value 'humor': 'high' is not a number",
  ),
  (
    "nan.jsonl",
    b'{"humor": 1.0, "harm": 0.5}\n{"humor": NaN, "harm": 0.1}\n',
    r"nan.jsonl: row 1, value 'humor' is not finite",
  ),
  (
    "bool.jsonl",
    b'{"humor": 1.0, "harm": 0.5}\n{"humor": true, "harm": 0.1}\n',
    r"bool.jsonl: row 1, value 'humor': True is a boolean, not a reward",
  ),
  (
    "null_first.jsonl",
    b'{"humor": null, "harm": 0.5}\n{"humor": 2.0, "harm": 0.1}\n',
    r"null_first.jsonl: row 0, value 'humor': None is not a number",
  ),
  ("missing.jsonl", b'{"humor": 1.0, "harm": 0.5}\n{"harm": 0.1}\n', r"missing.jsonl: row 1 has no value 'humor'"),
  ("cell.csv", b"prompt,humor,harm\na,,0.5\nb,2.0,0.1\n", r"cell.csv: row 0, value 'humor': '' is not a number"),
  ("ragged.csv", b"prompt,humor,harm\na,1.0\n", r"ragged.csv: row 0 \(line 2\) has fewer cells than the header"),
  ("scalar.json", b'{"humor": 1.0, "harm": [0.5]}', r"scalar.json: column 'humor' is a float, not a list"),
  ("lengths.json", b'{"humor": [1.0, 2.0], "harm": [0.5]}', r"lengths.json: columns have different lengths"),
  ("rows.json", b"[1.0, 2.0]", r"rows.json: row 0 is a float, expected an object"),
  ("latin1.jsonl", b'{"prompt": "caf\xe9", "humor": 1.0, "harm": 0.5}\n', r"latin1.jsonl: line 1 is not UTF-8 text"),
  ("table.txt", b"1 2\n", r"table.txt: unknown pilot table format '.txt'"),
]


@pytest.mark.parametrize("name, data, pattern", CASES, ids=[c[0] for c in CASES])
def test_load_pilot_names_file_row_and_field(tmp_path, name, data, pattern):
  path = tmp_path / name
  path.write_bytes(data)
  with pytest.raises(PilotFormatError, match=pattern) as err:
    load_pilot(str(path))
  assert "\n" not in str(err.value)


def test_the_table_reader_and_loader_agree_on_good_tables(tmp_path):
  for name, text in [
    ("t.jsonl", "".join(json.dumps(r) + "\n" for r in GOOD)),
    ("t.json", json.dumps(GOOD)),
    ("t.csv", "prompt,humor,harm\na,1.0,0.5\nb,2.0,0.1\n"),
  ]:
    (tmp_path / name).write_text(text)
    assert [r["prompt"] for r in read_table(str(tmp_path / name))] == ["a", "b"]
    R, names = load_pilot(str(tmp_path / name))
    assert names == ["humor", "harm"] and R.tolist() == [[1.0, 0.5], [2.0, 0.1]]
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    read_table(str(tmp_path / "nope.jsonl"))
  with pytest.raises(TableError, match="unknown table format"):
    read_table(str(tmp_path / "t.tsv"))


@pytest.mark.parametrize("name", ["torn.jsonl", "bool.jsonl"])
def test_a_launcher_prints_one_line_exits_1_and_writes_nothing(tmp_path, name):
  data = dict((c[0], c[1]) for c in CASES)[name]
  (tmp_path / name).write_bytes(data)
  out = tmp_path / "out.json"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.solve_palette",
      f"--rewards={tmp_path / name}",
      "--quantiles=0.5,0.5",
      f"--output={out}",
    ],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=ROOT,
  )
  assert proc.returncode == 1 and not out.exists()
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], proc.stderr


PROMPT_CASES = [
  ("empty.jsonl", b"", r"empty.jsonl: no non-empty prompt"),
  ("nocol.jsonl", b'{"text": "hi"}\n', r"nocol.jsonl: no column 'prompt' \(columns: text\)"),
  ("missing.jsonl", b'{"prompt": "hi"}\n{"text": "x"}\n', r"missing.jsonl: row 1 has no field 'prompt'"),
  ("number.jsonl", b'{"prompt": "hi"}\n{"prompt": 42}\n', r"number.jsonl: row 1, field 'prompt' is int 42"),
  ("torn.jsonl", b'{"prompt": "hi"}\n{"prompt": "ho', r"torn.jsonl: line 2 is not valid JSON"),
  ("latin1.csv", b"prompt\ncaf\xe9\n", r"latin1.csv: line 2 is not UTF-8 text"),
]


@pytest.mark.parametrize("name, data, pattern", PROMPT_CASES, ids=[c[0] for c in PROMPT_CASES])
def test_prompt_files_name_file_row_and_field(tmp_path, name, data, pattern):
  from map_jax.data.prompts import PromptFormatError, load_prompts

  path = tmp_path / name
  path.write_bytes(data)
  with pytest.raises(PromptFormatError, match=pattern) as err:
    load_prompts(str(path))
  assert "\n" not in str(err.value)


SCORE_CASES = [
  ("empty.jsonl", b"", r"empty.jsonl: no rows"),
  ("noresp.jsonl", b'{"prompt": "p", "text": "t"}\n', r"row 0 has no field 'response' \(fields: prompt, text\)"),
  ("number.jsonl", b'{"prompt": "p", "response": 3}\n', r"row 0, field 'response' is int"),
  ("latin1.jsonl", b'{"prompt": "p", "response": "caf\xe9"}\n', r"latin1.jsonl: line 1 is not UTF-8 text"),
  ("surrogate.jsonl", b'{"prompt": "p", "response": "x\\ud800"}\n', r"row 0, field 'response' is not valid Unicode"),
]


@pytest.mark.parametrize("name, data, pattern", SCORE_CASES, ids=[c[0] for c in SCORE_CASES])
def test_scoring_names_file_row_and_field_and_writes_nothing(tmp_path, name, data, pattern):
  from map_jax.rewards.scoring import score_table

  path = tmp_path / name
  path.write_bytes(data)
  with pytest.raises(ValueError, match=pattern) as err:
    score_table(str(path), str(tmp_path / "out.jsonl"), ["length"], progress=False)
  assert "\n" not in str(err.value) and not (tmp_path / "out.jsonl").exists()
