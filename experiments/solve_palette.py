r"""Solves MAP for a value palette on a pilot reward table and prints a table.

Example, on the MAP authors' pilot data (HHH-70%: humor, helpfulness and harmlessness
at their 70% quantile, the other values kept at their mean):

  python -m experiments.solve_palette \
    --rewards=examples/map_reference/opt1.3b-Anthropic-harmless.json \
    --values=humor,gpt2-helpful,gpt2-harmless,diversity,coherence,perplexity \
    --quantiles=0.7,0.7,0.7 --keep=diversity,coherence,perplexity \
    --output=/tmp/hhh70.json

``--quantiles`` lists one quantile per value that is not kept, in ``--values`` order;
``--kappa`` instead gives classifier palettes c_i = mean_i + log(1 + κ_i), and
``--palette`` explicit levels. An infeasible palette is reported with its
certificate and, with ``--adjust=interpolate|greedy``, also solved after adjustment.
Runs in about a second, most of it compilation.
"""

import os

from absl import app, flags
import jax
import numpy as np
from tabulate import tabulate

from experiments import _launch
from map_jax.core.dual import solve_dual
from map_jax.core.palette import adjust_palette, classifier_palette, quantile_palette
from map_jax.data.pilot import load_pilot
from map_jax.eval.report import low_ess_warning, signed
from map_jax.eval.report import solution_record as summarize
from map_jax.store import write_json

FLAGS = flags.FLAGS


def define_flags():
  """Define the launcher's flags (only when run as a program, so launchers can be imported together)."""
  flags.DEFINE_string("rewards", None, "Pilot table: .json, .jsonl, .csv or .npy.")
  flags.DEFINE_list("values", None, "Value columns to use, in order (default: all).")
  flags.DEFINE_list("quantiles", None, "One quantile in [0, 1] per value not in --keep (c = max(mean, q)).")
  flags.DEFINE_list("kappa", None, "One κ per value not in --keep: c = mean + log(1 + κ) (log-prob rewards).")
  flags.DEFINE_list("palette", None, "Explicit levels, one per value not in --keep.")
  flags.DEFINE_list("keep", [], "Values kept at their pilot mean.")
  flags.DEFINE_enum("adjust", None, ["interpolate", "greedy"], "How to adjust an infeasible palette.")
  flags.DEFINE_list("priority", None, "Value order for --adjust=greedy.")
  flags.DEFINE_string("output", None, "Write the result as JSON here.")
  flags.DEFINE_bool("float64", True, "Solve in float64.")


def build_palette(
  rewards: np.ndarray, names: list[str], keep: list[str], *, quantiles=None, kappa=None, levels=None
) -> np.ndarray:
  """The palette given per targeted value (those not in ``keep``), in ``names`` order."""
  unknown = [k for k in keep if k not in names]
  if unknown:
    raise ValueError(f"--keep names unknown value {unknown[0]!r}; values are {', '.join(names)}.")
  targeted = [v for v in names if v not in keep]
  given = [
    (flag, spec) for flag, spec in (("quantiles", quantiles), ("kappa", kappa), ("palette", levels)) if spec is not None
  ]
  if len(given) != 1:
    raise ValueError(
      f"give exactly one of --quantiles, --kappa or --palette (got {', '.join(f for f, _ in given) or 'none'})."
    )
  flag, spec = given[0]
  if len(spec) != len(targeted):
    raise ValueError(
      f"--{flag} has {len(spec)} entries but {len(targeted)} values are "
      f"targeted ({', '.join(targeted)}; the others are in --keep)."
    )
  per_value = {}
  for v, x in zip(targeted, spec):
    try:
      per_value[v] = float(x)
    except (TypeError, ValueError):
      raise ValueError(f"--{flag}: {x!r} (for {v!r}) is not a number.") from None
    if not np.isfinite(per_value[v]):
      raise ValueError(f"--{flag}: {x!r} (for {v!r}) is not finite.")
  full = [per_value.get(v) for v in names]
  if flag == "quantiles":
    return np.asarray(quantile_palette(rewards, full))
  if flag == "kappa":
    return np.asarray(classifier_palette(rewards, full))
  means = rewards.mean(axis=0)
  return np.array([means[i] if x is None else x for i, x in enumerate(full)])


def format_table(record: dict) -> str:
  rows = [
    [name, c, lam, real, q, mean, ub]
    for name, c, lam, real, q, mean, ub in zip(
      record["values"],
      record["palette"],
      record["lambda"],
      record["realized"],
      record["realized_quantile"],
      record["pilot_mean"],
      record["upper_bound"],
    )
  ]
  table = tabulate(
    rows, headers=["value", "palette c", "λ", "realized", "quantile", "pilot mean", "upper bound"], floatfmt=".4f"
  )
  verdict = "feasible" if record["feasible"] else "INFEASIBLE"
  summary = (
    f"{verdict}: margin {signed(record['margin'], 4)}, ESS {record['ess']:.1f} of "
    f"{record['n']}, KL(p_λ||p0) {record['kl']:.4f}, KKT residual "
    f"{record['kkt_residual']:.1e} after {record['num_steps']} Newton steps"
  )
  if not record["feasible"]:
    cert = " + ".join(f"{d:.3f}·{v}" for d, v in zip(record["certificate"], record["values"]) if d > 1e-6)
    summary += f"\ncertificate: no pilot sample has {cert} above this palette's"
  warning = low_ess_warning(record)
  if warning:
    summary += f"\nwarning: {warning}"
  return f"{table}\n{summary}"


def run(
  argv_rewards, values, keep, *, quantiles=None, kappa=None, levels=None, adjust=None, priority=None, float64=True
) -> dict:
  """Reads the table, solves the palette (and its adjustment) and returns the record."""
  rewards, names = load_pilot(argv_rewards, values)
  with jax.enable_x64(float64):
    palette = build_palette(rewards, names, keep, quantiles=quantiles, kappa=kappa, levels=levels)
    sol = solve_dual(rewards, palette)
    record = summarize(rewards, names, palette, sol)
    record["n"] = int(rewards.shape[0])
    record["rewards_file"] = argv_rewards
    if adjust is not None and not record["feasible"]:
      order = None
      if priority is not None:
        missing = [p for p in priority if p not in names]
        if missing:
          raise ValueError(f"--priority names unknown value {missing[0]!r}.")
        order = [names.index(p) for p in priority]
      adj = adjust_palette(rewards, palette, method=adjust, priority=order)
      adjusted = summarize(rewards, names, np.asarray(adj.palette), solve_dual(rewards, adj.palette))
      adjusted.update(n=record["n"], method=adjust, rho=float(adj.rho))
      record["adjusted"] = adjusted
  return record


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.rewards is None:
    raise app.UsageError("--rewards is required.")
  out_dir = os.path.dirname(os.path.abspath(FLAGS.output)) if FLAGS.output else None
  if out_dir and not (os.path.isdir(out_dir) and os.access(out_dir, os.W_OK)):
    raise ValueError(f"--output={FLAGS.output}: {out_dir} is not a writable directory.")
  record = run(
    FLAGS.rewards,
    FLAGS.values,
    FLAGS.keep,
    quantiles=FLAGS.quantiles,
    kappa=FLAGS.kappa,
    levels=FLAGS.palette,
    adjust=FLAGS.adjust,
    priority=FLAGS.priority,
    float64=FLAGS.float64,
  )
  print(format_table(record))
  if "adjusted" in record:
    adj = record["adjusted"]
    print(f"\nadjusted ({adj['method']}, ρ = {adj['rho']:.4f}):")
    print(format_table(adj))
  if FLAGS.output:
    write_json(FLAGS.output, record)
    print(f"\nwrote {FLAGS.output}")
  return 0


if __name__ == "__main__":
  define_flags()
  _launch.run(main)
