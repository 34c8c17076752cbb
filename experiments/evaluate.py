r"""Evaluate a MAP-D run: realized levels with intervals, win rates, quantiles, plots and samples.

  python -m experiments.evaluate --workdir=runs/default

The same program as experiments.run_map (the report is its last stage, rebuilt on every run, and any stage
that is missing runs first): writes WORKDIR/report.md, report.json, radar.png and hist_*.png
(map_jax/eval/report.py).
"""

from experiments import run_map

if __name__ == "__main__":
  run_map.main()
