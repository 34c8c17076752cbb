"""Tests for map_jax.core.palette against NumPy quantiles and scipy's linprog."""

import math

import jax
import numpy as np
import pytest
from scipy import optimize
from scipy.optimize import linprog

from map_jax.core import palette as pal

# Compiled once per (shape, method): an eager call would retrace the LP's while loops.
adjust = jax.jit(pal.adjust_palette, static_argnames=("method", "priority"))


def hhh(q):
  return [q, q, q, None, None, None]


def skewed(seed=0, n=500, m=4):
  """Log-normal columns: median below mean, so the mean floor matters."""
  rng = np.random.default_rng(seed)
  return np.exp(rng.normal(size=(n, m)) * rng.uniform(0.5, 1.5, size=m))


# ---- independent references -------------------------------------------------------


def lp_margin(R, c):
  """max_{q in simplex} min_i (R^T q - c)_i by linprog (HiGHS)."""
  n, m = R.shape
  # Variables (q, t): maximise t s.t. t - (R^T q)_i <= -c_i, sum q = 1, q >= 0.
  obj = np.zeros(n + 1)
  obj[-1] = -1.0
  a_ub = np.hstack([-R.T, np.ones((m, 1))])
  a_eq = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
  res = linprog(
    obj, A_ub=a_ub, b_ub=-np.asarray(c), A_eq=a_eq, b_eq=[1.0], bounds=[(0, None)] * n + [(None, None)], method="highs"
  )
  assert res.status == 0
  return -res.fun


def lp_max_rho(R, c0, c):
  """Largest rho in [0, 1] with c0 + rho (c - c0) reachable, by one linprog."""
  n, m = R.shape
  d = np.asarray(c) - np.asarray(c0)
  obj = np.zeros(n + 1)
  obj[-1] = -1.0
  a_ub = np.hstack([-R.T, d[:, None]])  # rho d_i - (R^T q)_i <= -c0_i
  a_eq = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
  res = linprog(
    obj, A_ub=a_ub, b_ub=-np.asarray(c0), A_eq=a_eq, b_eq=[1.0], bounds=[(0, None)] * n + [(0, 1)], method="highs"
  )
  assert res.status == 0
  return -res.fun


def lp_max_level(R, c, i):
  """max (R^T q)_i over mixtures q with (R^T q)_k >= c_k for k != i."""
  n, m = R.shape
  others = [k for k in range(m) if k != i]
  res = linprog(
    -R[:, i],
    A_ub=-R[:, others].T,
    b_ub=-np.asarray(c)[others],
    A_eq=np.ones((1, n)),
    b_eq=[1.0],
    bounds=[(0, None)] * n,
    method="highs",
  )
  assert res.status == 0
  return -res.fun


# ---- quantile_palette -------------------------------------------------------------


def test_quantile_palette_matches_numpy_with_mean_floor():
  R = skewed()
  qs = [0.3, 0.5, None, 0.9]
  c = np.asarray(pal.quantile_palette(R, qs))
  mean = R.mean(0)
  for i, q in enumerate(qs):
    want = mean[i] if q is None else max(mean[i], np.quantile(R[:, i], q))
    np.testing.assert_allclose(c[i], want, rtol=1e-13)
  # The floor was active for the median of a log-normal column (median < mean).
  assert np.quantile(R[:, 1], 0.5) < mean[1] and c[1] == pytest.approx(mean[1])


def test_quantile_palette_without_floor_is_plain_quantile():
  R = skewed(1)
  qs = [0.0, 0.25, 1.0, 0.5]
  c = np.asarray(pal.quantile_palette(R, qs, at_least_mean=False))
  np.testing.assert_allclose(c, [np.quantile(R[:, i], q) for i, q in enumerate(qs)], rtol=1e-13)
  assert c[0] == R[:, 0].min() and c[2] == R[:, 2].max()


def test_quantile_palette_hhh_on_reference(reference_rewards):
  R = reference_rewards
  c = np.asarray(pal.quantile_palette(R, hhh(0.7)))
  mean = R.mean(0)
  np.testing.assert_allclose(c[3:], mean[3:], rtol=1e-13)
  np.testing.assert_allclose(c[:3], np.maximum(mean[:3], np.quantile(R[:, :3], 0.7, axis=0)), rtol=1e-13)


@pytest.mark.parametrize(
  "qs, match",
  [
    ([0.5, 0.5], "has 2 entries but rewards have 4"),
    ([0.5, 1.5, None, 0.1], r"quantiles\[1\] = 1.5 is outside \[0, 1\]"),
    ([0.5, None, -0.2, 0.1], r"quantiles\[2\] = -0.2 is outside"),
    ([0.5, None, float("nan"), 0.1], r"quantiles\[2\] = nan is not finite"),
    ([0.5, "high", None, 0.1], r"quantiles\[1\] = 'high' is not a concrete number"),
  ],
)
def test_quantile_palette_validation(qs, match):
  with pytest.raises(ValueError, match=match):
    pal.quantile_palette(skewed(), qs)


# ---- classifier_palette -----------------------------------------------------------


def test_classifier_palette_kappa_more_likely():
  rng = np.random.default_rng(2)
  logp = np.log(rng.uniform(0.05, 0.95, size=(300, 3)))
  c = np.asarray(pal.classifier_palette(logp, [1.0, None, 0.0]))
  mean = logp.mean(0)
  # Geometric-mean probability doubles for kappa = 1; None and 0 keep the mean.
  np.testing.assert_allclose(np.exp(c[0]), 2.0 * np.exp(mean[0]), rtol=1e-13)
  np.testing.assert_allclose(c[1:], mean[1:], rtol=1e-13)
  c = np.asarray(pal.classifier_palette(logp, [-0.5, 3.0, 0.25]))
  np.testing.assert_allclose(c - mean, np.log1p([-0.5, 3.0, 0.25]), rtol=1e-13)


def test_classifier_palette_validation():
  logp = np.log(np.full((4, 2), 0.5))
  with pytest.raises(ValueError, match=r"kappa\[1\] = -1.0 must be > -1"):
    pal.classifier_palette(logp, [0.0, -1.0])
  with pytest.raises(ValueError, match="kappa has 3 entries"):
    pal.classifier_palette(logp, [0.0, 1.0, 2.0])


# ---- adjust_palette ---------------------------------------------------------------


def test_interpolate_hand_computed():
  # Rows (0, 2), (2, 0), (0, 0): mixtures reach (2 q2, 2 q1), so the balanced maximum
  # is (1, 1); from the means (2/3, 2/3) towards (2, 2) that is rho = 1/4.
  R = np.array([[0.0, 2.0], [2.0, 0.0], [0.0, 0.0]])
  adj = adjust(R, np.array([2.0, 2.0]))
  assert not adj.feasible
  assert float(adj.rho) == pytest.approx(0.25, abs=1e-9)
  np.testing.assert_allclose(adj.palette, [1.0, 1.0], atol=1e-9)
  # Greedy raises value 0 first while value 1 is held at its mean 2/3 (q1 >= 1/3), so
  # value 0 reaches 2 (1 - 1/3) = 4/3 and then value 1 cannot move.
  adj = adjust(R, np.array([2.0, 2.0]), method="greedy")
  np.testing.assert_allclose(adj.palette, [4 / 3, 2 / 3], atol=1e-9)


@pytest.mark.parametrize("q", [0.9, 0.95])
def test_interpolate_reference_is_on_boundary(reference_rewards, q):
  R = reference_rewards
  c = np.asarray(pal.quantile_palette(R, hhh(q)))
  adj = adjust(R, c)
  c0, rho = R.mean(0), float(adj.rho)
  assert not adj.feasible and 0.0 < rho < 1.0
  np.testing.assert_allclose(adj.start, c0, rtol=1e-13)
  np.testing.assert_allclose(adj.palette, c0 + rho * (c - c0), rtol=1e-12, atol=1e-12)
  # Feasible at rho, infeasible just beyond, by an independent LP solver.
  assert lp_margin(R, c0 + rho * (c - c0)) >= -1e-9
  assert lp_margin(R, c0 + (rho + 1e-6) * (c - c0)) < 0
  assert rho == pytest.approx(lp_max_rho(R, c0, c), abs=1e-8)
  assert 0.0 <= float(adj.margin) < 1e-8


def test_feasible_palette_unchanged(reference_rewards):
  R = reference_rewards
  c = pal.quantile_palette(R, hhh(0.85))  # feasible on this data
  # (greedy with the priority of the test below: one compile for both)
  for method, priority in (("interpolate", None), ("greedy", (2, 0, 1))):
    adj = adjust(R, c, method=method, priority=priority)
    assert adj.feasible and float(adj.rho) == 1.0
    np.testing.assert_array_equal(adj.palette, c)
    np.testing.assert_array_equal(adj.fraction, np.ones(6))
    assert float(adj.margin) == pytest.approx(lp_margin(R, np.asarray(c)), abs=1e-9)


def test_greedy_reference_matches_sequential_linprog(reference_rewards):
  R = reference_rewards
  c = np.asarray(pal.quantile_palette(R, hhh(0.95)))
  priority = (2, 0, 1)
  adj = adjust(R, c, method="greedy", priority=priority)
  # Independent greedy: raise each value in turn to min(target, LP maximum).
  want = np.minimum(c, R.mean(0))
  for i in priority + (3, 4, 5):
    want[i] = min(c[i], lp_max_level(R, want, i))
  np.testing.assert_allclose(adj.palette, want, atol=1e-8)
  assert lp_margin(R, np.asarray(adj.palette)) >= -1e-9
  # Every value short of its target is maximal: nudging it up breaks feasibility.
  short = np.flatnonzero(np.asarray(adj.palette) < c - 1e-9)
  assert len(short) > 0
  for i in short:
    up = np.array(adj.palette)
    up[i] += 1e-6
    assert lp_margin(R, up) < 0
  frac = (np.asarray(adj.palette) - R.mean(0))[:3] / (c - R.mean(0))[:3]
  np.testing.assert_allclose(adj.fraction[:3], frac, rtol=1e-10)
  assert float(adj.rho) == pytest.approx(frac.min())


def np_min_kl(R, c):
  """min KL(q || uniform) s.t. R^T q >= c, as the dual max_{lam >= 0} g(lam) (L-BFGS-B)."""
  n, m = R.shape

  def neg_g(lam):
    logits = R @ lam
    top = logits.max()
    w = np.exp(logits - top)
    return top + np.log(w.sum()) - np.log(n) - lam @ c, w @ R / w.sum() - c

  res = optimize.minimize(
    neg_g, np.zeros(m), jac=True, method="L-BFGS-B", bounds=[(0, None)] * m, options=dict(ftol=1e-15, gtol=1e-12)
  )
  return -res.fun


def test_interpolate_with_kl_budget():
  rng = np.random.default_rng(5)
  R = rng.normal(size=(300, 3))
  R[:, 1] -= 0.6 * R[:, 0]  # trade-off between values 0 and 1
  c0 = R.mean(0)
  c = c0 + np.array([2.0, 2.0, 0.0])  # infeasible, and far beyond a KL of 0.3
  adj = adjust(R, c, max_kl=0.3)
  rho = float(adj.rho)
  assert not adj.feasible and 0 < rho < float(adjust(R, c).rho)
  np.testing.assert_allclose(adj.palette, c0 + rho * (c - c0), rtol=1e-12)
  # The KL of the aligned model, by an independent solver, is exactly at the budget.
  assert np_min_kl(R, np.asarray(adj.palette)) == pytest.approx(0.3, abs=1e-7)
  assert np_min_kl(R, c0 + (rho + 1e-4) * (c - c0)) > 0.3
  # The premise of the bisection: KL is nondecreasing along the segment.
  kls = [np_min_kl(R, c0 + r * (c - c0)) for r in np.linspace(0, rho, 6)]
  assert np.all(np.diff(kls) > 0) and kls[0] == pytest.approx(0.0, abs=1e-12)
  # A palette within the budget is returned unchanged.
  inside = c0 + 0.2 * rho * (c - c0)
  same = adjust(R, inside, max_kl=0.3)
  assert same.feasible and float(same.rho) == 1.0
  np.testing.assert_array_equal(same.palette, inside)


def test_values_below_mean_keep_their_level():
  rng = np.random.default_rng(3)
  R = rng.normal(size=(300, 3))  # the shape of the vmap test: one compile for both
  c = np.array([R[:, 0].max() + 1.0, R[:, 1].mean() - 0.5, R[:, 2].mean() + 0.3])
  for method in ("interpolate", "greedy"):
    adj = adjust(R, c, method=method)
    assert not adj.feasible  # c_0 is above every sample
    assert float(adj.palette[1]) == c[1] and float(adj.fraction[1]) == 1.0
    assert lp_margin(R, np.asarray(adj.palette)) >= -1e-9
    assert float(adj.palette[0]) > R[:, 0].mean()


def test_adjust_vmaps_over_palettes():
  rng = np.random.default_rng(4)
  R = rng.normal(size=(300, 3))
  lo, hi = R.mean(0), R.max(0)
  palettes = lo + rng.uniform(0.2, 1.0, size=(6, 3)) * (hi - lo)
  batched = jax.jit(jax.vmap(pal.adjust_palette, in_axes=(None, 0)))(R, palettes)
  for k in range(len(palettes)):
    one = adjust(R, palettes[k])
    np.testing.assert_allclose(batched.palette[k], one.palette, atol=1e-9)
    assert bool(batched.feasible[k]) == bool(one.feasible)
    assert float(batched.rho[k]) == pytest.approx(lp_max_rho(R, lo, palettes[k]), abs=1e-8)


def test_adjust_validation():
  R = np.array([[0.0, 2.0], [2.0, 0.0], [0.0, 0.0]])
  with pytest.raises(ValueError, match="method must be"):
    pal.adjust_palette(R, np.ones(2), method="bisect")
  with pytest.raises(ValueError, match=r"priority\[1\] = 0 is listed twice"):
    pal.adjust_palette(R, np.ones(2), method="greedy", priority=[0, 0])
  with pytest.raises(ValueError, match=r"priority\[0\] = 5 is not a value index"):
    pal.adjust_palette(R, np.ones(2), method="greedy", priority=[5])
  with pytest.raises(ValueError, match="palette must have shape"):
    pal.adjust_palette(R, np.ones(3))
  adj = adjust(R, np.full(2, 9.0))  # far outside: still a finite, feasible answer
  assert math.isfinite(float(adj.rho)) and lp_margin(R, np.asarray(adj.palette)) >= -1e-9


def test_palette_tools_name_non_finite_input(reference_rewards):
  bad = reference_rewards.copy()
  bad[3, 4] = np.inf
  with pytest.raises(ValueError, match=r"rewards of value column 4 are not finite \(NaN or inf\) in rows 3"):
    pal.quantile_palette(bad, [0.5] * 6)
  with pytest.raises(ValueError, match=r"rewards of value column 4 are not finite"):
    pal.adjust_palette(bad, reference_rewards.mean(0))
  with pytest.raises(ValueError, match="palette level of value column 2 is not finite: nan"):
    pal.adjust_palette(reference_rewards, reference_rewards.mean(0) * np.array([1, 1, np.nan, 1, 1, 1]))
  with pytest.raises(ValueError, match=r"quantiles\[1\] = nan is not finite"):
    pal.quantile_palette(reference_rewards, [0.5, float("nan"), None, None, None, None])
  with pytest.raises(ValueError, match="max_kl must be a finite number of nats; got nan"):
    pal.adjust_palette(reference_rewards, reference_rewards.mean(0), max_kl=float("nan"))
