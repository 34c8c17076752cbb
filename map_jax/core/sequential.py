"""Sequential MAP: align one value at a time, cycling through the values (coordinate ascent on the dual).

Aligning the values one after another is what one does with a single-value method:
step k takes the current model p_λ ∝ p0 exp(λᵀr) and tilts it in value i alone until
E[r_i] reaches c_i (or leaves it if it already does),

.. math::

   λ_i \\leftarrow \\arg\\max_{t \\ge 0} \\; t c_i − \\log \\frac{1}{n}\\sum_j
   \\exp(λ_{-i}ᵀR_{j,-i} + t R_{ji}),

which is exact coordinate ascent on the MAP dual g(λ). Raising one value typically
lowers the others that the previous steps had reached, so one round (one pass over
the values) ends short of the palette; repeated rounds converge to the joint optimum
of :func:`map_jax.core.dual.solve_dual` for a feasible palette (g is concave and
smooth, and the coordinate maximisers are unique where Var_{p_λ}(r_i) > 0). The MAP
paper's Figure 9 compares one round with five.

Each 1-D step solves E_{p_λ}[r_i] = c_i by a safeguarded Newton iteration (Newton on
the increasing function t ↦ E[r_i] − c_i, falling back to bisection of a bracket that
is grown by doubling), written with ``lax.while_loop``; rounds × values is one
``lax.scan``.
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Standardized units: a 1-D step beyond this means c_i is at or above max_j R_ji,
# where E[r_i] < c_i for every finite step and the maximiser does not exist.
_MAX_STEP = 1e6


class SequentialSolution(NamedTuple):
  """Result of :func:`sequential_solve` (a pytree; batched under ``vmap``).

  Attributes:
    lam: λ after the last step (m,).
    trajectory: λ after every step, shape (rounds, len(order), m); ``trajectory[r, k]``
      is λ after aligning value ``order[k]`` in round r.
    realized: E_{p_λ}[r] on the pilot set after each round, (rounds, m).
    dual_value: g(λ) after each round, (rounds,); non-decreasing.
    kkt_residual: after each round, max_i |min(σ_i λ_i, (realized_i − c_i) / σ_i)|
      with σ the pilot standard deviations, as in :class:`~map_jax.core.dual.DualSolution`
      (0 exactly at the joint optimum).
    converged: whether the final KKT residual is <= ``tol``.
  """

  lam: jax.Array
  trajectory: jax.Array
  realized: jax.Array
  dual_value: jax.Array
  kkt_residual: jax.Array
  converged: jax.Array


class _Line(NamedTuple):
  lo: jax.Array  # a step with E[z] < c (or 0)
  hi: jax.Array  # a step with E[z] >= c (inf: none found yet)
  t: jax.Array  # current iterate
  h: jax.Array  # E_t[z] − c at t
  var: jax.Array  # Var_t(z) = dh/dt at t
  k: jax.Array


def _tilted_mean_var(base, z, t):
  """Mean and variance of z under weights softmax(base + t z)."""
  w = jax.nn.softmax(base + t * z)
  mean = jnp.dot(w, z)
  var = jnp.dot(w, jnp.square(z - mean))
  return mean, var


def _line_solve(base, z, c, *, tol, max_iter):
  """max_{t >= 0} t c − logsumexp(base + t z): the root of E_t[z] = c, or 0.

  E_t[z] increases with t (its derivative is Var_t(z)), so the root is bracketed by
  [lo, hi] with E_lo[z] < c <= E_hi[z]. Newton steps are taken when they stay inside
  the bracket; otherwise the bracket is bisected, or grown by doubling while no upper
  end is known.
  """
  dtype = z.dtype
  eps = jnp.finfo(dtype).eps

  def cond(s):
    short = (s.h < -tol) | ((s.h > tol) & (s.t > 0))
    return short & (s.hi - s.lo > 4 * eps * (1.0 + s.t)) & (s.k < max_iter)

  def body(s):
    lo = jnp.where(s.h < 0, s.t, s.lo)
    hi = jnp.where(s.h < 0, s.hi, s.t)
    newton = s.t - s.h / s.var
    inside = jnp.isfinite(newton) & (newton > lo) & (newton < hi)
    fallback = jnp.where(jnp.isfinite(hi), 0.5 * (lo + hi), 2.0 * lo + 1.0)
    t = jnp.minimum(jnp.where(inside, newton, fallback), _MAX_STEP)
    mean, var = _tilted_mean_var(base, z, t)
    # Still short of c at the cap: the maximiser does not exist, stop there.
    k = jnp.where((t >= _MAX_STEP) & (mean < c), max_iter, s.k + 1)
    return _Line(lo, hi, t, mean - c, var, k)

  # t = 0 is optimal when the value is already reached: then the loop does not run.
  mean0, var0 = _tilted_mean_var(base, z, jnp.zeros((), dtype))
  init = _Line(
    jnp.zeros((), dtype), jnp.asarray(jnp.inf, dtype), jnp.zeros((), dtype), mean0 - c, var0, jnp.zeros((), jnp.int32)
  )
  return jax.lax.while_loop(cond, body, init).t


def sequential_solve(
  rewards: jax.Array,
  palette: jax.Array,
  *,
  rounds: int,
  order: Sequence[int] | None = None,
  init: jax.Array | None = None,
  tol: float | None = None,
  line_tol: float | None = None,
  max_line_iter: int = 100,
) -> SequentialSolution:
  """Aligns one value at a time, ``rounds`` times over the values.

  Runs ``rounds`` cycles of exact coordinate ascent on the MAP dual (see the module
  docstring): each step sets λ_i to the smallest λ_i >= 0 with E_{p_λ}[r_i] >= c_i,
  i.e. aligns value i relative to the current tilted model.

  If c_i >= max_j R_ji, no finite step reaches value i; its λ_i stops at a large cap
  and ``converged`` is False. For an infeasible palette λ grows without bound over the
  rounds (check with :func:`map_jax.core.feasibility.feasibility` first).

  Args:
    rewards: pilot reward matrix R, shape (n, m).
    palette: target levels c, shape (m,).
    rounds: number of passes over the values (static).
    order: value indices in the order they are aligned within a round (static); may
      omit or repeat values. Defaults to 0, 1, ..., m − 1.
    init: λ to start from (m,), e.g. a previous result; defaults to 0 (the base model).
    tol: KKT residual below which ``converged`` is True; defaults to 1e-10 in float64
      and 1e-4 in float32.
    line_tol: tolerance on (E[r_i] − c_i) / σ_i in each 1-D step; defaults to 1e-14
      in float64 and 1e-6 in float32.
    max_line_iter: iteration cap of each 1-D step.

  Returns:
    A :class:`SequentialSolution`.

  Example:
    >>> R = jnp.array([[0., 1.], [1., 0.], [1., 1.], [0., 0.]])
    >>> sol = sequential_solve(R, jnp.array([0.6, 0.6]), rounds=20)
    >>> bool(sol.converged), bool(jnp.allclose(sol.realized[-1], 0.6, atol=1e-5))
    (True, True)
  """
  rewards = jnp.asarray(rewards)
  if not jnp.issubdtype(rewards.dtype, jnp.floating):
    rewards = rewards.astype(jnp.result_type(float))
  dtype = rewards.dtype
  if rewards.ndim != 2:
    raise ValueError(f"rewards must be a matrix (n, m); got shape {rewards.shape}.")
  n, m = rewards.shape
  palette = jnp.asarray(palette, dtype)
  if palette.shape != (m,):
    raise ValueError(f"palette must have shape ({m},); got {palette.shape}.")
  if not isinstance(rounds, int) or rounds < 1:
    raise ValueError(f"rounds must be a positive int; got {rounds!r}.")
  order = list(range(m)) if order is None else [int(i) for i in order]
  if not order or any(not 0 <= i < m for i in order):
    raise ValueError(f"order must list value indices in [0, {m}); got {order}.")
  f64 = dtype == jnp.float64
  if tol is None:
    tol = 1e-10 if f64 else 1e-4
  if line_tol is None:
    line_tol = 1e-14 if f64 else 1e-6

  # Coordinate ascent is invariant to rescaling each coordinate, so the steps are taken
  # in standardized units (z = (R − μ) / σ, τ = σ λ) for well-conditioned 1-D solves.
  mean = jnp.mean(rewards, axis=0)
  std = jnp.std(rewards, axis=0)
  scale = jnp.where(std > 0, std, 1.0)
  z = (rewards - mean) / scale
  target = (palette - mean) / scale
  tau0 = jnp.zeros((m,), dtype) if init is None else jnp.asarray(init, dtype) * scale

  def step(tau, i):
    col = z[:, i]
    base = z @ tau - tau[i] * col
    t = _line_solve(base, col, target[i], tol=line_tol, max_iter=max_line_iter)
    tau = tau.at[i].set(t)
    return tau, tau / scale

  def one_round(tau, _):
    tau, lams = jax.lax.scan(step, tau, jnp.asarray(order))
    lam = tau / scale
    w = jax.nn.softmax(rewards @ lam)
    realized = w @ rewards
    dual = jnp.dot(lam, palette) - jax.nn.logsumexp(rewards @ lam) + jnp.log(n)
    residual = jnp.max(jnp.abs(jnp.minimum(tau, (realized - palette) / scale)))
    return tau, (lams, realized, dual, residual)

  tau, (trajectory, realized, dual, residual) = jax.lax.scan(one_round, tau0, None, length=rounds)
  return SequentialSolution(
    lam=tau / scale,
    trajectory=trajectory,
    realized=realized,
    dual_value=dual,
    kkt_residual=residual,
    converged=residual[-1] <= tol,
  )
