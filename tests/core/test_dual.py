"""The MAP dual solver against SciPy, the paper's numbers, an LP, and its own KKT conditions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, special

from map_jax.core.dual import dual_objective, solve_dual
from map_jax.core.feasibility import feasibility, upper_bounds

from .conftest import TARGETED, hhh_palette

# The paper's Table 1 λ (humor, helpful, harmless) on this data, printed to two decimals.
PAPER_LAMBDA = {0.5: (2.53, 0.23, 0.28), 0.6: (6.30, 0.83, 0.93), 0.7: (12.77, 1.53, 1.69)}


def scipy_lambda(rewards: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """Independent float64 reference: L-BFGS-B on −g with box constraints λ >= 0."""
  n = rewards.shape[0]

  def neg_g(lam):
    return -(lam @ palette - special.logsumexp(rewards @ lam) + np.log(n))

  def neg_grad(lam):
    w = special.softmax(rewards @ lam)
    return -(palette - w @ rewards)

  res = optimize.minimize(
    neg_g,
    np.zeros(rewards.shape[1]),
    jac=neg_grad,
    method="L-BFGS-B",
    bounds=[(0, None)] * rewards.shape[1],
    options=dict(ftol=0, gtol=1e-13, maxiter=20000, maxcor=30),
  )
  return res.x


def lp_margin(rewards: np.ndarray, palette: np.ndarray) -> float:
  """max_q min_i (Rᵀq − c)_i by scipy's HiGHS LP over (q, t)."""
  n, m = rewards.shape
  res = optimize.linprog(
    np.r_[np.zeros(n), -1.0],
    A_ub=np.hstack([-rewards.T, np.ones((m, 1))]),
    b_ub=-palette,
    A_eq=np.r_[np.ones(n), 0.0][None],
    b_eq=[1.0],
    bounds=[(0, None)] * n + [(None, None)],
    method="highs",
  )
  assert res.status == 0, res.message
  return -res.fun


solve = jax.jit(solve_dual)


@pytest.mark.parametrize("q", [0.5, 0.6, 0.7])
def test_paper_palettes_match_paper_and_scipy(reference_rewards, q):
  c = hhh_palette(reference_rewards, q)
  sol = solve(jnp.asarray(reference_rewards), jnp.asarray(c))
  lam = np.asarray(sol.lam)
  assert bool(sol.feasible) and bool(sol.converged)
  # Exactly zero on the kept values (the paper's Adam solver reports 0.01–0.05 there).
  np.testing.assert_array_equal(lam[TARGETED:], 0.0)
  # Within 3% of the paper, allowing for its two-decimal rounding.
  np.testing.assert_allclose(lam[:TARGETED], PAPER_LAMBDA[q], rtol=0.03, atol=0.005)
  ref = scipy_lambda(reference_rewards, c)
  np.testing.assert_allclose(lam[:TARGETED], ref[:TARGETED], rtol=1e-6)
  assert np.all(ref[TARGETED:] < 1e-6)


@pytest.mark.parametrize("q", [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95])
def test_feasibility_verdict_and_margin_match_linprog(reference_rewards, q):
  c = hhh_palette(reference_rewards, q)
  sol = solve(jnp.asarray(reference_rewards), jnp.asarray(c))
  margin = lp_margin(reference_rewards, c)
  assert bool(sol.feasible) == (margin >= 0)
  np.testing.assert_allclose(float(sol.margin), margin, atol=1e-9)
  assert np.all(np.isfinite(np.asarray(sol.lam)))
  if not bool(sol.feasible):
    d = np.asarray(sol.certificate)
    assert np.all(d >= 0) and abs(d.sum() - 1) < 1e-12
    assert np.max(reference_rewards @ d) < d @ c
    np.testing.assert_array_equal(np.asarray(sol.lam), 0.0)


def test_kkt_conditions_float64_and_float32(reference_rewards):
  c = hhh_palette(reference_rewards, 0.8)
  for dtype, tol in [(jnp.float64, 1e-10), (jnp.float32, 1e-6)]:
    sol = solve(jnp.asarray(reference_rewards, dtype), jnp.asarray(c, dtype))
    assert sol.lam.dtype == dtype
    assert bool(sol.converged) and int(sol.num_steps) <= 50
    assert float(sol.kkt_residual) <= tol
  # Check KKT independently in float64 NumPy from the float64 λ.
  sol = solve(jnp.asarray(reference_rewards), jnp.asarray(c))
  lam = np.asarray(sol.lam)
  w = special.softmax(reference_rewards @ lam)
  realized = w @ reference_rewards
  sd = reference_rewards.std(axis=0)
  np.testing.assert_allclose(np.asarray(sol.realized), realized, rtol=1e-12)
  active = lam > 0
  assert np.all(np.abs(realized - c)[active] <= 1e-10 * sd[active])
  assert np.all(realized[~active] >= c[~active] - 1e-10 * sd[~active])
  np.testing.assert_allclose(float(sol.ess), 1 / np.sum(w**2), rtol=1e-10)
  kl = np.sum(w * np.log(len(w) * w))
  np.testing.assert_allclose(float(sol.kl), kl, rtol=1e-10)
  # Strong duality: the KL to p0 equals the dual value at the optimum.
  np.testing.assert_allclose(float(sol.dual_value), kl, rtol=1e-9)


def test_dual_value_beats_neighbours(reference_rewards):
  """λ maximises g over λ >= 0: no nearby non-negative point is better."""
  c = jnp.asarray(hhh_palette(reference_rewards, 0.6))
  r = jnp.asarray(reference_rewards)
  lam = solve(r, c).lam
  best = dual_objective(r, c, lam)
  pert = jax.random.normal(jax.random.key(0), (200, lam.shape[0]), lam.dtype) * 1e-3
  others = jax.vmap(lambda p: dual_objective(r, c, jnp.maximum(lam + p, 0.0)))(pert)
  assert float(jnp.max(others)) <= float(best) + 1e-12


def test_infeasible_palettes_have_valid_certificates_and_no_nan(reference_rewards):
  rng = np.random.default_rng(0)
  r = jnp.asarray(reference_rewards)
  c0, b = reference_rewards.mean(0), reference_rewards.max(0)
  palettes = c0 + rng.uniform(-0.2, 1.3, (300, 6)) * (b - c0)
  sols = jax.jit(jax.vmap(lambda c: solve_dual(r, c)))(jnp.asarray(palettes))
  for field in sols:
    assert np.all(np.isfinite(np.asarray(field, dtype=np.float64))), field
  infeasible = ~np.asarray(sols.feasible)
  assert 20 < infeasible.sum() < 290
  for c, d in zip(palettes[infeasible], np.asarray(sols.certificate)[infeasible]):
    assert np.all(d >= 0) and np.max(reference_rewards @ d) < d @ c
  # Beyond an upper bound nothing is feasible.
  beyond = np.any(palettes > np.asarray(upper_bounds(r)), axis=1)
  assert not np.any(np.asarray(sols.feasible)[beyond])
  feasible = ~infeasible
  assert np.all(np.asarray(sols.converged)[feasible & (np.asarray(sols.margin) > 1e-3)])


def test_vmap_over_palettes_equals_loop(reference_rewards):
  r = jnp.asarray(reference_rewards)
  palettes = jnp.asarray(np.stack([hhh_palette(reference_rewards, q) for q in (0.3, 0.5, 0.7, 0.9)]))
  batched = jax.vmap(lambda c: solve_dual(r, c))(palettes)
  for k, c in enumerate(palettes):
    single = solve(r, c)
    for name, a, b in zip(single._fields, single, batched):
      np.testing.assert_allclose(
        np.asarray(b[k], np.float64), np.asarray(a, np.float64), rtol=1e-9, atol=1e-12, err_msg=name
      )


def test_vmap_over_reward_matrices(reference_rewards):
  rng = np.random.default_rng(1)
  subsets = np.stack([reference_rewards[rng.choice(2312, 500, replace=False)] for _ in range(3)])
  c = hhh_palette(reference_rewards, 0.5)
  batched = jax.jit(jax.vmap(solve_dual, in_axes=(0, None)))(jnp.asarray(subsets), jnp.asarray(c))
  for k in range(3):
    ref = scipy_lambda(subsets[k], c)
    np.testing.assert_allclose(np.asarray(batched.lam[k]), ref, rtol=1e-5, atol=1e-7)


def test_jacobian_matches_finite_differences_and_inverse_covariance(reference_rewards):
  r = jnp.asarray(reference_rewards)
  c = jnp.asarray(hhh_palette(reference_rewards, 0.6))
  jac = np.asarray(jax.jit(jax.jacobian(lambda c: solve_dual(r, c).lam))(c))
  h = 1e-5
  fd = np.stack(
    [
      (np.asarray(solve(r, c.at[k].add(h)).lam) - np.asarray(solve(r, c.at[k].add(-h)).lam)) / (2 * h) for k in range(6)
    ],
    1,
  )
  np.testing.assert_allclose(jac, fd, rtol=1e-5, atol=1e-6)
  lam = np.asarray(solve(r, c).lam)
  active = lam > 0
  w = special.softmax(reference_rewards @ lam)
  centered = reference_rewards - w @ reference_rewards
  cov = (centered * w[:, None]).T @ centered
  expected = np.zeros((6, 6))
  expected[np.ix_(active, active)] = np.linalg.inv(cov[np.ix_(active, active)])
  np.testing.assert_allclose(jac, expected, rtol=1e-8, atol=1e-10)
  # The sign: raising a target raises its λ (the paper prints −V⁻¹).
  assert np.all(np.diag(jac)[active] > 0)


def test_jacobian_wrt_rewards_matches_finite_differences():
  rng = np.random.default_rng(2)
  r = rng.normal(size=(60, 3))
  c = r.mean(0) + np.array([0.3, 0.2, -0.5])
  f = jax.jit(lambda r: solve_dual(r, jnp.asarray(c)).lam)
  jac = np.asarray(jax.jacobian(f)(jnp.asarray(r)))
  h = 1e-6
  for j, i in [(0, 0), (7, 1), (31, 2), (59, 0)]:
    e = np.zeros_like(r)
    e[j, i] = h
    fd = (np.asarray(f(jnp.asarray(r + e))) - np.asarray(f(jnp.asarray(r - e)))) / (2 * h)
    np.testing.assert_allclose(jac[:, j, i], fd, rtol=1e-5, atol=1e-8)


def test_constant_reward_column():
  rng = np.random.default_rng(3)
  r = np.c_[rng.normal(size=(200, 2)), np.full(200, 0.7)]
  # A palette at or below the constant is met for free: its λ stays exactly 0.
  for level in (0.7, 0.2):
    c = np.array([0.5, 0.3, level])
    sol = solve(jnp.asarray(r), jnp.asarray(c))
    assert bool(sol.feasible) and bool(sol.converged)
    assert float(sol.lam[2]) == 0.0
    np.testing.assert_allclose(np.asarray(sol.lam[:2]), scipy_lambda(r, c)[:2], rtol=1e-6)
  # Above it nothing is feasible, and the certificate points at that value.
  c = np.array([0.0, 0.0, 0.8])
  sol = solve(jnp.asarray(r), jnp.asarray(c))
  d = np.asarray(sol.certificate)
  assert not bool(sol.feasible) and np.max(r @ d) < d @ c
  np.testing.assert_allclose(float(sol.margin), lp_margin(r, c), atol=1e-9)
  assert np.all(np.isfinite(np.asarray(sol.lam)))


def test_feasibility_brackets_the_lp_value(reference_rewards):
  c = hhh_palette(reference_rewards, 0.85)
  out = feasibility(jnp.asarray(reference_rewards), jnp.asarray(c))
  margin = lp_margin(reference_rewards, c)
  assert float(out.lower) - 1e-12 <= margin <= float(out.upper) + 1e-12
  q = np.asarray(out.mixture)
  assert np.all(q >= 0) and abs(q.sum() - 1) < 1e-12
  # The mixture reaches every target with the reported slack.
  assert np.min(reference_rewards.T @ q - c) >= float(out.lower) - 1e-12


@pytest.mark.parametrize(
  "bad, message",
  [
    (np.zeros((0, 3)), "empty"),
    (np.zeros(5), "2-D"),
  ],
)
def test_bad_reward_shapes(bad, message):
  with pytest.raises(ValueError, match=message):
    solve_dual(bad, np.zeros(3))


def test_non_finite_rewards_name_rows_and_value():
  r = np.random.default_rng(0).normal(size=(20, 3))
  r[[4, 11], 2] = np.inf
  with pytest.raises(ValueError, match=r"value column 2.*rows 4, 11"):
    solve_dual(r, np.zeros(3))


def test_palette_shape_mismatch():
  with pytest.raises(ValueError, match=r"shape \(3,\)"):
    solve_dual(np.zeros((4, 3)), np.zeros(2))


def test_vmap_with_hard_palettes_equals_loop(reference_rewards):
  """A batch large enough for the solver's loops to compact their lanes, with palettes
  near the feasibility boundary that need many more Newton steps than the rest."""
  r = jnp.asarray(reference_rewards)
  rng = np.random.default_rng(5)
  c0, b = reference_rewards.mean(0), reference_rewards.max(0)
  easy = c0 + rng.uniform(0, 0.3, (100, 6)) * (b - c0)
  direction = rng.uniform(0, 0.6, (20, 6)) * (b - c0)
  # Just inside the boundary: 99.9% of the way from c0 to the edge along each direction.
  edge = np.array([c0 + 0.999 * lp_edge(reference_rewards, c0, v) * v for v in direction])
  palettes = jnp.asarray(np.concatenate([easy, edge]))
  batched = jax.jit(jax.vmap(lambda c: solve_dual(r, c)))(palettes)
  steps = np.asarray(batched.num_steps)
  assert np.all(np.asarray(batched.feasible))
  assert steps[100:].max() > 2 * np.median(steps[:100])
  for k in [*np.argsort(steps)[-4:], 0, 1, 50]:
    single = solve(r, palettes[k])
    # Rounding that differs with the batch size may end a hard solve a step earlier or
    # later, or (with λ in the hundreds) a few times above the 1e-12 KKT tolerance:
    # the answers agree to that precision.
    assert float(single.kkt_residual) < 1e-11 and float(batched.kkt_residual[k]) < 1e-11
    for name, a, b in zip(single._fields, single, batched):
      if name not in ("num_steps", "converged", "kkt_residual"):
        np.testing.assert_allclose(
          np.asarray(b[k], np.float64), np.asarray(a, np.float64), rtol=1e-9, atol=1e-11, err_msg=name
        )


def lp_edge(rewards: np.ndarray, start: np.ndarray, direction: np.ndarray) -> float:
  """Largest s with start + s·direction feasible: max s s.t. Rᵀq >= start + s·direction, q in the simplex
  (one HiGHS LP)."""
  n, m = rewards.shape
  res = optimize.linprog(
    np.r_[np.zeros(n), -1.0],
    A_ub=np.c_[-rewards.T, direction],
    b_ub=-start,
    A_eq=np.r_[np.ones(n), 0.0][None],
    b_eq=[1.0],
    bounds=[(0, None)] * n + [(0, None)],
    method="highs",
  )
  assert res.status == 0, res.message
  return float(res.x[-1])


def test_newton_step_solves_the_reduced_system_and_survives_an_indefinite_matrix():
  from map_jax.core import dual

  rng = np.random.default_rng(3)
  a = rng.normal(size=(4, 4))
  hess = a @ a.T + 0.1 * np.eye(4)
  lam = np.array([1.0, 0.0, 2.0, 0.5])
  grad = np.array([0.3, 0.2, -0.1, 0.4])  # coordinate 1 is at its bound and pushed out: held
  step, active = dual._newton_step(jnp.asarray(lam), jnp.asarray(grad), jnp.asarray(hess), jnp.asarray(1e-8), 0.0)
  assert np.asarray(active).tolist() == [False, True, False, False]
  free = [0, 2, 3]
  np.testing.assert_allclose(np.asarray(step)[free], np.linalg.solve(hess[np.ix_(free, free)], grad[free]), rtol=1e-10)
  np.testing.assert_allclose(np.asarray(step)[1], grad[1] / hess[1, 1], rtol=1e-12)
  # A matrix that rounding left indefinite: a finite, diagonally scaled gradient step, not NaN.
  bad = np.diag([1.0, -1e-3, 2.0, 1.0])
  step, _ = dual._newton_step(jnp.asarray(lam), jnp.asarray(grad), jnp.asarray(bad), jnp.asarray(1e-8), 0.0)
  assert np.all(np.isfinite(np.asarray(step)))
  np.testing.assert_allclose(np.asarray(step)[[0, 2, 3]], grad[[0, 2, 3]] / np.diag(bad)[[0, 2, 3]])


@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_float32_levels_ess_and_kl_hold_far_from_zero(reference_rewards, offset):
  """Rewards of 1e4 + O(1) in float32: what the solution reports agrees with its own λ recomputed in float64 on
  the same (float32-rounded) rewards, to the rounding of the outputs themselves."""
  R32 = jnp.asarray(reference_rewards + offset, jnp.float32)
  c32 = jnp.asarray(hhh_palette(reference_rewards, 0.6) + offset, jnp.float32)
  sol = solve_dual(R32, c32)
  assert bool(sol.feasible) and bool(sol.converged)
  R = np.asarray(R32, np.float64)
  z = R @ np.asarray(sol.lam, np.float64)
  w = np.exp(z - z.max())
  w /= w.sum()
  ulp = np.spacing(np.float32(offset))  # the realized levels are float32 numbers near the offset
  np.testing.assert_allclose(np.asarray(sol.realized, np.float64), R.T @ w, rtol=0, atol=2 * ulp)
  np.testing.assert_allclose(float(sol.ess), 1 / np.sum(w**2), rtol=1e-4)
  assert float(sol.ess) <= len(R)
  np.testing.assert_allclose(float(sol.kl), np.sum(w * np.log(len(w) * w)), rtol=1e-4)
  assert float(sol.kl) > 0


def test_float32_rewards_of_tiny_scale_are_solved(reference_rewards):
  """Rewards scaled by 1e-19 in float32 (their squares underflow): the same λ / 1e-19 and the same levels."""
  c = hhh_palette(reference_rewards, 0.6)
  ref = solve_dual(reference_rewards, c)
  sol = solve_dual(jnp.asarray(reference_rewards * 1e-19, jnp.float32), jnp.asarray(c * 1e-19, jnp.float32))
  assert bool(sol.feasible) and bool(sol.converged)
  np.testing.assert_allclose(np.asarray(sol.lam, np.float64) * 1e-19, np.asarray(ref.lam), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(sol.realized, np.float64) / 1e-19, np.asarray(ref.realized), rtol=1e-5)
