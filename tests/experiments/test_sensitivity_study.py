"""The sensitivity_study launcher end to end at a tiny size: files, CSV columns, summary."""

import csv
import json
import pathlib
import subprocess
import sys

import numpy as np

from tests.core.conftest import REFERENCE

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_launcher_writes_figures_csv_and_summary(tmp_path):
  # A subprocess: the launcher enables float64 globally, which test modules must not.
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.sensitivity_study",
      f"--rewards={REFERENCE}",
      f"--workdir={tmp_path}",
      "--num_palettes=60",
    ],
    capture_output=True,
    text=True,
    timeout=240,
    cwd=ROOT,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  for name in summary["figures"]:
    png = (tmp_path / name).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
  assert {"navigation.png", "trade_off.png", "hhh_path.png"} <= set(summary["figures"])
  assert sum(f.startswith("slice_") for f in summary["figures"]) == 3
  with open(tmp_path / "palettes.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == summary["num_palettes"] >= 60
  assert 0 < summary["feasible"] < len(rows)
  # Independent check of a few rows: λ reaches the palette (KKT) on the pilot set.
  values = summary["values"]
  rewards = np.array([[r[v] for v in values] for r in json.loads(REFERENCE.read_text())])
  for row in rows[:: max(1, len(rows) // 10)]:
    if row["feasible"] != "True":
      continue
    lam = np.array([float(row[f"lambda_{v}"]) for v in values])
    c = np.array([float(row[f"c_{v}"]) for v in values])
    z = rewards @ lam
    w = np.exp(z - z.max())
    realized = rewards.T @ (w / w.sum())
    assert np.all(realized >= c - 1e-6 * rewards.std(0))
    np.testing.assert_allclose(float(row["ess"]), 1 / np.sum((w / w.sum()) ** 2), rtol=1e-6)
  assert summary["navigation_efficiency"]["MAP"] == 1.0
