"""The solve_palette launcher end to end on the reference data and on bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from experiments import solve_palette
from tests.core.conftest import REFERENCE, VALUES, hhh_palette


@pytest.fixture(scope="module")
def reference_path():
  return str(REFERENCE)


def test_hhh70_record(reference_path):
  record = solve_palette.run(reference_path, list(VALUES), list(VALUES[3:]), quantiles=["0.7"] * 3)
  rewards = np.array([[row[v] for v in VALUES] for row in json.loads(REFERENCE.read_text())])
  np.testing.assert_allclose(record["palette"], hhh_palette(rewards, 0.7), rtol=1e-12)
  assert record["feasible"] and record["converged"]
  assert all(x == 0.0 for x in record["lambda"][3:])
  np.testing.assert_allclose(record["realized"][:3], record["palette"][:3], rtol=1e-9)
  for key in ("palette", "lambda", "realized", "feasible", "margin", "ess"):
    assert key in record


def test_cli_writes_json_and_adjusts(reference_path, tmp_path):
  out = tmp_path / "out.json"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.solve_palette",
      f"--rewards={reference_path}",
      f"--values={','.join(VALUES)}",
      "--quantiles=0.9,0.9,0.9",
      f"--keep={','.join(VALUES[3:])}",
      "--adjust=interpolate",
      f"--output={out}",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  assert "INFEASIBLE" in proc.stdout and "certificate" in proc.stdout
  record = json.loads(out.read_text())
  assert not record["feasible"]
  adjusted = record["adjusted"]
  assert adjusted["feasible"] and 0 < adjusted["rho"] < 1
  c, c0 = np.array(record["palette"]), np.array(record["pilot_mean"])
  np.testing.assert_allclose(adjusted["palette"], c0 + adjusted["rho"] * (c - c0), rtol=1e-8)


def test_bad_input_messages(reference_path, tmp_path):
  with pytest.raises(ValueError, match="--quantiles has 2 entries but 3 values are targeted"):
    solve_palette.run(reference_path, list(VALUES), list(VALUES[3:]), quantiles=["0.7"] * 2)
  with pytest.raises(ValueError, match="--keep names unknown value 'wit'"):
    solve_palette.run(reference_path, list(VALUES), ["wit"], quantiles=["0.7"] * 6)
  with pytest.raises(ValueError, match="no value 'wit'"):
    solve_palette.run(reference_path, ["wit"], [], quantiles=["0.7"])
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.solve_palette", f"--rewards={tmp_path / 'none.csv'}", "--quantiles=0.5"],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 1 and "pilot table not found" in proc.stderr


def test_launcher_errors_are_one_line_naming_the_flag(reference_path, tmp_path):
  def cli(*args, env=None):
    return subprocess.run(
      [
        sys.executable,
        "-m",
        "experiments.solve_palette",
        f"--rewards={reference_path}",
        f"--values={','.join(VALUES)}",
        f"--keep={','.join(VALUES[3:])}",
        *args,
      ],
      capture_output=True,
      text=True,
      timeout=300,
      env=env,
    )

  proc = cli("--quantiles=abc,0.7,0.7")
  assert proc.returncode == 1
  assert proc.stderr.strip() == "error: --quantiles: 'abc' (for 'humor') is not a number."
  out = tmp_path / "missing_dir" / "out.json"
  proc = cli("--quantiles=0.7,0.7,0.7", f"--output={out}")
  assert proc.returncode == 1 and not out.exists()
  assert proc.stderr.strip() == f"error: --output={out}: {out.parent} is not a writable directory."
  import os

  proc = cli("--quantiles=abc,0.7,0.7", env={**os.environ, "MAP_JAX_TRACEBACK": "1"})
  assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr


def test_cli_warns_when_a_palette_rests_on_few_samples(reference_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.solve_palette",
      f"--rewards={reference_path}",
      f"--values={','.join(VALUES)}",
      "--quantiles=0.85,0.85,0.85",
      f"--keep={','.join(VALUES[3:])}",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  assert "warning: ESS" in proc.stdout and "is below 30" in proc.stdout
