"""The feasibility LP (revised simplex) against SciPy's HiGHS, on random and degenerate data."""

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
  palettes = [rewards[3], rewards[3] + 1e-3, 0.5 * (rewards[3] + rewards[7]),
              np.array([rewards[:, 0].max(), rewards[:, 1].max(), 0.25]),
              np.array([0.0, 0.0, 0.25]), np.array([0.0, 0.0, 0.26])]
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


def collatz_cond(consts, s):
  x, k = s
  return (x != 1) & (k < consts["cap"])


def collatz_body(consts, s):
  """Collatz orbits: lanes need very different numbers of iterations."""
  x, k = s
  return jnp.where(x % 2 == 0, x // 2, 3 * x + consts["step"]), k + 1


@pytest.mark.parametrize("batch", [3, 17, 100, 1000])
def test_compacting_while_loop_equals_while_loop_under_vmap(batch):
  cond, body = collatz_cond, collatz_body
  starts = jnp.arange(1, batch + 1) * 7 + 1
  caps = jnp.arange(batch) % 50 + 60   # batched consts for some lanes' caps
  def plain(x, cap):
    consts = {"cap": cap, "step": 1}
    return jax.lax.while_loop(lambda s: cond(consts, s), lambda s: body(consts, s), (x, 0))

  def compact(x, cap):
    return feasibility_lib.compacting_while_loop(cond, body, {"cap": cap, "step": 1}, (x, 0))

  for in_axes in [(0, 0), (0, None)]:
    cap_arg = caps if in_axes[1] == 0 else jnp.asarray(70)
    want = jax.jit(jax.vmap(plain, in_axes=in_axes))(starts, cap_arg)
    got = jax.jit(jax.vmap(compact, in_axes=in_axes))(starts, cap_arg)
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
    assert len(np.unique(np.asarray(want[1]))) > min(batch, 3) - 1
  # Unbatched, and nested under two vmaps, it is still the plain loop.
  np.testing.assert_array_equal(np.asarray(compact(starts[5], 70)), np.asarray(plain(starts[5], 70)))
  grid = starts.reshape(1, -1)
  nested = jax.jit(jax.vmap(jax.vmap(compact, in_axes=(0, None)), in_axes=(0, None)))(grid, 70)
  np.testing.assert_array_equal(np.asarray(nested[1])[0],
                                np.asarray(jax.vmap(plain, in_axes=(0, None))(starts, 70)[1]))
