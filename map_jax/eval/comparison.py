r"""The method comparison's numbers and figures (the paper's Table 3 and Figure 7), from test rewards alone.

Every aligned model answers the same P held-out test prompts once; the original model's answers are the
reference. For aligned model a and targeted value i:

* expected reward: the mean of a's rewards over the test prompts;
* win rate against the original: the share of prompts where a's answer scores higher, ties one half
  (`map_jax.eval.levels.win_rate`).

A model is in the *desirable regime* when it beats the original in every targeted value: expected reward above
the original's mean, or win rate above ½. A method's navigation efficiency (NE) is the share of its models in
that regime, by each measure. The original model's 95% band shows what chance alone moves: a Student-t interval
around its mean reward, and ½ ± t·√(¼/P) for the win rate of a model no different from it.

Everything is NumPy in float64 on host arrays; `comparison_report` returns the report and the figures to draw,
and writes nothing (`map_jax.compare` writes them).
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from scipy import stats

from map_jax.eval.levels import mean_ci, win_rate


def desirable(levels, reference) -> np.ndarray:
  """Rows of `levels` [N, m] above `reference` [m] in every column (strictly)."""
  levels, reference = np.asarray(levels, np.float64), np.asarray(reference, np.float64)
  if levels.ndim != 2 or levels.shape[1:] != reference.shape:
    raise ValueError(f"levels {levels.shape} must be [N, {reference.shape[0]}] to compare with {reference.shape}")
  return np.all(levels > reference, axis=1)


def model_point(original, aligned) -> dict:
  """{"expected": [m] mean rewards, "win_rate": [m] against the original} of one model's test rewards [P, m]."""
  original, aligned = np.asarray(original, np.float64), np.asarray(aligned, np.float64)
  if original.shape != aligned.shape or original.ndim != 2:
    raise ValueError(f"original {original.shape} and aligned {aligned.shape} must both be [P, m]")
  return {"expected": aligned.mean(0).tolist(), "win_rate": win_rate(aligned, original).tolist()}


def original_band(original, confidence: float = 0.95) -> dict:
  """The original model's chance band: its mean reward's interval, and the win rate band of an equal model."""
  original = np.asarray(original, np.float64)
  P = original.shape[0]
  mean, low, high = mean_ci(original, confidence)
  half = stats.t.ppf(0.5 + confidence / 2, max(P - 1, 1)) * np.sqrt(0.25 / P)
  return {
    "expected": {"mean": mean.tolist(), "low": low.tolist(), "high": high.tolist()},
    "win_rate": {"mean": [0.5] * len(mean), "low": [0.5 - half] * len(mean), "high": [0.5 + half] * len(mean)},
  }


def navigation_efficiency(points: Sequence[dict], original_mean) -> dict:
  """NE of a method's models: {"expected": share above the original's mean in every value, "win_rate": share
  winning more than half the prompts in every value, "models": N}."""
  if not points:
    return {"expected": None, "win_rate": None, "models": 0}
  expected = np.array([p["expected"] for p in points])
  wins = np.array([p["win_rate"] for p in points])
  half = np.full(wins.shape[1], 0.5)
  return {
    "expected": float(desirable(expected, original_mean).mean()),
    "win_rate": float(desirable(wins, half).mean()),
    "models": len(points),
  }


def comparison_report(
  original,
  models: Sequence[dict],
  *,
  names: Sequence[str],
  targeted: Sequence[str],
  costs: dict,
  confidence: float = 0.95,
  setup: dict | None = None,
) -> tuple[dict, dict]:
  """The comparison report and its figures.

  Args:
    original: [P, m] the original model's test rewards.
    models: one dict per aligned model: {"name", "method", "rewards": [P, m], ...} (other keys are kept).
    names: the m value names; targeted: those the regime and NE look at (the first two are plotted).
    costs: {method: {"seconds", "samples", "training_tokens", ...}}.
    confidence: of the original's band.
    setup: facts shown at the top of the report (model, sizes).

  Returns:
    (report, {file name: draw(path)}).
  """
  original = np.asarray(original, np.float64)
  cols = [list(names).index(v) for v in targeted]
  band = original_band(original[:, cols], confidence)
  rows, methods = [], {}
  for model in models:
    point = model_point(original[:, cols], np.asarray(model["rewards"], np.float64)[:, cols])
    row = {k: v for k, v in model.items() if k != "rewards"}
    row.update(point)
    rows.append(row)
    methods.setdefault(model["method"], []).append(point)
  table = {
    method: {
      **navigation_efficiency(points, band["expected"]["mean"]),
      "mean_expected": np.mean([p["expected"] for p in points], 0).tolist(),
      "mean_win_rate": np.mean([p["win_rate"] for p in points], 0).tolist(),
      "cost": costs.get(method, {}),
    }
    for method, points in methods.items()
  }
  report = {
    "setup": setup or {},
    "values": list(names),
    "targeted": list(targeted),
    "num_test_prompts": int(original.shape[0]),
    "original": band,
    "methods": table,
    "models": rows,
  }
  figures = {}
  if len(cols) >= 2:
    for measure in ("expected", "win_rate"):
      figures[f"{measure}.png"] = functools.partial(scatter_figure, report, measure)
  return report, figures


PAPER_NE = {  # the MAP paper's Table 3 (OPT-1.3B, HH helpful and harmless), in percent: (expected reward, win rate)
  "MAP-D": (55, 60),
  "MAP-F": (52, 70),
  "MORL-D": (21, 21),
  "MORL-F": (35, 55),
  "DPO(0.1)": (27, 36),
  "DPO(0.5)": (9, 9),
  "DPO-Soup(0.1)": (45, 45),
  "DPO-Soup(0.5)": (36, 45),
}


def _percent(x) -> str:
  return "–" if x is None else f"{100 * x:.0f}%"


def markdown(report: dict) -> str:
  """The report as markdown: setup, the NE table (Table 3's form, the paper's numbers beside), the costs."""
  t = report["targeted"]
  lines = ["# Method comparison", ""]
  for k, v in report["setup"].items():
    lines.append(f"- {k}: {v}")
  lines += [
    f"- test prompts: {report['num_test_prompts']}; targeted values: {', '.join(t)}",
    "",
    "A model is in the desirable regime when it beats the original model in every targeted value "
    "(expected reward above the original's mean; win rate above 50%). NE: the share of a method's models there.",
    "",
    "| method | models | NE (expected reward) | NE (win rate) | paper NE (reward / win rate) | "
    + " | ".join(f"mean {v}" for v in t)
    + " | "
    + " | ".join(f"win rate {v}" for v in t)
    + " |",
    "|---|---|---|---|---|" + "---|" * (2 * len(t)),
  ]
  o = report["original"]["expected"]
  lines.append(
    "| original | 1 | – | – | – | "
    + " | ".join(f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in zip(o["mean"], o["low"], o["high"]))
    + " | "
    + " | ".join("50%" for _ in t)
    + " |"
  )
  for method, row in report["methods"].items():
    paper = PAPER_NE.get(method)
    lines.append(
      f"| {method} | {row['models']} | {_percent(row['expected'])} | {_percent(row['win_rate'])} | "
      + (f"{paper[0]}% / {paper[1]}%" if paper else "–")
      + " | "
      + " | ".join(f"{x:.3f}" for x in row["mean_expected"])
      + " | "
      + " | ".join(f"{100 * x:.0f}%" for x in row["mean_win_rate"])
      + " |"
    )
  lines += [
    "",
    "## Cost",
    "",
    "| method | wall time (s) | generated samples | training tokens | notes |",
    "|---|---|---|---|---|",
  ]
  for method, row in report["methods"].items():
    c = row["cost"]
    lines.append(
      f"| {method} | {c.get('seconds', 0.0):.0f} | {c.get('samples', 0)} | {c.get('training_tokens', 0)} | "
      f"{c.get('notes', '')} |"
    )
  lines += ["", "## Models", "", "| model | method | " + " | ".join(f"mean {v}" for v in t) + " | "]
  lines[-1] += " | ".join(f"win rate {v}" for v in t) + " |"
  lines.append("|---|---|" + "---|" * (2 * len(t)))
  for row in report["models"]:
    lines.append(
      f"| {row['name']} | {row['method']} | "
      + " | ".join(f"{x:.3f}" for x in row["expected"])
      + " | "
      + " | ".join(f"{100 * x:.0f}%" for x in row["win_rate"])
      + " |"
    )
  return "\n".join(lines) + "\n"


def scatter_figure(report: dict, measure: str, path: str) -> None:
  """Figure 7: one small marker per aligned model, a large one per method mean, the original's 95% band."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  t = report["targeted"]
  fig, ax = plt.subplots(figsize=(6, 5), constrained_layout=True)
  band = report["original"][measure]
  ax.axvspan(band["low"][0], band["high"][0], color="0.6", alpha=0.18, lw=0, zorder=0)
  ax.axhspan(band["low"][1], band["high"][1], color="0.6", alpha=0.18, lw=0, zorder=0, label="original model, 95% band")
  ax.axvline(band["mean"][0], color="0.4", ls=":", lw=1, zorder=0)
  ax.axhline(band["mean"][1], color="0.4", ls=":", lw=1, zorder=0)
  ax.plot([band["mean"][0]], [band["mean"][1]], "k*", ms=14, label="original model")
  markers = "osD^vP<>Xh"
  for i, method in enumerate(report["methods"]):
    pts = np.array([r[measure][:2] for r in report["models"] if r["method"] == method])
    ax.scatter(pts[:, 0], pts[:, 1], s=14, alpha=0.6, color=f"C{i}", marker=markers[i % len(markers)])
    mean = pts.mean(0)
    ax.scatter([mean[0]], [mean[1]], s=160, color=f"C{i}", marker=markers[i % len(markers)], edgecolor="k")
    ax.scatter([], [], s=60, color=f"C{i}", marker=markers[i % len(markers)], label=method)
  what = "expected reward" if measure == "expected" else "win rate against the original"
  ax.set_xlabel(f"{t[0]}: {what}")
  ax.set_ylabel(f"{t[1]}: {what}")
  ax.set_title(f"Aligned models by {what} (large: method mean)")
  ax.legend(fontsize=8, loc="best")
  fig.savefig(path, dpi=120)
  plt.close(fig)


__all__ = [
  "PAPER_NE",
  "comparison_report",
  "desirable",
  "markdown",
  "model_point",
  "navigation_efficiency",
  "original_band",
  "scatter_figure",
]
