"""The report of a MAP-by-decoding run: tables a paper would print, a radar plot, histograms, samples.

`decoding_report(...)` builds it from the records and arrays of a run (`map_jax.pipeline` reads them from its
workdir and writes the files):

  report.json          every number below, machine-readable
  report.md            Table 1 of the paper (rows: original model, each palette; columns: values as
                       mean ± half-width of the 95% interval and as a quantile of the base model, plus λ,
                       feasibility, margin, ESS), the solver's promise against the realized levels, win
                       rates, the checks a run should bear out, certificates of infeasible palettes with
                       their adjustment, sample generations, and the wall time of each stage
  radar.png            values as quantiles of the base model's distribution, one polygon per palette
                       (the paper's Figure 6)
  hist_LABEL.png       per-value reward histograms of original and aligned responses (its Figure 3)
"""

from __future__ import annotations

import functools
import re
from typing import Callable, Sequence

import numpy as np
from tabulate import tabulate

from map_jax.eval import levels


def solution_record(rewards: np.ndarray, names: Sequence[str], palette: np.ndarray, sol) -> dict:
  """A JSON-ready record of one solved palette (what `solve_dual` returns, plus pilot context)."""
  from map_jax.core import frontier

  rewards = np.asarray(rewards)
  quantiles = np.asarray(frontier.quantile_levels(rewards, sol.realized))
  return {
    "values": list(names),
    "palette": np.asarray(palette).tolist(),
    "lambda": np.asarray(sol.lam).tolist(),
    "realized": np.asarray(sol.realized).tolist(),
    "realized_quantile": quantiles.tolist(),
    "pilot_mean": rewards.mean(axis=0).tolist(),
    "upper_bound": rewards.max(axis=0).tolist(),
    "feasible": bool(sol.feasible),
    "margin": float(sol.margin),
    "certificate": np.asarray(sol.certificate).tolist(),
    "ess": float(sol.ess),
    "kl": float(sol.kl),
    "kkt_residual": float(sol.kkt_residual),
    "converged": bool(sol.converged),
    "num_steps": int(sol.num_steps),
  }


def raised_values(record: dict) -> list[str]:
  """The values a solved palette asks above their pilot mean (c_i > μ_i), from a `solution_record`.

  A targeted value whose quantile lies below its mean gets c_i = μ_i (the rule c_i = max(μ_i, Q_i(q))):
  the palette keeps it at its mean, so the report checks that it holds, not that it rises.
  """
  c, mean = np.asarray(record["palette"]), np.asarray(record["pilot_mean"])
  above = c > mean + 1e-9 * (1.0 + np.abs(mean))  # μ_i itself, up to rounding, is "kept"
  return [v for v, a in zip(record["values"], above) if a]


def _slug(label: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_") or "palette"


def radar_figure(quantiles: dict[str, Sequence[float]], names: Sequence[str], path: str) -> None:
  """One polygon per row label over the value axes, radius = quantile of the base model (0.5 = median)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  m = len(names)
  angles = np.linspace(0, 2 * np.pi, m, endpoint=False).tolist()
  fig, ax = plt.subplots(figsize=(6, 6), subplot_kw={"projection": "polar"})
  for label, q in quantiles.items():
    vals = list(q) + [q[0]]
    style = dict(color="black", linestyle="--", linewidth=1.5) if label == "original" else {}
    ax.plot(angles + angles[:1], vals, label=label, **style)
    if label != "original":
      ax.fill(angles + angles[:1], vals, alpha=0.08)
  ax.set_xticks(angles)
  ax.set_xticklabels(names)
  ax.set_ylim(0, 1)
  ax.set_yticks([0.25, 0.5, 0.75])
  ax.set_title("Realized level as a quantile of the base model's rewards", pad=20)
  ax.legend(loc="upper right", bbox_to_anchor=(1.35, 1.1), fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def histogram_figure(original: np.ndarray, aligned: np.ndarray, names: Sequence[str], title: str, path: str) -> None:
  """Per value, the distribution of rewards of original and aligned responses, means marked."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  m = len(names)
  cols = min(m, 3)
  rows = -(-m // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
  for i, name in enumerate(names):
    ax = axes[i // cols][i % cols]
    both = np.concatenate([original[:, i], aligned[:, i]])
    bins = np.histogram_bin_edges(both, bins=20) if np.ptp(both) > 0 else 3
    ax.hist(original[:, i], bins=bins, alpha=0.5, label="original", color="tab:gray")
    ax.hist(aligned[:, i], bins=bins, alpha=0.5, label="aligned", color="tab:blue")
    ax.axvline(original[:, i].mean(), color="tab:gray", linestyle="--")
    ax.axvline(aligned[:, i].mean(), color="tab:blue", linestyle="--")
    ax.set_xlabel(f"{name} reward")
    ax.set_ylabel("responses")
  for j in range(m, rows * cols):
    axes[j // cols][j % cols].axis("off")
  axes[0][0].legend(fontsize=8)
  fig.suptitle(f"{title}: rewards of test responses (dashed: means)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# Below this effective sample size a palette's solution rests on too few pilot samples to trust. Its λ and
# promised levels are importance-sampling estimates whose spread over pilot sets grows like 1/√ESS (the theory
# notebook's bootstrap: at ESS 24 λ_humor varies many times more than at ESS 1,751), and under about 30
# effective samples the normal approximation behind every interval here (the rule of thumb for a sample
# mean) no longer holds.
LOW_ESS = 30


def low_ess_warning(record: dict) -> str | None:
  """A one-line warning when a solved palette's ESS is below `LOW_ESS`, else None."""
  if not record["feasible"] or record["ess"] >= LOW_ESS:
    return None
  of = f" of {record['n']}" if record.get("n") else ""
  return (
    f"ESS {record['ess']:.1f}{of} pilot samples is below {LOW_ESS}: this palette's λ and promised levels rest on "
    "too few samples to trust; lower the palette or grow the pilot set"
  )


def signed(x: float, digits: int = 3) -> str:
  """`x` with its sign, in fixed point, or in scientific notation when fixed point would round it to ±0
  (a margin of −0.0004 is infeasible, and must not print as −0.000)."""
  if x == 0:
    return "0"
  if abs(x) < 0.5 * 10.0**-digits:
    return f"{x:+.1e}"
  return f"{x:+.{digits}f}"


def _fmt(iv: dict) -> str:
  return f"{iv['mean']:.3f} ± {(iv['high'] - iv['low']) / 2:.3f}"


def _clip(text: str, n: int = 160) -> str:
  text = " ".join(text.split()).replace("|", "\\|")
  return text if len(text) <= n else text[: n - 1] + "…"


def decoding_report(
  *,
  palettes: dict,
  decoded: dict,
  test_prompts: Sequence[str],
  pilot: np.ndarray,
  candidates: np.ndarray,
  texts: Sequence[str],
  map_f: dict | None,
  model: str,
  prompts_source: str,
  confidence: float,
  num_samples: int,
  seed: int,
  timings: dict,
  num_pilot_samples: int,
) -> tuple[dict, dict[str, Callable[[str], None]]]:
  """The report of a MAP-D run from its records and arrays; nothing is read from disk.

  Args:
    palettes: the solved palettes (`{"values", "targeted", "kept", "n", "palettes": [solution_record + label,
      use, adjusted]}`), as the pipeline's solve stage writes them.
    decoded: `{"mode", "palettes": [{"label", "lambda", "index" [P], "candidate_ess" [P]}]}`, the decode stage's.
    test_prompts: the P test prompts.
    pilot: the pilot rewards [n, m], columns in `palettes["values"]` order.
    candidates: rewards [P, k + 1, m] of the test samples (sample 0 the original answer).
    texts: the P·(k + 1) test responses, prompt-major.
    map_f: None, or a fine-tuned run's answers: `{"run": its run.json record, "workdir": str,
      "rewards": [P, m], "texts": [P]}`.
    model, prompts_source: shown in the report.
    confidence: of the intervals; num_samples: sample generations shown; seed: of the k-candidate expectation.
    timings: the pipeline's stage timings; num_pilot_samples: n, for the cost per aligned response.

  Returns:
    (report, figures): the JSON-ready report, and {file name: draw(path)} for its PNG figures.
  """
  names, targeted, kept = palettes["values"], palettes["targeted"], palettes["kept"]
  R = np.asarray(candidates)
  P, k = R.shape[0], R.shape[1] - 1
  conf = float(confidence)
  original = R[:, 0]
  rows_p = np.arange(P)
  figures: dict[str, Callable[[str], None]] = {}

  o_mean, o_lo, o_hi = levels.mean_ci(original, conf)
  base = {
    "levels": {
      v: {"mean": float(o_mean[i]), "low": float(o_lo[i]), "high": float(o_hi[i])} for i, v in enumerate(names)
    },
    "quantile": levels.quantile_of(o_mean, pilot).tolist(),
  }
  out_palettes = []
  radar = {"original": base["quantile"]}
  for rec, d in zip(palettes["palettes"], decoded["palettes"]):
    used = rec["adjusted"] if rec["use"] == "adjusted" else rec
    index = np.asarray(d["index"])
    aligned = R[rows_p, index]
    cmp = levels.compare(original, aligned, pilot=pilot, predicted=used["realized"], names=names, confidence=conf)
    expect_k = levels.resampling_levels(pilot, used["lambda"], k, seed=int(seed))
    for v, x in zip(names, expect_k):
      a = cmp[v]["aligned"]
      cmp[v].update(expected_k=float(x), expected_k_in_interval=bool(a["low"] <= x <= a["high"]))
    raised = raised_values(used)
    chk = levels.checks(cmp, raised, [v for v in names if v not in raised])
    hist = f"hist_{_slug(rec['label'])}.png"
    figures[hist] = functools.partial(histogram_figure, original, aligned, names, rec["label"])
    radar[rec["label"]] = [cmp[v]["aligned_quantile"] for v in names]
    out_palettes.append(
      {
        **rec,
        "comparison": cmp,
        "checks": chk,
        "histogram": hist,
        "mean_candidate_ess": float(np.mean(d["candidate_ess"])),
        "samples": [
          {"prompt": test_prompts[p], "original": texts[p * (k + 1)], "aligned": texts[p * (k + 1) + int(index[p])]}
          for p in range(min(P, int(num_samples)))
        ],
      }
    )
  map_f_row = None
  if map_f is not None:
    map_f_row = _map_f_row(map_f, original, pilot, names, conf, test_prompts, texts[:: k + 1], num_samples)
    radar["MAP-F"] = [map_f_row["comparison"][v]["aligned_quantile"] for v in names]
    figures["hist_MAP_F.png"] = functools.partial(
      histogram_figure, original, np.asarray(map_f["rewards"]), names, "MAP-F"
    )
  figures["radar.png"] = functools.partial(radar_figure, radar, names)

  stage_seconds = {s: t.get("seconds") for s, t in timings.items() if s != "report"}
  cost = _decode_cost(timings, P, k, num_pilot_samples)
  report = {
    "model": model,
    "prompts": prompts_source,
    "values": names,
    "targeted": targeted,
    "kept": kept,
    "n_pilot": palettes["n"],
    "num_test_prompts": P,
    "num_candidates": k,
    "mode": decoded["mode"],
    "confidence": conf,
    "original": base,
    "palettes": out_palettes,
    "map_f": map_f_row,
    "stage_seconds": stage_seconds,
    "decode_cost": cost,
  }
  return report, figures


def checks_passed(report: dict) -> bool:
  """Whether every palette's raised values rose and its held values held (the report's checks)."""
  return all(
    all(c.values()) for p in report["palettes"] for c in (p["checks"]["raised_rise"], p["checks"]["held_hold"])
  )


def _map_f_row(map_f: dict, original, pilot, names, conf, prompts, originals, num_samples) -> dict:
  """The fine-tuned (MAP-F) model's answers to the test prompts against the original's.

  Its promise is the MAP solution it was trained toward (β = 1): E_{p_λ}[r] reweighted on this run's pilot set
  with the PPO run's λ, when every value it was trained on is among this run's values.
  """
  run, F, texts = map_f["run"], np.asarray(map_f["rewards"]), map_f["texts"]
  lam_run = dict(zip(run.get("values", []), run.get("lam", [])))
  predicted = None
  if lam_run and set(lam_run) <= set(names):
    import jax

    from map_jax.core.frontier import realized_levels

    with jax.enable_x64(True):
      predicted = np.asarray(realized_levels(pilot, np.array([lam_run.get(v, 0.0) for v in names])))
  cmp = levels.compare(original, F, pilot=pilot, predicted=predicted, names=names, confidence=conf)
  trained = [v for v, x in lam_run.items() if x > 0]
  return {
    "label": "MAP-F",
    "workdir": map_f["workdir"],
    "model": run["model"],
    "lambda": lam_run,
    "comparison": cmp,
    "checks": levels.checks(cmp, [v for v in trained if v in names], []),
    "histogram": "hist_MAP_F.png",
    "samples": [
      {"prompt": prompts[p], "original": originals[p], "aligned": texts[p]}
      for p in range(min(len(prompts), int(num_samples)))
    ],
  }


def _decode_cost(timings: dict, P: int, k: int, n_pilot: int) -> dict | None:
  """Wall time per aligned response (k + 1 samples and their scores) over that of one plain p0 sample."""
  try:
    plain = timings["generate_pilot"]["seconds"] / n_pilot
    aligned = (
      timings["generate_candidates"]["seconds"] + timings["score_candidates"]["seconds"] + timings["decode"]["seconds"]
    ) / P
  except (KeyError, TypeError, ZeroDivisionError):
    return None
  return {
    "seconds_per_plain_sample": plain,
    "seconds_per_aligned_response": aligned,
    "ratio": aligned / plain if plain > 0 else None,
    "samples_per_aligned_response": k + 1,
  }


def table_one(report: dict) -> str:
  """The paper's Table 1: original and each palette, values as mean ± half-interval (quantile)."""
  names = report["values"]
  head = (
    ["palette"] + [f"{v}{'*' if v in report['targeted'] else ''}" for v in names] + ["λ", "feasible", "margin", "ESS"]
  )
  rows = [
    ["original"]
    + [f"{_fmt(report['original']['levels'][v])} ({q:.2f})" for v, q in zip(names, report["original"]["quantile"])]
    + ["", "", "", ""]
  ]
  for p in report["palettes"]:
    used = p["adjusted"] if p["use"] == "adjusted" else p
    cells = [f"{_fmt(p['comparison'][v]['aligned'])} ({p['comparison'][v]['aligned_quantile']:.2f})" for v in names]
    lam = "(" + ", ".join(f"{x:.2f}" for x in used["lambda"]) + ")"
    feas = "yes" if p["feasible"] else f"no → {p['adjusted']['method']}" if "adjusted" in p else "no"
    ess = f"{used['ess']:.0f}" + (" ⚠" if low_ess_warning(used) else "")
    rows.append([p["label"]] + cells + [lam, feas, signed(p["margin"]), ess])
  f = report.get("map_f")
  if f:
    cells = [f"{_fmt(f['comparison'][v]['aligned'])} ({f['comparison'][v]['aligned_quantile']:.2f})" for v in names]
    lam = "(" + ", ".join(f"{f['lambda'].get(v, 0.0):.2f}" for v in names) + ")"
    rows.append(["MAP-F"] + cells + [lam, "", "", ""])
  return tabulate(rows, headers=head, tablefmt="github")


def markdown(report: dict) -> str:
  names, conf = report["values"], report["confidence"]
  pct = f"{100 * conf:.0f}%"
  lines = [
    f"# MAP by decoding: {report['model']} on {report['prompts']} prompts",
    "",
    f"Pilot set: n = {report['n_pilot']} samples from p0. Test set: {report['num_test_prompts']} prompts; "
    f"each aligned response is chosen from k = {report['num_candidates']} candidates "
    f"({'softmax(λᵀr) resampling' if report['mode'] == 'sample' else 'argmax of λᵀr'}); the original "
    "response is an independent sample from p0.",
    "",
    f"## Realized value levels (mean ± half-width of the {pct} interval; in brackets the quantile of "
    "the base model's pilot distribution; * = targeted)",
    "",
    table_one(report),
    "",
    "![radar](radar.png)",
    "",
  ]
  lines += [
    "## The solver's promise and what decoding delivered",
    "",
    "Predicted: E_{p_λ}[r] reweighted on the pilot set, what resampling reaches as k → ∞. k expects: "
    "the same with k candidates, E[Σ softmax(λᵀr)·r] over random draws of k pilot samples (k = 1 gives "
    "the base model's mean). Shift: paired mean difference aligned − "
    f"original with its {pct} interval. Win rate: share of prompts where the aligned response scores "
    "higher (ties ½).",
    "",
  ]
  for p in report["palettes"]:
    rows = []
    for v in names:
      c = p["comparison"][v]
      rows.append(
        [
          v,
          f"{c['predicted']:.3f}",
          f"{c['expected_k']:.3f}",
          _fmt(c["aligned"]),
          "yes" if c["predicted_in_interval"] else "no",
          "yes" if c["expected_k_in_interval"] else "no",
          f"{c['shift']['mean']:+.3f} [{c['shift']['low']:+.3f}, {c['shift']['high']:+.3f}]",
          f"{c['win_rate']:.2f}",
        ]
      )
    chk = p["checks"]
    verdict = lambda d: ", ".join(f"{v} {'✓' if ok else '✗'}" for v, ok in d.items()) or "none"  # noqa: E731
    lines += [
      f"### {p['label']}  (mean candidate ESS {p['mean_candidate_ess']:.1f} of {report['num_candidates']})",
      "",
      tabulate(
        rows,
        headers=[
          "value",
          "predicted",
          f"k={report['num_candidates']} expects",
          "realized",
          "in interval",
          "k in interval",
          "shift",
          "win rate",
        ],
        tablefmt="github",
      ),
      "",
      f"Raised values rise: {verdict(chk['raised_rise'])}. Values kept at their mean hold (within the "
      f"original's interval or above): {verdict(chk['held_hold'])}.",
      "",
      f"![histograms]({p['histogram']})",
      "",
    ]
    warning = low_ess_warning(p["adjusted"] if p["use"] == "adjusted" else p)
    if warning:
      lines += [f"**Warning:** {warning}.", ""]
    if not p["feasible"]:
      cert = " + ".join(f"{d:.3f}·{v}" for d, v in zip(p["certificate"], names) if d > 1e-6)
      lines += [
        f"**Infeasible** on the pilot set (margin {signed(p['margin'], 4)}): no pilot sample reaches "
        f"{cert} at this palette's level; that combination certifies it."
      ]
      if "adjusted" in p:
        a = p["adjusted"]
        lines += [
          "",
          f"Adjusted by {a['method']} (ρ = {a['rho']:.3f}) to "
          + ", ".join(f"{v} {c:.3f}" for v, c in zip(names, a["palette"]))
          + "; decoded with that.",
        ]
      lines += [""]
  f = report.get("map_f")
  if f:
    rows = [
      [
        v,
        "" if c["predicted"] is None else f"{c['predicted']:.3f}",
        _fmt(c["aligned"]),
        f"{c['shift']['mean']:+.3f} [{c['shift']['low']:+.3f}, {c['shift']['high']:+.3f}]",
        f"{c['win_rate']:.2f}",
      ]
      for v, c in f["comparison"].items()
    ]
    lines += [
      f"### MAP-F: the PPO fine-tuned model ({f['workdir']})",
      "",
      "One answer per test prompt from the fine-tuned policy; predicted = the MAP solution it was trained "
      "toward (β = 1), reweighted on this pilot set.",
      "",
      tabulate(rows, headers=["value", "predicted", "realized", "shift", "win rate"], tablefmt="github"),
      "",
      f"![histograms]({f['histogram']})",
      "",
    ]
  lines += ["## Sample generations", ""]
  for p in report["palettes"]:
    rows = [[_clip(s["prompt"], 80), _clip(s["original"]), _clip(s["aligned"])] for s in p["samples"]]
    lines += [f"### {p['label']}", "", tabulate(rows, headers=["prompt", "original", "aligned"], tablefmt="github"), ""]
  if f:
    rows = [[_clip(x["prompt"], 80), _clip(x["original"]), _clip(x["aligned"])] for x in f["samples"]]
    lines += ["### MAP-F", "", tabulate(rows, headers=["prompt", "original", "MAP-F"], tablefmt="github"), ""]
  lines += [
    "## Wall time per stage",
    "",
    tabulate(
      [[s, f"{t:.1f}" if t is not None else ""] for s, t in report["stage_seconds"].items()],
      headers=["stage", "seconds"],
      tablefmt="github",
    ),
    "",
  ]
  cost = report.get("decode_cost")
  if cost and cost.get("ratio"):
    lines += [
      f"An aligned response cost {cost['ratio']:.1f}× one plain sample from p0 "
      f"({cost['seconds_per_aligned_response']:.2f} s vs {cost['seconds_per_plain_sample']:.2f} s; it "
      f"draws {cost['samples_per_aligned_response']} samples and scores them). Times include model "
      "loading and compilation in each stage.",
      "",
    ]
  return "\n".join(lines)


__all__ = [
  "LOW_ESS",
  "checks_passed",
  "decoding_report",
  "histogram_figure",
  "low_ess_warning",
  "markdown",
  "radar_figure",
  "raised_values",
  "signed",
  "solution_record",
  "table_one",
]
