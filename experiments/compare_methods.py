r"""The method comparison: MAP-D/MAP-F against MORL-D/F, DPO(β) and DPO-Soup(β) (the paper's Table 3, Figure 7).

  python -m experiments.compare_methods --workdir=runs/compare                     # configs/compare_default.py
  python -m experiments.compare_methods --config=configs/compare_opt1.3b.py --workdir=runs/compare_opt

Every aligned model is a cached unit in the workdir: a killed comparison resumes where it stopped, and adding a
method, a palette or a β reuses everything else. See map_jax/compare.py for the methods and the layout, and
map_jax/eval/comparison.py for what the report holds (comparison.md, comparison.json, expected.png,
win_rate.png).
"""

import os

from absl import flags

from experiments import _launch


def main(argv):
  from map_jax import compare

  workdir = _launch.workdir_of(argv)
  report = compare.run(flags.FLAGS.config, workdir, on_unit=_launch.announce)
  for method, row in report["methods"].items():
    ne = [("–" if x is None else f"{100 * x:.0f}%") for x in (row["expected"], row["win_rate"])]
    print(f"{method:<16} {row['models']:3d} models   NE {ne[0]:>5} by expected reward, {ne[1]:>5} by win rate")
  print(f"report: {os.path.join(os.path.abspath(workdir), 'comparison.md')}")
  return 0


if __name__ == "__main__":
  _launch.define_flags(os.path.join(_launch.CONFIGS, "compare_default.py"))
  _launch.run(main)
