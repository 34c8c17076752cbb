"""Tests for map_jax.core.sequential against a NumPy/scipy coordinate ascent and the joint optimum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from map_jax.core import dual
from map_jax.core import palette as pal
from map_jax.core import sequential as seq

solve = jax.jit(seq.sequential_solve, static_argnames=("rounds", "order"))


def correlated(seed=0, n=400):
  """Three values, two of them strongly anti-correlated (slow for coordinate ascent)."""
  rng = np.random.default_rng(seed)
  a, b = rng.normal(size=(2, n))
  return np.stack([a, -0.7 * a + 0.7 * b, 0.5 * b + rng.gamma(2.0, size=n)], axis=1)


# ---- independent references -------------------------------------------------------


def np_tilted_mean(R, lam):
  logits = R @ lam
  w = np.exp(logits - logits.max())
  w /= w.sum()
  return w @ R


def np_coordinate_step(R, c, lam, i):
  """argmax_{t >= 0} of the dual in coordinate i, by brentq on E_t[r_i] = c_i."""

  def short(t):
    trial = lam.copy()
    trial[i] = t
    return np_tilted_mean(R, trial)[i] - c[i]

  if short(0.0) >= 0:
    return 0.0
  hi = 1.0
  while short(hi) < 0:
    hi *= 2.0
  return optimize.brentq(short, 0.0, hi, xtol=1e-14, rtol=1e-15)


def np_sequential(R, c, rounds, order):
  lam = np.zeros(R.shape[1])
  out = []
  for _ in range(rounds):
    for i in order:
      lam[i] = np_coordinate_step(R, c, lam, i)
      out.append(lam.copy())
  return np.array(out).reshape(rounds, len(order), -1)


def scipy_joint(R, c):
  """The joint dual optimum by L-BFGS-B with bounds, a solver independent of solve_dual."""
  n = R.shape[0]

  def neg_g(lam):
    logits = R @ lam
    top = logits.max()
    w = np.exp(logits - top)
    lse = top + np.log(w.sum()) - np.log(n)
    return lse - lam @ c, w @ R / w.sum() - c

  res = optimize.minimize(
    neg_g,
    np.zeros(R.shape[1]),
    jac=True,
    method="L-BFGS-B",
    bounds=[(0, None)] * R.shape[1],
    options=dict(ftol=1e-15, gtol=1e-12, maxiter=10_000),
  )
  return res.x


# ---- tests ------------------------------------------------------------------------


def test_first_rounds_match_numpy_coordinate_ascent():
  R = correlated()
  c = R.mean(0) + np.array([0.5, 0.4, 0.3]) * R.std(0)
  order = (2, 0, 1)
  got = solve(R, c, rounds=3, order=order)
  want = np_sequential(R, c, 3, order)
  assert got.trajectory.shape == (3, 3, 3)
  np.testing.assert_allclose(got.trajectory, want, rtol=1e-9, atol=1e-11)
  # One round ends short of the palette: the later steps pull earlier values down.
  assert np.any(np.asarray(got.realized[0]) < c - 1e-3)


def test_each_step_is_an_exact_coordinate_maximum():
  R = correlated(1)
  c = R.mean(0) + np.array([0.6, 0.1, -0.2]) * R.std(0)
  got = solve(R, c, rounds=4)
  for r in range(4):
    for k in range(3):
      lam = np.asarray(got.trajectory[r, k])
      level = np_tilted_mean(R, lam)[k]
      if lam[k] > 0:
        assert level == pytest.approx(c[k], abs=1e-11)
      else:
        assert level >= c[k] - 1e-12
  g = np.asarray(got.dual_value)
  assert np.all(np.diff(g) >= -1e-12)
  assert float(got.lam[2]) == 0.0  # a target below its mean is never active


def test_converges_to_joint_optimum_synthetic():
  R = correlated(2)
  c = R.mean(0) + np.array([0.5, 0.5, 0.4]) * R.std(0)
  got = solve(R, c, rounds=150)
  joint = scipy_joint(R, c)
  assert bool(got.converged)
  np.testing.assert_allclose(got.lam, joint, atol=1e-6)
  # KKT: every value reached, with equality where λ_i > 0.
  realized, active = np.asarray(got.realized[-1]), np.asarray(got.lam) > 0
  assert np.all(realized >= c - 1e-9) and active.sum() >= 2
  np.testing.assert_allclose(realized[active], c[active], atol=1e-9)
  # Progress is slow at first (this is why rounds matter): 1 round is far off.
  assert np.abs(np.asarray(got.trajectory[0, -1]) - joint).max() > 1e-2


def test_converges_to_joint_optimum_reference(reference_rewards):
  R = reference_rewards
  palettes = jnp.stack([pal.quantile_palette(R, [q, q, q, None, None, None]) for q in (0.5, 0.6, 0.7)])
  got = jax.jit(jax.vmap(lambda c: seq.sequential_solve(R, c, rounds=60)))(palettes)
  exact = jax.jit(jax.vmap(lambda c: dual.solve_dual(R, c)))(palettes)
  assert np.all(np.asarray(exact.feasible))
  np.testing.assert_allclose(got.lam, exact.lam, atol=1e-4)
  assert np.all(np.asarray(got.converged))
  # Diversity, coherence and perplexity are kept: their λ stays exactly 0.
  np.testing.assert_array_equal(got.lam[:, 3:], 0.0)
  # One round versus five (the paper's Figure 9): more rounds, closer to the palette.
  short = np.maximum(np.asarray(palettes)[:, None] - np.asarray(got.realized), 0).max(-1)
  assert np.all(short[:, 0] > short[:, 4]) and np.all(short[:, 4] > 0)


def test_single_value_order_and_warm_start():
  R = correlated(3)
  c = R.mean(0) + 0.3 * R.std(0)
  only = solve(R, c, rounds=1, order=(1,))
  lam = np.asarray(only.lam)
  assert lam[0] == 0 and lam[2] == 0 and lam[1] > 0
  assert np_tilted_mean(R, lam)[1] == pytest.approx(c[1], abs=1e-11)
  # Continuing from a previous λ equals running the rounds in one go.
  first = solve(R, c, rounds=2)
  more = solve(R, c, rounds=2, init=first.lam)
  both = solve(R, c, rounds=4)
  np.testing.assert_allclose(more.lam, both.lam, rtol=1e-12, atol=1e-14)


def test_unreachable_value_stays_finite():
  R = correlated(4)
  c = R.mean(0)
  c[0] = R[:, 0].max() + 0.1
  got = solve(R, c, rounds=3)
  assert np.all(np.isfinite(np.asarray(got.lam)))
  assert not bool(got.converged)
  assert np.all(np.asarray(got.realized[-1])[0] < c[0])


def test_validation():
  R = correlated()
  with pytest.raises(ValueError, match="rounds must be a positive int"):
    seq.sequential_solve(R, R.mean(0), rounds=0)
  with pytest.raises(ValueError, match="order must list value indices"):
    seq.sequential_solve(R, R.mean(0), rounds=1, order=(0, 3))
  with pytest.raises(ValueError, match="palette must have shape"):
    seq.sequential_solve(R, R.mean(0)[:2], rounds=1)
