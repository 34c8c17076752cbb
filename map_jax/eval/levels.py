r"""Realized value levels of generated responses: means with confidence intervals, win rates, quantiles.

MAP promises levels: on the pilot set, the reweighted mean E_{p_λ}[r] meets the palette. Whether an aligned
generator keeps that promise is measured on fresh test prompts, response by response:

* realized level of value i: the mean reward over test prompts, with a Student-t interval;
* the shift over the original model: the paired mean difference (the same prompts answered by both), with
  its own interval, which is much tighter than comparing two unpaired intervals;
* win rate of aligned over original on value i: the share of prompts where the aligned response scores
  higher, ties counting one half;
* levels as quantiles of the base model's pilot distribution (the paper's radar plots): 0.5 is "as good as
  the median base-model sample".

Everything here is NumPy/SciPy in float64 on host arrays [P, m] (P prompts, m values); nothing is jitted,
the arrays are a few thousand numbers.

    >>> cmp = compare(original, aligned, pilot=R_pilot, predicted=sol.realized, names=values)
    >>> cmp["humor"]["aligned"]           # {"mean": ..., "low": ..., "high": ...}
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from scipy import stats

from map_jax.core import frontier


def mean_ci(x, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Column means of x [P, m] (or [P]) with a two-sided Student-t interval.

  .. math:: \\bar x \\pm t_{P-1, (1+γ)/2} \\, s / \\sqrt{P}

  Returns:
    (mean, low, high), each of shape x.shape[1:]. With a single row the interval is (-inf, inf): one
    response says nothing about the spread.
  """
  x = np.asarray(x, np.float64)
  if x.ndim not in (1, 2) or x.shape[0] == 0:
    raise ValueError(f"mean_ci needs a non-empty [P] or [P, m] array, got shape {x.shape}")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  P = x.shape[0]
  mean = x.mean(axis=0)
  if P < 2:
    return mean, np.full_like(mean, -np.inf), np.full_like(mean, np.inf)
  half = stats.t.ppf(0.5 + confidence / 2, P - 1) * x.std(axis=0, ddof=1) / np.sqrt(P)
  return mean, mean - half, mean + half


def win_rate(a, b) -> np.ndarray:
  """Share of rows where a beats b, per column, ties counting one half: mean of 1[a > b] + ½·1[a = b]."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"win_rate compares arrays of one shape, got {a.shape} and {b.shape}")
  return ((a > b) + 0.5 * (a == b)).mean(axis=0)


def quantile_of(levels, reference) -> np.ndarray:
  """Each level as a quantile of its column of `reference` [n, m], in float64: the mid-rank empirical CDF of
  :func:`map_jax.core.frontier.quantile_levels`, (#{j: R_ji < ℓ} + ½ #{j: R_ji = ℓ}) / n."""
  with jax.enable_x64(True):
    return np.asarray(frontier.quantile_levels(np.asarray(reference, np.float64), np.asarray(levels, np.float64)))


def resampling_levels(pilot, lam, k: int, *, num_draws: int = 4096, seed: int = 0) -> np.ndarray:
  """Expected levels of MAP-D with k candidates, estimated on the pilot set: E[Σ_i softmax(λᵀr)_i r_i].

  The solver's promise E_{p_λ}[r] is what resampling reaches as k → ∞; with k candidates the
  self-normalized weights are biased toward p0 (k = 1 returns the pilot mean). Drawing k pilot rows at a
  time (with replacement, `num_draws` times, seeded) and averaging the softmax-weighted rewards gives the
  level to expect from k candidates. Candidates for one prompt resemble each other more than pilot rows of
  different prompts do, so decoding may fall a little short of even this.
  """
  pilot = np.asarray(pilot, np.float64)
  lam = np.asarray(lam, np.float64)
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  rows = np.random.default_rng(seed).integers(0, pilot.shape[0], size=(num_draws, k))
  R = pilot[rows]  # [draws, k, m]
  logits = R @ lam
  w = np.exp(logits - logits.max(axis=1, keepdims=True))
  w /= w.sum(axis=1, keepdims=True)
  return np.einsum("dk,dkm->m", w, R) / num_draws


def _interval(mean, low, high) -> dict:
  return {"mean": float(mean), "low": float(low), "high": float(high)}


def compare(original, aligned, *, pilot, predicted, names: Sequence[str], confidence: float = 0.95) -> dict:
  """Per value: original and aligned levels, their paired difference, win rate, quantiles, the promise.

  Args:
    original: [P, m] rewards of the base model's responses to the test prompts.
    aligned: [P, m] rewards of the aligned responses to the same prompts, row for row.
    pilot: [n, m] the pilot rewards (the base model's distribution, for quantiles).
    predicted: [m] what the solver promised: E_{p_λ}[r] reweighted on the pilot set; None when there is no
      promise to check (the prediction fields are then None).
    names: the m value names.
    confidence: level of every interval.

  Returns:
    {name: {"original": interval, "aligned": interval, "shift": interval of the paired difference,
    "win_rate": float, "original_quantile", "aligned_quantile", "predicted", "predicted_quantile",
    "predicted_in_interval": bool}} with interval = {"mean", "low", "high"}.
  """
  original = np.asarray(original, np.float64)
  aligned = np.asarray(aligned, np.float64)
  m = len(names)
  if original.shape != aligned.shape or original.ndim != 2 or original.shape[1] != m:
    raise ValueError(f"original {original.shape} and aligned {aligned.shape} must both be [P, {m}]")
  has_prediction = predicted is not None
  predicted = np.asarray(predicted if has_prediction else np.full(m, np.nan), np.float64)
  o, a, d = mean_ci(original, confidence), mean_ci(aligned, confidence), mean_ci(aligned - original, confidence)
  wins = win_rate(aligned, original)
  q_o, q_a = (quantile_of(x, pilot) for x in (o[0], a[0]))
  q_p = quantile_of(predicted, pilot) if has_prediction else predicted
  out = {}
  for i, name in enumerate(names):
    out[name] = {
      "original": _interval(o[0][i], o[1][i], o[2][i]),
      "aligned": _interval(a[0][i], a[1][i], a[2][i]),
      "shift": _interval(d[0][i], d[1][i], d[2][i]),
      "win_rate": float(wins[i]),
      "original_quantile": float(q_o[i]),
      "aligned_quantile": float(q_a[i]),
      "predicted": float(predicted[i]) if has_prediction else None,
      "predicted_quantile": float(q_p[i]) if has_prediction else None,
      "predicted_in_interval": bool(a[1][i] <= predicted[i] <= a[2][i]) if has_prediction else None,
    }
  return out


def checks(comparison: dict, raised: Sequence[str], held: Sequence[str]) -> dict:
  """The claims a MAP-D run should bear out, each a bool per value.

  * raised values rise: the aligned mean is above the original mean (the values the palette asks above
    their mean);
  * held values hold: the aligned mean lies within the original's interval or above it (the values the
    palette keeps at their mean, e.g. coherence, or humor in a positiveness-only palette);
  * the promise holds: the solver's pilot prediction lies within the aligned level's interval.
  """
  return {
    "raised_rise": {v: comparison[v]["aligned"]["mean"] > comparison[v]["original"]["mean"] for v in raised},
    "held_hold": {v: comparison[v]["aligned"]["mean"] >= comparison[v]["original"]["low"] for v in held},
    "prediction_within_interval": {v: comparison[v]["predicted_in_interval"] for v in comparison},
  }


__all__ = ["checks", "compare", "mean_ci", "quantile_of", "resampling_levels", "win_rate"]
