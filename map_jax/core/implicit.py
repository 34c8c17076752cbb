"""The implicit-differentiation rule of the MAP solution λ(c, R): the optimality condition, not the solver.

At the optimum the active coordinates F = {i : λ_i > 0} satisfy the optimality
condition E_{p_λ}[r_i] = c_i, and the others stay at λ_i = 0. Differentiating the
condition (the implicit function theorem, as in ``jax.lax.custom_root``) gives

    Cov_{p_λ}(r)_FF dλ_F = dc_F − (∂E_{p_λ}[r] / ∂R · dR)_F,      dλ_i = 0 for i ∉ F,

so dλ/dc = (Cov_FF)⁻¹ on the active block and 0 elsewhere. (The MAP paper prints
−V⁻¹; the sign here is the one the implicit function theorem and finite differences
give.) The iterations of the solver are never differentiated: the solver attaches this
rule to its output (`attach_implicit_grad`), and this module never imports the solver.
"""

import jax
import jax.numpy as jnp


def tilted_moments(rewards: jax.Array, lam: jax.Array):
  """Weights w = softmax(Rλ), mean Rᵀw and covariance Cov_w(R) of the tilted pilot set."""
  w = jax.nn.softmax(rewards @ lam)
  mean = w @ rewards
  centered = rewards - mean
  cov = (centered * w[:, None]).T @ centered
  return w, mean, cov


@jax.custom_jvp
def attach_implicit_grad(rewards: jax.Array, palette: jax.Array, lam: jax.Array) -> jax.Array:
  """Returns ``lam`` unchanged; its derivative is that of the exact solution λ(c, R).

  ``lam`` must be the solver's output computed under ``stop_gradient``: this identity
  carries the implicit derivative so the solver runs once, in the primal only.
  """
  del rewards, palette
  return lam


@attach_implicit_grad.defjvp
def _attach_implicit_grad_jvp(primals, tangents):
  rewards, palette, lam = primals
  d_rewards, d_palette, _ = tangents  # lam's own tangent is zero by construction.
  w, mean, cov = tilted_moments(rewards, lam)
  active = lam > 0
  # Change of E_w[R] at fixed λ when R moves: dRᵀw + Cov-like term from dw.
  d_logits = d_rewards @ lam
  d_w = w * (d_logits - jnp.dot(w, d_logits))
  d_mean_fixed = d_rewards.T @ w + rewards.T @ d_w
  rhs = jnp.where(active, d_palette - d_mean_fixed, 0.0)
  d_lam = jnp.where(active, _masked_solve(cov, active, rhs), 0.0)
  return lam, d_lam


def _masked_solve(matrix: jax.Array, mask: jax.Array, rhs: jax.Array) -> jax.Array:
  """Solves matrix[F, F] x_F = rhs_F for F = mask with static shapes (identity elsewhere)."""
  both = mask[:, None] & mask[None, :]
  reduced = jnp.where(both, matrix, 0.0) + jnp.diag(jnp.where(mask, 0.0, 1.0))
  return jnp.linalg.solve(reduced, jnp.where(mask, rhs, 0.0))


@jax.jit
def inverse_covariance_on_active(rewards: jax.Array, lam: jax.Array) -> jax.Array:
  """The closed form of dλ/dc: (Cov_{p_λ})_FF⁻¹ on the active set F, zero elsewhere."""
  _, _, cov = tilted_moments(rewards, lam)
  active = lam > 0
  m = lam.shape[0]
  cols = jax.vmap(lambda e: _masked_solve(cov, active, e), in_axes=1, out_axes=1)(jnp.eye(m, dtype=cov.dtype))
  return jnp.where(active[:, None] & active[None, :], cols, 0.0)
