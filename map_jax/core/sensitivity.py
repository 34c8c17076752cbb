"""The trade-off matrices of a palette: dλ/dc and d realized/dc of the MAP solution.

The derivative of ``solve_dual`` comes from the optimality condition
(:mod:`map_jax.core.implicit`), not from its iterations; this module only asks JAX for
the Jacobian of the solution with respect to the palette.
"""

import functools

import jax
import jax.numpy as jnp

from map_jax.core.dual import solve_dual


@functools.partial(jax.jit, static_argnames=("tol", "max_iter"))
def sensitivity(rewards: jax.Array, palette: jax.Array, *, tol: float | None = None, max_iter: int = 50):
  """Trade-off matrices of a palette: dλ/dc and d realized/dc, both (m, m).

  ``d_lam[i, k] = ∂λ_i / ∂c_k`` and ``d_realized[i, k] = ∂E_{p_λ}[r_i] / ∂c_k``: raising
  the target of value k by one unit moves value i's realized level by
  ``d_realized[i, k]``. Targeted (active) values follow their palette one for one;
  the rows of the others show what they gain or lose. ``tol`` and ``max_iter`` go to
  ``solve_dual``. Compiled once per shape.
  """
  rewards = jnp.asarray(rewards)

  def outputs(c):
    sol = solve_dual(rewards, c, tol=tol, max_iter=max_iter)
    return sol.lam, sol.realized

  return jax.jacobian(outputs)(jnp.asarray(palette, rewards.dtype))


__all__ = ["sensitivity"]
