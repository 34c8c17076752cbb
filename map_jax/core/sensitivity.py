"""The trade-off matrices of a palette: dλ/dc and d realized/dc of the MAP solution.

The derivative of ``solve_dual`` comes from the optimality condition
(:mod:`map_jax.core.implicit`), not from its iterations; this module only asks JAX for
the Jacobian of the solution with respect to the palette.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from map_jax.core import implicit, validation
from map_jax.core.dual import solve_dual


def sensitivity(rewards: jax.Array, palette: jax.Array, *, tol: float | None = None, max_iter: int = 50):
  """Trade-off matrices of a palette: dλ/dc and d realized/dc, both (m, m).

  ``d_lam[i, k] = ∂λ_i / ∂c_k`` and ``d_realized[i, k] = ∂E_{p_λ}[r_i] / ∂c_k``: raising
  the target of value k by one unit moves value i's realized level by
  ``d_realized[i, k]``. Targeted (active) values follow their palette one for one;
  the rows of the others show what they gain or lose. ``tol`` and ``max_iter`` go to
  ``solve_dual``. Compiled once per shape.

  Raises:
    ValueError: (on concrete inputs) non-finite rewards or palette, or a covariance of the active values
      under p_λ that is singular (duplicated or collinear value columns), where dλ/dc is not defined; the
      message names the values involved.
  """
  concrete = validation.is_concrete(rewards, palette)
  if concrete:
    r = validation.check_rewards(rewards)
    validation.check_palette(palette, r.shape[1])
  d_lam, d_realized = _sensitivity(rewards, palette, tol=tol, max_iter=max_iter)
  if concrete:
    _check_active_covariance(rewards, palette, tol=tol, max_iter=max_iter)
  return d_lam, d_realized


@functools.partial(jax.jit, static_argnames=("tol", "max_iter"))
def _sensitivity(rewards, palette, *, tol, max_iter):
  rewards = jnp.asarray(rewards)

  def outputs(c):
    sol = solve_dual(rewards, c, tol=tol, max_iter=max_iter)
    return sol.lam, sol.realized

  return jax.jacobian(outputs)(jnp.asarray(palette, rewards.dtype))


def _check_active_covariance(rewards, palette, *, tol, max_iter) -> None:
  """Raise when Cov_{p_λ}(r) restricted to the active values is singular to working precision."""
  rewards = jnp.asarray(rewards)
  lam = solve_dual(rewards, jnp.asarray(palette, rewards.dtype), tol=tol, max_iter=max_iter).lam
  active = np.flatnonzero(np.asarray(lam) > 0)
  if active.size < 2:
    return
  _, _, cov = implicit.tilted_moments(rewards, lam)
  block = np.asarray(cov, np.float64)[np.ix_(active, active)]
  d = np.sqrt(np.clip(np.diag(block), np.finfo(np.float64).tiny, None))
  eig, vec = np.linalg.eigh(block / np.outer(d, d))  # the correlation matrix: scale-free
  if eig[0] > 100 * active.size * float(jnp.finfo(rewards.dtype).eps) * eig[-1]:
    return
  involved = [int(active[i]) for i in np.flatnonzero(np.abs(vec[:, 0]) > 0.1)]
  raise ValueError(
    f"the covariance of the active value columns {involved} under p_λ is singular (they are duplicated or "
    "collinear on the pilot set), so dλ/dc is not defined there; drop or merge those columns."
  )


__all__ = ["sensitivity"]
