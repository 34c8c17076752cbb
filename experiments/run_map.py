r"""The whole MAP-by-decoding run: pilot samples, scores, λ per palette, MAP-D on test prompts, the report.

  python -m experiments.run_map --workdir=runs/default                      # configs/default.py
  python -m experiments.run_map --config=configs/paper_opt1.3b.py --workdir=runs/opt

Every stage is cached in the workdir and skipped on rerun (a changed config field reruns only the stages
that read it); generation and scoring resume after a kill. See map_jax/pipeline.py for the stages and
map_jax/eval/report.py for what the report holds.
"""

import os

from experiments import _launch


def main():
  _launch.launch("report", lambda wd: f"report: {os.path.join(os.path.abspath(wd), 'report.md')}")


if __name__ == "__main__":
  main()
