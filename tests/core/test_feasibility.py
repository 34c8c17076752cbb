"""The feasibility LP (revised simplex) against SciPy's HiGHS, on random and degenerate data."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from map_jax.core import feasibility as feasibility_lib
from map_jax.core.feasibility import feasibility

from .test_dual import lp_margin as highs_margin  # HiGHS via scipy.optimize.linprog


def check_bracket(rewards, palette, out, atol):
  """Everything a Feasibility claims, checked in float64 NumPy."""
  margin = highs_margin(rewards, palette)
  d = np.asarray(out.certificate, np.float64)
  q = np.asarray(out.mixture, np.float64)
  assert np.all(d >= 0) and abs(d.sum() - 1) < 1e-6
  assert np.all(q >= 0) and abs(q.sum() - 1) < 1e-6
  # The certificate bounds the margin from above, the mixture from below.
  np.testing.assert_allclose(float(out.upper), np.max((rewards - palette) @ d), atol=atol)
  np.testing.assert_allclose(float(out.lower), np.min(q @ rewards - palette), atol=atol)
  assert float(out.lower) - atol <= margin <= float(out.upper) + atol
  np.testing.assert_allclose(float(out.margin), margin, atol=atol)
  assert bool(out.feasible) == (margin >= 0) or abs(margin) <= atol
  if not bool(out.feasible):
    assert np.max(rewards @ d) < d @ palette


@pytest.mark.parametrize("seed", range(6))
def test_random_problems_match_highs(seed):
  rng = np.random.default_rng(seed)
  n, m = [(40, 2), (300, 3), (500, 6), (64, 8), (1000, 4), (7, 5)][seed]
  rewards = rng.normal(size=(n, m)) * rng.uniform(0.1, 10, m)
  palettes = rewards.mean(0) + rng.uniform(-0.3, 1.2, (20, m)) * (rewards.max(0) - rewards.mean(0))
  outs = jax.jit(jax.vmap(lambda c: feasibility(jnp.asarray(rewards), c)))(jnp.asarray(palettes))
  assert np.all(np.asarray(outs.converged))
  for k, c in enumerate(palettes):
    check_bracket(rewards, c, jax.tree.map(lambda a: a[k], outs), atol=1e-9)


def test_partial_pricing_on_more_row_blocks_than_the_pool_matches_highs():
  """n = 20,000 rows of 12 values: more row blocks than the pool holds, so the pool is refilled by passes
  over all rows; margins, bounds and certificates as HiGHS says, also where the optimum needs many pivots."""
  rng = np.random.default_rng(11)
  n, m = 20_000, 12
  rewards = rng.normal(size=(n, m)) @ rng.normal(size=(m, m)) * 0.3 + rng.normal(size=(n, m))
  assert feasibility_lib.prepare(jnp.asarray(rewards)).blocks.shape[2] > feasibility_lib._POOL
  reach = np.linspace(0.2, 0.7, 8)[:, None] * rng.uniform(0.9, 1.1, (8, m))  # from easy to unreachable
  palettes = rewards.mean(0) + reach * (rewards.max(0) - rewards.mean(0))
  outs = jax.jit(jax.vmap(feasibility, in_axes=(None, 0)))(jnp.asarray(rewards), jnp.asarray(palettes))
  assert np.all(np.asarray(outs.converged)) and np.max(np.asarray(outs.num_steps)) > 2 * m
  assert 0 < np.sum(np.asarray(outs.feasible)) < len(palettes)  # both kinds of answer
  for k, c in enumerate(palettes):
    check_bracket(rewards, c, jax.tree.map(lambda a: a[k], outs), atol=1e-9)


def test_reference_data_float32_and_float64(reference_rewards):
  rng = np.random.default_rng(7)
  c0, b = reference_rewards.mean(0), reference_rewards.max(0)
  palettes = c0 + rng.uniform(-0.2, 1.1, (12, 6)) * (b - c0)
  for dtype, atol in [(jnp.float64, 1e-9), (jnp.float32, 1e-4)]:
    r = jnp.asarray(reference_rewards, dtype)
    outs = jax.jit(jax.vmap(lambda c: feasibility(r, c)))(jnp.asarray(palettes, dtype))
    assert outs.margin.dtype == dtype and np.all(np.asarray(outs.converged))
    for k, c in enumerate(palettes):
      check_bracket(reference_rewards, c, jax.tree.map(lambda a: a[k], outs), atol=atol)


def test_degenerate_data():
  """Duplicate rows, a dominated copy, a constant column and targets on sample values."""
  rng = np.random.default_rng(11)
  base = rng.normal(size=(30, 3))
  rewards = np.r_[base, base[:10], base[:5] - 1.0]
  rewards[:, 2] = 0.25
  palettes = [
    rewards[3],
    rewards[3] + 1e-3,
    0.5 * (rewards[3] + rewards[7]),
    np.array([rewards[:, 0].max(), rewards[:, 1].max(), 0.25]),
    np.array([0.0, 0.0, 0.25]),
    np.array([0.0, 0.0, 0.26]),
  ]
  for c in palettes:
    out = feasibility(jnp.asarray(rewards), jnp.asarray(c))
    assert bool(out.converged)
    check_bracket(rewards, c, out, atol=1e-9)
  # A target equal to a sample's reward is reachable (margin exactly 0 on that value).
  assert bool(feasibility(jnp.asarray(rewards), jnp.asarray(palettes[0])).feasible)


def test_two_points():
  r = jnp.array([[0.0, 1.0], [1.0, 0.0]])
  out = feasibility(r, jnp.array([0.6, 0.6]))
  assert not bool(out.feasible)
  np.testing.assert_allclose(float(out.margin), -0.1, atol=1e-12)
  np.testing.assert_allclose(np.asarray(out.certificate), [0.5, 0.5], atol=1e-12)
  out = feasibility(r, jnp.array([0.3, 0.5]))
  np.testing.assert_allclose(float(out.margin), 0.1, atol=1e-12)
  np.testing.assert_allclose(np.asarray(out.mixture), [0.6, 0.4], atol=1e-12)


def test_pivot_cap_still_certifies(reference_rewards):
  """Stopped early, the bracket is loose but both of its ends remain certified."""
  c = reference_rewards.mean(0) + 0.6 * (reference_rewards.max(0) - reference_rewards.mean(0))
  c[3:] = reference_rewards.mean(0)[3:]
  full = feasibility(jnp.asarray(reference_rewards), jnp.asarray(c))
  assert int(full.num_steps) > 2
  early = feasibility(jnp.asarray(reference_rewards), jnp.asarray(c), max_iter=2)
  assert int(early.num_steps) == 2 and not bool(early.converged)
  margin = highs_margin(reference_rewards, c)
  assert float(early.lower) <= margin + 1e-12 and margin <= float(early.upper) + 1e-12
  d, q = np.asarray(early.certificate), np.asarray(early.mixture)
  np.testing.assert_allclose(float(early.upper), np.max((reference_rewards - c) @ d), atol=1e-12)
  np.testing.assert_allclose(float(early.lower), np.min(q @ reference_rewards - c), atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 7, 48, 49, 2312])
def test_blocked_argmax_finds_the_most_violated_row(n):
  rng = np.random.default_rng(n)
  S = jnp.asarray(rng.normal(size=(n, 4)))
  blocks, ids = feasibility_lib._row_blocks(S)
  for d in rng.dirichlet(np.ones(4), 5):
    j, top = feasibility_lib._most_violated(blocks, ids, jnp.asarray(d))
    assert 0 <= int(j) < n
    np.testing.assert_allclose(float(top), np.max(np.asarray(S) @ d), rtol=1e-12)
    np.testing.assert_allclose(float(S[j] @ d), float(top), rtol=1e-12)


@pytest.mark.parametrize("i0", [0, 2, 4])
def test_initial_basis_inverse_is_the_inverse(i0):
  """The written-out inverse of the starting basis (t, one row, m − 1 slacks)."""
  rng = np.random.default_rng(i0)
  prepared = feasibility_lib.prepare(jnp.asarray(rng.normal(size=(30, 5))))
  j0 = 7
  basis = jnp.asarray([n + i if i != i0 else j0 for i in range(5) for n in [30]])
  matrix = jnp.concatenate(
    [jnp.concatenate([-jnp.ones((5, 1)), jnp.zeros((1, 1))]), feasibility_lib._columns(prepared, basis).T], axis=1
  )
  inv = feasibility_lib._initial_inverse(feasibility_lib._rows(prepared, j0), jnp.asarray(i0))
  np.testing.assert_allclose(np.asarray(inv) @ np.asarray(matrix), np.eye(6), atol=1e-12)


def test_a_start_from_the_previous_basis_gives_the_same_bracket_in_fewer_pivots(reference_rewards):
  """The reference rows resampled with noise to four times as many (partial pricing): a slider drag from the
  pilot mean past the 97% quantile in 30 moves, each LP started from the previous palette's basis: every bracket
  is what HiGHS says and the drag crosses the feasible set's boundary, in far fewer pivots than starting afresh.
  Jumps between random palettes (a start far from optimal), bases that are no basis (out of range, repeated,
  singular, of another pilot set) and a batch of starts under vmap give the same answers; a start of the wrong
  shape is refused. On the reference set itself (full pricing) a start is not used: the same pivots."""
  rng = np.random.default_rng(3)
  base = reference_rewards[rng.integers(0, len(reference_rewards), 4 * len(reference_rewards))]
  rewards = base + 0.05 * reference_rewards.std(0) * rng.standard_normal(base.shape)
  R = jnp.asarray(rewards)
  n, m = rewards.shape
  prepared = feasibility_lib.prepare(R)
  assert prepared.blocks.shape[2] > feasibility_lib._POOL
  solve = jax.jit(lambda c, start=None: feasibility(R, c, prepared=prepared, start=start))
  c0, q97 = rewards.mean(0), np.quantile(rewards, 0.97, axis=0)
  previous, cold_pivots, warm_pivots, verdicts = None, 0, 0, set()
  for t in np.linspace(0.05, 1.0, 30):
    c = c0 + t * (q97 - c0)
    cold = solve(jnp.asarray(c))
    warm = solve(jnp.asarray(c), previous.basis) if previous is not None else cold
    check_bracket(rewards, c, warm, atol=1e-9)
    cold_pivots, warm_pivots = cold_pivots + int(cold.num_steps), warm_pivots + int(warm.num_steps)
    verdicts.add(bool(warm.feasible))
    previous = warm
  assert verdicts == {True, False}
  assert warm_pivots < 0.2 * cold_pivots, (warm_pivots, cold_pivots)

  palettes = c0 + rng.uniform(-0.5, 1.2, (12, m)) * (q97 - c0)
  outs = jax.vmap(solve)(jnp.asarray(palettes))
  jumps = jax.vmap(solve)(jnp.asarray(palettes), jnp.roll(outs.basis, 1, axis=0))  # each from another's optimum
  other = feasibility(jnp.asarray(rng.normal(size=(n, m))), jnp.zeros(m)).basis
  odd = [np.r_[-1, n + np.arange(m)], np.r_[-1, np.arange(m) + 10**9], np.full(m + 1, -5), np.zeros(m + 1), other]
  for k, c in enumerate(palettes):
    check_bracket(rewards, c, jax.tree.map(lambda a: a[k], jumps), atol=1e-9)
    check_bracket(rewards, c, solve(jnp.asarray(c), jnp.asarray(odd[k % len(odd)], jnp.int32)), atol=1e-9)
  with pytest.raises(ValueError, match=r"start must be a basis of shape \(7,\)"):
    feasibility(R, jnp.asarray(c0), start=jnp.zeros(m, jnp.int32))

  small = jnp.asarray(reference_rewards)
  c = jnp.asarray(reference_rewards.mean(0) + 0.5 * (q97 - c0))
  near = feasibility(small, c + 0.01)
  assert int(feasibility(small, c, start=near.basis).num_steps) == int(feasibility(small, c).num_steps) > 2


def test_a_large_pilot_set_starts_from_the_subsets_basis_and_matches_highs():
  """On more than 8 × COARSE_ROWS rows the simplex starts from the optimal basis on every k-th row: the answers
  are still HiGHS's, also where only rows outside the subset reach the palette (the subset calls it
  infeasible), and the same as a start from the best single sample (no subset)."""
  rng = np.random.default_rng(5)
  n, m = 8 * feasibility_lib.COARSE_ROWS + 1000, 4
  rewards = rng.normal(size=(n, m)) @ rng.normal(size=(m, m)) * 0.3 + rng.normal(size=(n, m))
  prepared = feasibility_lib.prepare(jnp.asarray(rewards))
  stride = prepared.stride
  assert prepared.coarse is not None and prepared.coarse.num_rows == n // stride
  outside = 7 * stride + 1  # a row the subset lacks, made the best in every value
  rewards[outside] = rewards.max(0) + 1.0
  prepared = feasibility_lib.prepare(jnp.asarray(rewards))
  subset = rewards[: stride * (n // stride) : stride]
  only_outside = 0.5 * (subset.max(0) + rewards[outside])
  reach = np.linspace(0.3, 0.8, 4)[:, None] * rng.uniform(0.9, 1.1, (4, m))
  beyond = rewards[outside] + 0.01  # past every row: infeasible
  palettes = np.concatenate([rewards.mean(0) + reach * (subset.max(0) - rewards.mean(0)), [only_outside, beyond]])
  assert highs_margin(subset, only_outside) < 0 < highs_margin(rewards, only_outside)
  solve = jax.jit(jax.vmap(lambda r, c, p: feasibility(r, c, prepared=p), in_axes=(None, 0, None)))
  outs = solve(jnp.asarray(rewards), jnp.asarray(palettes), prepared)
  without = solve(jnp.asarray(rewards), jnp.asarray(palettes), dataclasses.replace(prepared, coarse=None, stride=0))
  assert np.all(np.asarray(outs.converged))
  assert 0 < np.sum(np.asarray(outs.feasible)) < len(palettes)
  np.testing.assert_allclose(np.asarray(outs.margin), np.asarray(without.margin), atol=1e-9)
  for k, c in enumerate(palettes):
    check_bracket(rewards, c, jax.tree.map(lambda a: a[k], outs), atol=1e-9)
