"""compacting_while_loop: under vmap, the same answers as lax.while_loop, lane by lane."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from map_jax.core import loops


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
  caps = jnp.arange(batch) % 50 + 60  # batched consts for some lanes' caps

  def plain(x, cap):
    consts = {"cap": cap, "step": 1}
    return jax.lax.while_loop(lambda s: cond(consts, s), lambda s: body(consts, s), (x, 0))

  def compact(x, cap):
    return loops.compacting_while_loop(cond, body, {"cap": cap, "step": 1}, (x, 0))

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
  np.testing.assert_array_equal(np.asarray(nested[1])[0], np.asarray(jax.vmap(plain, in_axes=(0, None))(starts, 70)[1]))
