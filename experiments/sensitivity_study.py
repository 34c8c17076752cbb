r"""Batched λ-sensitivity study over many palettes: figures (PNG) and a CSV.

Solves ~``--num_palettes`` palettes on a pilot set in one vmapped call (2-D grid slices
of the feasibility region, the HHH-q% path, and a random cloud for the MAP vs MORL
navigation-efficiency comparison of the paper's Fig. 7 / Table 3) and writes

  slice_<i>_<j>.png   feasibility margin, λ, ESS and condition number over (c_i, c_j)
  hhh_path.png        λ, ESS and KL along the HHH-q% palettes
  trade_off.png       d realized / d c at HHH-60%
  navigation.png      realized levels of MAP palettes vs random MORL λ
  palettes.csv        one row per palette: c, feasible, margin, λ, realized, ESS, KL
  summary.json        counts, navigation efficiencies, timing

Example, on the MAP authors' pilot data (10,000 palettes):

  python -m experiments.sensitivity_study \
    --rewards=examples/map_reference/opt1.3b-Anthropic-harmless.json \
    --workdir=/tmp/sensitivity --num_palettes=10000
"""

import csv
import json
import os
import time

from absl import flags
import jax
import matplotlib

from experiments import _launch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from map_jax.data.pilot import load_pilot  # noqa: E402
from map_jax.eval import plots  # noqa: E402
from map_jax.eval import study as study_lib  # noqa: E402
from map_jax.store import write_json  # noqa: E402

VALUES = ("humor", "gpt2-helpful", "gpt2-harmless", "diversity", "coherence", "perplexity")

FLAGS = flags.FLAGS


def define_flags():
  """Define the launcher's flags (only when run as a program, so launchers can be imported together)."""
  flags.DEFINE_string(
    "rewards",
    os.path.join(os.path.dirname(__file__), "..", "examples", "map_reference", "opt1.3b-Anthropic-harmless.json"),
    "Pilot table (.json, .jsonl, .csv, .npy).",
  )
  flags.DEFINE_list("values", list(VALUES), "Value columns, in order.")
  flags.DEFINE_list("targeted", ["0", "1", "2"], "Indices of the values raised in the HHH path and the cloud.")
  flags.DEFINE_string("workdir", None, "Output directory.", required=True)
  flags.DEFINE_integer("num_palettes", 10_000, "Palettes solved (about).")
  flags.DEFINE_integer("batch_size", 256, "Palettes per vmapped solver call (0: all in one call).")
  flags.DEFINE_integer("seed", 0, "PRNG seed of the cloud and the MORL λ.")


def run(
  rewards_path: str,
  values,
  workdir: str,
  num_palettes: int,
  *,
  targeted=(0, 1, 2),
  batch_size: int | None = 256,
  seed: int = 0,
) -> dict:
  """Runs the study and writes its figures, CSV and summary into ``workdir``."""
  jax.config.update("jax_enable_x64", True)
  os.makedirs(workdir, exist_ok=True)
  rewards, names = load_pilot(rewards_path, values)
  targeted = tuple(int(t) for t in targeted)
  pairs = [(a, b) for k, a in enumerate(targeted) for b in targeted[k + 1 :]]
  start = time.perf_counter()
  res = study_lib.sensitivity_study(
    rewards, num_palettes, key=jax.random.key(seed), pairs=pairs, targeted=targeted, batch_size=batch_size
  )
  total = time.perf_counter() - start

  figures = {}
  for (i, j), (x, y, s) in res.slices.items():
    figures[f"slice_{names[i]}_{names[j]}"] = plots.slice_figure(s, x, y, i, j, names, rewards)
  figures["hhh_path"] = plots.path_figure(res.path_q, res.path, names, targeted)
  c, _, d_real = res.trade_off
  figures["trade_off"] = plots.trade_off_figure(d_real, names, "Trade-off matrix d realized / d c at HHH-60%")
  from map_jax.core import frontier

  map_q = frontier.quantile_levels(rewards, res.cloud.solution.realized[res.cloud_kept])
  morl_q = frontier.quantile_levels(rewards, frontier.realized_levels(rewards, res.morl_lam))
  base_q = frontier.quantile_levels(rewards, rewards.mean(axis=0))
  figures["navigation"] = plots.navigation_figure(map_q, morl_q, names, pairs, res.efficiency, base_q)
  for name, fig in figures.items():
    fig.savefig(os.path.join(workdir, f"{name}.png"), dpi=110)
    plt.close(fig)

  rows = study_lib.study_rows(res, names)
  with open(os.path.join(workdir, "palettes.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  summary = {
    "rewards": rewards_path,
    "n": int(rewards.shape[0]),
    "values": names,
    "num_palettes": res.num_palettes,
    "feasible": int(sum(r["feasible"] for r in rows)),
    "cloud_kept": int(res.cloud_kept.sum()),
    "navigation_efficiency": res.efficiency,
    "solve_seconds_incl_compile": res.seconds,
    "study_seconds": total,
    "figures": sorted(f"{k}.png" for k in figures),
  }
  write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def main(argv):
  del argv
  summary = run(
    FLAGS.rewards,
    FLAGS.values,
    FLAGS.workdir,
    FLAGS.num_palettes,
    targeted=FLAGS.targeted,
    batch_size=FLAGS.batch_size or None,
    seed=FLAGS.seed,
  )
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  define_flags()
  _launch.run(main)
