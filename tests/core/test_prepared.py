"""The solver at scale: a prepared pilot set, the two Hessians, blocked float32 sums, and the memory of a solve."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from map_jax.core import dual
from map_jax.core import feasibility as feas
from map_jax.core.dual import prepare_pilot, solve_dual

from .test_dual import scipy_lambda


def palettes_between_mean_and_q75(rewards: np.ndarray, num: int, seed: int = 1) -> np.ndarray:
  rng = np.random.default_rng(seed)
  c0, q75 = rewards.mean(0), np.quantile(rewards, 0.75, axis=0)
  return c0 + rng.uniform(size=(num, rewards.shape[1])) * (q75 - c0)


def large_pilot(reference: np.ndarray, n: int, m: int, seed: int = 0) -> np.ndarray:
  """n rows of m values from the reference set: resampled rows plus noise, and further columns that mix the six
  standardized ones (as benchmarks/dual_solver.py --scaling draws them)."""
  rng = np.random.default_rng(seed)
  base = reference[rng.integers(0, len(reference), n)]
  sd = reference.std(0)
  z = (base - reference.mean(0)) / sd
  extra = z @ rng.normal(size=(6, m - 6)) / np.sqrt(6) + 0.5 * rng.standard_normal((n, m - 6))
  return np.concatenate([base + 0.05 * sd * rng.standard_normal(base.shape), extra], axis=1)


def kkt_residual64(rewards: np.ndarray, palette: np.ndarray, lam: np.ndarray) -> float:
  """max_i |min(σ_i λ_i, (E_{p_λ}[r_i] − c_i) / σ_i)| in float64 NumPy."""
  w = special.softmax(rewards @ np.asarray(lam, np.float64))
  sd = rewards.std(0)
  return float(np.max(np.abs(np.minimum(sd * lam, (w @ rewards - palette) / sd))))


@pytest.mark.parametrize("dtype, hessian", [(jnp.float32, "moments"), (jnp.float64, "streamed")])
def test_prepared_equals_unprepared_bit_for_bit(reference_rewards, dtype, hessian):
  """solve_dual(R, c) prepares R and solves, as the same two compiled programs a kept PreparedPilot feeds."""
  R = jnp.asarray(reference_rewards, dtype)
  pilot = prepare_pilot(R, hessian=hessian)
  palettes = np.r_[palettes_between_mean_and_q75(reference_rewards, 4), reference_rewards.max(0)[None] + 1]
  for c in jnp.asarray(palettes, dtype):
    kept = solve_dual(pilot, c)
    fresh = solve_dual(R, c) if hessian == "moments" else solve_dual(prepare_pilot(R, hessian=hessian), c)
    for name, a, b in zip(kept._fields, kept, fresh):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
  assert not bool(kept.feasible) and bool(solve_dual(pilot, jnp.asarray(palettes[0], dtype)).feasible)


def test_moment_table_and_streamed_hessians_agree(reference_rewards):
  """2,312 rows: five streamed blocks, the last one padded."""
  R = jnp.asarray(reference_rewards)
  table, product = prepare_pilot(R, hessian="moments"), prepare_pilot(R, hessian="streamed")
  assert table.rows.stream is None and table.rows.moments is not None
  assert product.rows.moments is None and product.rows.stream.shape == (5, 6, dual._STREAM_ROWS)
  rng = np.random.default_rng(3)
  evaluate = jax.jit(dual._evaluate)
  for lam in rng.uniform(0, 2, (5, 6)):
    c = jnp.asarray(rng.normal(size=6))
    a = evaluate(table.rows, c, jnp.asarray(lam))
    b = evaluate(product.rows, c, jnp.asarray(lam))
    for x, y in zip(a, b):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-11, atol=1e-11)
    # and both are the tilted covariance of the standardized rows, in float64 NumPy
    z = (reference_rewards - np.asarray(table.mean)) / np.asarray(table.scale)
    w = special.softmax(z @ lam)
    np.testing.assert_allclose(np.asarray(a[2]), np.cov(z.T, aweights=w, bias=True), atol=1e-10)
  for c in palettes_between_mean_and_q75(reference_rewards, 4):
    one, other = solve_dual(table, jnp.asarray(c)), solve_dual(product, jnp.asarray(c))
    for name in ("lam", "realized", "ess", "kl", "dual_value"):
      np.testing.assert_allclose(
        np.asarray(getattr(one, name)), np.asarray(getattr(other, name)), rtol=1e-9, err_msg=name
      )


def test_streamed_solutions_differentiate_like_the_moment_tables(reference_rewards):
  """Levels, ESS and KL of a streamed pilot set (online log-sum-exp over the blocks, compensated sums) have the
  derivatives in the palette and in the rewards of the blocked sums over the table's layout."""
  R = jnp.asarray(reference_rewards)
  c = jnp.asarray(palettes_between_mean_and_q75(reference_rewards, 1)[0])

  def summary(hessian):
    def f(rewards, palette):
      sol = solve_dual(prepare_pilot(rewards, hessian=hessian), palette)
      return sol.realized, sol.ess, sol.kl

    return jax.jit(jax.jacobian(f, argnums=(0, 1)))(R, c)

  for a, b in zip(jax.tree.leaves(summary("moments")), jax.tree.leaves(summary("streamed"))):
    assert np.all(np.isfinite(np.asarray(b)))
    # (all six constraints bind here, so d realized / dR is zero up to rounding, ~1e-15)
    np.testing.assert_allclose(
      np.asarray(a), np.asarray(b), rtol=1e-7, atol=1e-12 * max(1.0, np.max(np.abs(np.asarray(a))))
    )


def test_padded_row_blocks_change_nothing(reference_rewards):
  """Past one block of rows the sums run per block over zero-padded blocks; the padding carries no weight."""
  n = dual._BLOCK_ROWS * 2 + 77
  R = large_pilot(reference_rewards, n, 7)
  pilot = prepare_pilot(jnp.asarray(R))
  assert pilot.rows.zb.shape == (3, 7, dual._BLOCK_ROWS)
  for c in palettes_between_mean_and_q75(R, 3):
    sol = solve_dual(pilot, jnp.asarray(c))
    lam = np.asarray(sol.lam)
    w = special.softmax(R @ lam)
    assert bool(sol.converged) and kkt_residual64(R, c, lam) < 1e-10
    np.testing.assert_allclose(np.asarray(sol.realized), w @ R, rtol=1e-12)
    np.testing.assert_allclose(float(sol.ess), 1 / np.sum(w**2), rtol=1e-10)
    np.testing.assert_allclose(float(sol.kl), np.sum(w * np.log(n * w)), rtol=1e-9, atol=1e-12)


def test_float32_at_200k_rows_and_12_values_against_float64_scipy(reference_rewards):
  """Sums over 200,000 rows in float32 keep the KKT residual at the documented 1e-6, and λ at SciPy's."""
  R = large_pilot(reference_rewards, 200_000, 12)
  pilot = prepare_pilot(jnp.asarray(R, jnp.float32))
  assert pilot.rows.stream is not None
  for c in palettes_between_mean_and_q75(R, 2):
    sol = solve_dual(pilot, jnp.asarray(c, jnp.float32))
    assert bool(sol.feasible) and bool(sol.converged)
    lam32 = np.asarray(sol.lam, np.float64)
    reference = scipy_lambda(R, c)
    assert kkt_residual64(R, c, lam32) < 1e-6, kkt_residual64(R, c, lam32)
    assert kkt_residual64(R, c, reference) < 1e-6
    np.testing.assert_allclose(lam32, reference, atol=1e-4 * np.max(reference))


def test_newton_started_on_a_subset_of_rows_finds_the_same_lambda_and_survives_one_that_cannot_reach_the_palette():
  """Past 262,144 rows Newton starts from the solution on every k-th row. Here those rows all have x + y = 0, so
  the subset cannot reach c = (0.5, 0.5), which the other rows can: that palette falls back to a start from 0."""
  n = 8 * feas.COARSE_ROWS + 1000
  R = np.random.default_rng(0).normal(size=(n, 2))
  pilot = prepare_pilot(jnp.asarray(R))
  stride = -(-n // feas.COARSE_ROWS)
  assert pilot.coarse is not None and pilot.coarse.n == n // stride
  R[::stride][:, 1] = -R[::stride][:, 0]
  pilot = prepare_pilot(jnp.asarray(R))
  from_zero = dataclasses.replace(pilot, coarse=None)
  subset = jax.jit(functools.partial(dual._newton, tol=1e-12, max_iter=50, max_evals=50, ridge=1e-14))
  for c in [np.array([0.3, -0.5]), np.array([0.5, 0.5])]:
    c_std = (jnp.asarray(c) - pilot.mean) / pilot.scale
    reaches = bool(subset(pilot.coarse, c_std, jnp.zeros(2)).residual <= 1e-12)
    assert reaches == (c[1] < 0)
    sol, reference = solve_dual(pilot, jnp.asarray(c)), solve_dual(from_zero, jnp.asarray(c))
    assert bool(sol.converged) and kkt_residual64(R, c, np.asarray(sol.lam)) < 1e-10
    np.testing.assert_allclose(np.asarray(sol.lam), np.asarray(reference.lam), rtol=1e-8)
    np.testing.assert_allclose(np.asarray(sol.lam), scipy_lambda(R, c), rtol=1e-4)


@pytest.mark.parametrize("hessian", ["moments", "streamed"])
def test_the_heavy_rows_sample_holds_each_groups_largest_logit_and_every_kth_row_weighted(monkeypatch, hessian):
  """_heavy_rows: the row of largest logit in each group of k = n // _HEAVY_ROWS rows (as NumPy finds it), of
  weight 1; then every k-th row of all, of weight k, or 0 where it is its group's largest. Newton's evaluations
  on the sample are NumPy's weighted sums in float64, and the chord form (no Hessian) gives the same value and
  gradient."""
  monkeypatch.setattr(dual, "_HEAVY_ROWS", 360)
  n, m = 9 * dual._STREAM_ROWS + 100, 3
  z = np.random.default_rng(2).normal(size=(n, m))
  rows = dual._standardized_rows(jnp.asarray(z), hessian)
  lam = np.array([0.7, -1.2, 0.4])
  sample = dual._heavy_rows(rows, dual._logits(rows, jnp.asarray(lam)))
  k = n // 360
  groups = n // k
  top = np.argmax((z[: groups * k] @ lam).reshape(groups, k), axis=1) + k * np.arange(groups)
  others = np.arange(0, n, k)
  assert n % k and sample.n == groups + len(others)
  if sample.stream is not None:
    got = np.asarray(sample.stream).transpose(0, 2, 1).reshape(-1, m)[: sample.n]
  else:
    got = np.asarray(sample.zt).T[: sample.n]
  log_weight = np.asarray(sample.log_weight).reshape(-1)[: sample.n]
  np.testing.assert_array_equal(got, z[np.r_[top, others]])
  expected = np.r_[np.zeros(groups), np.where(np.isin(others, top), -np.inf, np.log(k))]
  np.testing.assert_array_equal(log_weight, expected)
  assert 0 < np.sum(np.isin(others, top)) < len(others)

  c = np.array([0.3, -0.2, 0.1])
  at = lam / 2
  logits = got @ at + log_weight
  w = special.softmax(logits)
  f, grad, hess = jax.jit(dual._evaluate)(sample, jnp.asarray(c), jnp.asarray(at))
  np.testing.assert_allclose(float(f), special.logsumexp(logits) - np.log(sample.n) - at @ c, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(grad), w @ got - c, rtol=1e-11, atol=1e-12)
  np.testing.assert_allclose(np.asarray(hess), np.cov(got.T, aweights=w, bias=True), rtol=1e-10, atol=1e-12)
  if sample.stream is not None:
    chord_f, chord_grad, none = dual._evaluate_streamed(sample, jnp.asarray(c), jnp.asarray(at), hessian=False)
    assert none is None
    np.testing.assert_allclose(float(chord_f), float(f), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(chord_grad), np.asarray(grad), rtol=1e-13, atol=1e-15)


def test_a_palette_whose_weight_sits_on_few_rows_starts_from_the_heaviest_rows_and_finds_scipys_lambda(
  reference_rewards,
):
  """Past 262,144 rows of 12 values, palettes near the 75% quantile put their weight on few rows: Newton also
  solves on the heavy rows' sample and starts all rows from there when that is lower on all rows (it is,
  for some palette here). λ is SciPy's, with the KKT residual of a float64 solve, and the same under vmap (which
  skips that start and forms the Hessian at every step, where one palette alone takes chord steps)."""
  R = large_pilot(reference_rewards, 8 * feas.COARSE_ROWS + 1000, 12)
  pilot = prepare_pilot(jnp.asarray(R))
  subset = jax.jit(functools.partial(dual._newton, tol=1e-12, max_iter=50, max_evals=20, ridge=1e-14))
  full = jax.jit(functools.partial(dual._newton, tol=1e-12, max_iter=50, max_evals=20, ridge=1e-14))
  taken = 0
  palettes = palettes_between_mean_and_q75(R, 3, seed=4)
  for c in palettes:
    c_std = (jnp.asarray(c) - pilot.mean) / pilot.scale
    first = subset(pilot.coarse, c_std, jnp.zeros(12))
    converged = float(first.residual) <= 1e-12
    ess = float(dual._tilted(pilot.coarse, first.lam)[2]) * len(R) / pilot.coarse.n
    if not converged or ess < dual._HEAVY_MAX_ESS:
      lam0 = first.lam if converged else jnp.zeros(12)
      second = full(dual._heavy_rows(pilot.rows, dual._logits(pilot.rows, first.lam)), c_std, lam0)
      after = jax.nn.logsumexp(dual._logits(pilot.rows, second.lam)) - jnp.dot(second.lam, c_std)
      before = jax.nn.logsumexp(dual._logits(pilot.rows, lam0)) - jnp.dot(lam0, c_std)
      taken += bool(second.residual <= 1e-12) and bool(after < before)
    sol = solve_dual(pilot, jnp.asarray(c))
    assert bool(sol.feasible) and bool(sol.converged)
    assert kkt_residual64(R, c, np.asarray(sol.lam)) < 1e-10
    np.testing.assert_allclose(np.asarray(sol.lam), scipy_lambda(R, c), rtol=1e-4, atol=1e-4 * float(sol.lam.max()))
  assert taken > 0
  batched = jax.vmap(solve_dual, in_axes=(None, 0))(pilot, jnp.asarray(palettes))
  single = np.stack([np.asarray(solve_dual(pilot, jnp.asarray(c)).lam) for c in palettes])
  np.testing.assert_allclose(np.asarray(batched.lam), single, rtol=1e-8, atol=1e-12)


def _intermediate_sizes(jaxpr) -> list[tuple[int, str]]:
  """(size, primitive) of every value computed in a jaxpr, its sub-jaxprs (loops, conditionals) included."""
  out = []
  for eqn in jaxpr.eqns:
    out += [(int(np.prod(v.aval.shape)), str(eqn.primitive)) for v in eqn.outvars if hasattr(v.aval, "shape")]
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          out += _intermediate_sizes(inner)
  return out


@pytest.mark.parametrize("n, m", [(4_000_000, 12), (20_000_000, 6)])
def test_no_solve_materialises_more_than_a_few_copies_of_the_rewards(n, m):
  """On an abstract pilot set too large for the moment table, preparing and solving (also a batch of palettes)
  compute nothing of n × m × m or n × n entries: every intermediate is at most the size of R (padded to whole
  blocks of rows), times the batch."""
  assert n * (m + m * (m + 1) // 2) > dual._MOMENT_TABLE_MAX_ENTRIES
  rewards = jax.ShapeDtypeStruct((n, m), jnp.float32)
  padded = -(-n // dual._BLOCK_ROWS) * dual._BLOCK_ROWS
  single = jax.make_jaxpr(solve_dual)(rewards, jax.ShapeDtypeStruct((m,), jnp.float32))
  batch = 4
  batched = jax.make_jaxpr(lambda r, c: jax.vmap(lambda ci: solve_dual(r, ci))(c))(
    rewards, jax.ShapeDtypeStruct((batch, m), jnp.float32)
  )
  for jaxpr, limit in [(single.jaxpr, padded * m), (batched.jaxpr, batch * padded * m)]:
    sizes = _intermediate_sizes(jaxpr)
    assert len(sizes) > 100
    largest = max(sizes)
    assert largest[0] <= limit, largest


def test_a_start_from_the_previous_palette_gives_the_same_lambda_in_fewer_newton_steps(reference_rewards):
  """A slider drag from the pilot mean towards the 95% quantile in 40 small moves, each solve started from the
  previous palette's solution (its λ and LP basis); a far or non-finite λ still finds the same λ, and a start of
  the wrong shape is refused."""
  R = jnp.asarray(reference_rewards)
  pilot = prepare_pilot(R)
  c0, q95 = reference_rewards.mean(0), np.quantile(reference_rewards, 0.95, axis=0)
  solve = jax.jit(solve_dual)
  previous, cold_steps, warm_steps, verdicts = None, 0, 0, set()
  for t in np.linspace(0.05, 1.0, 40):
    c = jnp.asarray(c0 + t * (q95 - c0))
    cold = solve(pilot, c)
    warm = solve(pilot, c, start=previous) if previous is not None else cold
    assert bool(warm.feasible) == bool(cold.feasible) and bool(warm.converged) and bool(cold.converged)
    np.testing.assert_allclose(np.asarray(warm.lam), np.asarray(cold.lam), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(float(warm.margin), float(cold.margin), atol=1e-10)
    cold_steps, warm_steps = cold_steps + int(cold.num_steps), warm_steps + int(warm.num_steps)
    verdicts.add(bool(cold.feasible))
    previous = warm
  assert verdicts == {True, False}  # the drag crosses the feasible set's boundary
  assert warm_steps < 0.7 * cold_steps, (warm_steps, cold_steps)
  c = jnp.asarray(c0 + 0.5 * (q95 - c0))
  reference = np.asarray(solve(pilot, c).lam)
  for start in (np.full(6, 1e3), np.full(6, -1.0), np.full(6, np.nan)):
    np.testing.assert_allclose(np.asarray(solve(pilot, c, start=jnp.asarray(start)).lam), reference, rtol=1e-8)
  with pytest.raises(ValueError, match=r"start must be a solution or a λ of shape \(6,\)"):
    solve_dual(pilot, c, start=jnp.zeros(5))
  with pytest.raises(ValueError, match=r"start's lp_basis must have shape \(7,\)"):
    solve_dual(pilot, c, start=previous._replace(lp_basis=jnp.zeros(6, jnp.int32)))
