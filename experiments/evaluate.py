r"""Evaluate a MAP-D run: realized levels with intervals, win rates, quantiles, plots and samples.

  python -m experiments.evaluate --workdir=runs/default

Writes WORKDIR/report.md, report.json, radar.png and hist_*.png from the stage outputs (map_jax/eval/report.py),
running any stage that is missing first.
"""

import os

from experiments import _launch

if __name__ == "__main__":
  _launch.launch("report", lambda wd: f"report: {os.path.join(os.path.abspath(wd), 'report.md')}")
