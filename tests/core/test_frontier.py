"""Tests for map_jax.core.frontier against NumPy loops, linprog and distributional checks."""

import jax
import numpy as np
import pytest
from scipy import stats
from scipy.optimize import linprog

from map_jax.core import frontier

sample = jax.jit(frontier.random_palettes, static_argnames=("num", "values"))


def np_realized(R, lam):
  logits = R @ lam
  w = np.exp(logits - logits.max())
  return w @ R / w.sum()


def lp_margin(R, c):
  """max_{q in simplex} min_i (R^T q - c)_i by linprog (HiGHS)."""
  n, m = R.shape
  obj = np.zeros(n + 1)
  obj[-1] = -1.0
  res = linprog(
    obj,
    A_ub=np.hstack([-R.T, np.ones((m, 1))]),
    b_ub=-c,
    A_eq=np.hstack([np.ones((1, n)), np.zeros((1, 1))]),
    b_eq=[1.0],
    bounds=[(0, None)] * n + [(None, None)],
    method="highs",
  )
  assert res.status == 0
  return -res.fun


def test_random_palettes_reference(reference_rewards):
  R = reference_rewards
  # Humor, helpfulness, harmlessness. (Randomising all six values leaves almost no
  # feasible palette: uniform between mean and max is far into every tail.)
  cands = sample(jax.random.key(0), R, num=64, values=(0, 1, 2))
  c = np.asarray(cands.palettes)
  mean, high = R.mean(0), R.max(0)
  assert c.shape == (64, 6) and np.all(c >= mean - 1e-12) and np.all(c <= high)
  np.testing.assert_allclose(c[:, 3:], np.broadcast_to(mean[3:], (64, 3)), rtol=1e-13)
  lam = np.asarray(cands.solution.lam)
  margins = np.array([lp_margin(R, ck) for ck in c])
  clear = np.abs(margins) > 1e-7  # leave ties at the boundary to the solver's tolerance
  np.testing.assert_array_equal(np.asarray(cands.solution.feasible)[clear], margins[clear] > 0)
  want_keep = (margins > 0) & (lam.sum(1) <= 6.0)
  np.testing.assert_array_equal(np.asarray(cands.keep)[clear], want_keep[clear])
  assert 0 < want_keep.sum() < 64 and (margins < 0).any()
  # Kept palettes are reached (KKT in NumPy), so they improve every value: efficiency 1.
  palettes, solution = frontier.feasible_palettes(cands)
  assert palettes.shape == (int(cands.keep.sum()), 6)
  assert solution.lam.shape == palettes.shape
  for ck, lk in zip(np.asarray(palettes), np.asarray(solution.lam)):
    realized = np_realized(R, lk)
    assert np.all(realized >= ck - 1e-8)
    np.testing.assert_allclose(realized[lk > 0], ck[lk > 0], atol=1e-8)
  assert float(frontier.navigation_efficiency(R, solution.lam)) == 1.0


def test_random_palettes_uniform_between_mean_and_max():
  rng = np.random.default_rng(0)
  R = rng.normal(size=(40, 3)) * np.array([1.0, 2.0, 0.5])
  cands = sample(jax.random.key(1), R, num=400, values=(0, 2))
  c = np.asarray(cands.palettes)
  mean, high = R.mean(0), R.max(0)
  np.testing.assert_allclose(c[:, 1], mean[1], rtol=1e-13)  # not randomised
  for i in (0, 2):
    u = (c[:, i] - mean[i]) / (high[i] - mean[i])
    assert stats.kstest(u, "uniform").pvalue > 1e-3
  assert abs(np.corrcoef(c[:, 0], c[:, 2])[0, 1]) < 0.1
  # Different keys give different palettes; the same key the same ones.
  again = sample(jax.random.key(1), R, num=400, values=(0, 2))
  np.testing.assert_array_equal(again.palettes, c)


def test_morl_lambdas_distribution():
  m, num = 4, 4000
  lams = np.asarray(frontier.morl_lambdas(jax.random.key(2), num, m))
  assert lams.shape == (num, m) and lams.dtype == np.float64 and np.all(lams >= 0)
  scale = lams.sum(1)
  assert np.all(scale <= 6.0)
  assert stats.kstest(scale / 6.0, "uniform").pvalue > 1e-3
  u = lams / scale[:, None]
  # Dirichlet(1, ..., 1): each coordinate is Beta(1, m - 1).
  for i in range(m):
    assert stats.kstest(u[:, i], stats.beta(1, m - 1).cdf).pvalue > 1e-3
  assert abs(np.corrcoef(scale, u[:, 0])[0, 1]) < 0.05  # scale independent of direction
  lams3 = frontier.morl_lambdas(jax.random.key(2), 10, 3, max_scale=2.0)
  assert float(lams3.sum(1).max()) <= 2.0


def test_realized_levels_matches_numpy():
  rng = np.random.default_rng(3)
  R = rng.normal(size=(200, 3))
  lams = rng.uniform(0, 3, size=(5, 3))
  got = np.asarray(frontier.realized_levels(R, lams))
  want = np.array([np_realized(R, lam) for lam in lams])
  np.testing.assert_allclose(got, want, rtol=1e-12)
  np.testing.assert_allclose(jax.vmap(frontier.realized_levels, (None, 0))(R, lams), want, rtol=1e-12)
  np.testing.assert_allclose(frontier.realized_levels(R, np.zeros(3)), R.mean(0), rtol=1e-12)


def test_quantile_levels_matches_numpy():
  rng = np.random.default_rng(4)
  R = np.round(rng.normal(size=(300, 2)), 1)  # ties, which count one half
  levels = np.concatenate([R[:7], rng.normal(size=(5, 2)), [[-99.0, 99.0]]])
  got = np.asarray(frontier.quantile_levels(R, levels))
  half_counts = np.array([[2 * np.sum(R[:, i] < lv[i]) + np.sum(R[:, i] == lv[i]) for i in range(2)] for lv in levels])
  np.testing.assert_array_equal(np.round(got * 600), half_counts)
  want = half_counts / 600
  np.testing.assert_allclose(got, want, rtol=1e-15)
  assert got[-1].tolist() == [0.0, 1.0]
  # Mean-level quantiles agree with a single-vector call.
  np.testing.assert_allclose(frontier.quantile_levels(R, levels[0]), want[0], rtol=1e-15)


def test_navigation_efficiency_matches_numpy(reference_rewards):
  R = reference_rewards
  lams = np.asarray(frontier.morl_lambdas(jax.random.key(5), 300, 6))
  got = float(frontier.navigation_efficiency(R, lams))
  mean = R.mean(0)
  want = np.mean([np.all(np_realized(R, lam) >= mean) for lam in lams])
  assert got == pytest.approx(want, abs=1e-12)
  assert 0.0 < got < 1.0  # random MORL directions often trade a value away
  c0 = mean - 0.05 * R.std(0)
  want0 = np.mean([np.all(np_realized(R, lam) >= c0) for lam in lams])
  assert float(frontier.navigation_efficiency(R, lams, c0)) == pytest.approx(want0, abs=1e-12)
  assert want0 >= want
