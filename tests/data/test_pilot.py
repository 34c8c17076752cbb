"""Reading pilot reward tables: formats agree, errors name file, row and value."""

import json

import numpy as np
import pytest

from map_jax.data.pilot import PilotFormatError, load_pilot

VALUES = ["humor", "harmless"]


@pytest.fixture
def table():
  rng = np.random.default_rng(0)
  return rng.normal(size=(7, 2))


def write_all(tmp_path, table):
  records = [{"prompt": f"p{j}", "humor": a, "harmless": b} for j, (a, b) in enumerate(table)]
  paths = {}
  paths["json"] = tmp_path / "r.json"
  paths["json"].write_text(json.dumps(records))
  paths["columns"] = tmp_path / "c.json"
  paths["columns"].write_text(json.dumps({"harmless": table[:, 1].tolist(), "humor": table[:, 0].tolist()}))
  paths["jsonl"] = tmp_path / "r.jsonl"
  paths["jsonl"].write_text("\n".join(json.dumps(r) for r in records) + "\n")
  paths["csv"] = tmp_path / "r.csv"
  paths["csv"].write_text(
    "prompt,humor,harmless\n" + "\n".join(f"p{j},{float(a)!r},{float(b)!r}" for j, (a, b) in enumerate(table))
  )
  paths["npy"] = tmp_path / "r.npy"
  np.save(paths["npy"], table)
  return paths


def test_formats_agree(tmp_path, table):
  for kind, path in write_all(tmp_path, table).items():
    rewards, names = load_pilot(str(path), VALUES)
    assert names == VALUES, kind
    np.testing.assert_array_equal(rewards, table, err_msg=kind)


def test_default_values_are_numeric_fields(tmp_path, table):
  paths = write_all(tmp_path, table)
  _, names = load_pilot(str(paths["json"]))
  assert names == VALUES  # "prompt" is text and is not a value
  _, names = load_pilot(str(paths["csv"]))
  assert names == VALUES


def test_errors_name_file_row_and_value(tmp_path, table):
  paths = write_all(tmp_path, table)
  with pytest.raises(PilotFormatError, match=r"r\.json: row 0 has no value 'coherence'"):
    load_pilot(str(paths["json"]), ["humor", "coherence"])
  records = json.loads(paths["json"].read_text())
  records[4]["harmless"] = "n/a"
  paths["json"].write_text(json.dumps(records))
  with pytest.raises(PilotFormatError, match=r"row 4, value 'harmless': 'n/a' is not a number"):
    load_pilot(str(paths["json"]), VALUES)
  bad = table.copy()
  bad[3, 1] = np.nan
  np.save(paths["npy"], bad)
  with pytest.raises(PilotFormatError, match=r"row 3, value 'harmless' is not finite"):
    load_pilot(str(paths["npy"]), VALUES)
  with pytest.raises(FileNotFoundError, match="missing.json"):
    load_pilot(str(tmp_path / "missing.json"))
  (tmp_path / "x.txt").write_text("1 2")
  with pytest.raises(PilotFormatError, match="unknown pilot table format"):
    load_pilot(str(tmp_path / "x.txt"))
