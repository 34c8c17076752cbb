"""Exact feasibility of a value palette on a pilot set: margin, certificate, bounds, ESS.

A palette c is feasible on a pilot set of n samples with rewards R (n × m) iff some
distribution q over the samples reaches it, Rᵀq >= c. The *margin*

    margin(c) = max_{q ∈ Δ_n} min_i (Rᵀq − c)_i = min_{d ∈ Δ_m} max_j dᵀ(R_j − c)

(the two forms are LP duals of each other) is > 0 for a strictly feasible palette, for
which the MAP dual has a finite maximiser λ, and < 0 for an infeasible one. In the
second case the minimising d is a *certificate*: d >= 0 and max_j dᵀR_j < dᵀc, so no
mixture of the samples can reach c, which anyone can check in one line.

The LP has only m + 1 unknowns (d, t) and n + m inequalities,

    minimise t   s.t.   dᵀ(R_j − c) <= t  (j = 1..n),   d >= 0,   1ᵀd = 1,

and is solved here by cutting planes over a small working set of rows, each restricted
LP by a Mehrotra predictor–corrector interior-point method, all in plain JAX, so it
runs under ``jit`` and ``vmap`` over palettes. The multipliers of the first n
constraints are the mixture q of the primal form. Both bounds are reported:
``max_j dᵀ(R_j − c)`` (an upper bound on the margin, certified by d) and
``min_i (Rᵀq − c)_i`` (a lower bound, certified by q).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Feasibility(NamedTuple):
  """Result of :func:`feasibility` for one palette.

  Attributes:
    feasible: ``True`` unless ``certificate`` proves the palette unreachable.
    margin: ``max_q min_i (Rᵀq − c)_i`` in reward units; ``>= 0`` iff feasible.
    certificate: ``d`` in the simplex (m,). When infeasible, ``max_j dᵀR_j < dᵀc``.
    mixture: ``q`` in the simplex (n,), the best mixture of pilot samples.
    upper: ``max_j dᵀ(R_j − c)``, an upper bound on the margin.
    lower: ``min_i (Rᵀq − c)_i``, a lower bound on the margin.
    num_steps: interior-point iterations used, over all cutting-plane rounds.
    converged: whether ``upper − lower`` reached the tolerance.
  """
  feasible: jax.Array
  margin: jax.Array
  certificate: jax.Array
  mixture: jax.Array
  upper: jax.Array
  lower: jax.Array
  num_steps: jax.Array
  converged: jax.Array


def upper_bounds(rewards: jax.Array) -> jax.Array:
  """Per-value upper bounds B_i = max_j R[j, i]: no palette with c_i > B_i is feasible."""
  return jnp.max(rewards, axis=0)


def effective_sample_size(weights: jax.Array) -> jax.Array:
  """Kish's effective sample size 1 / Σ_j w_j² of normalised importance weights."""
  return 1.0 / jnp.sum(jnp.square(weights), axis=-1)


class _IPMState(NamedTuple):
  d: jax.Array   # (m,) certificate direction
  t: jax.Array   # () epigraph variable, the margin estimate
  s1: jax.Array  # (n,) slacks of t − dᵀ(R_j − c) >= 0
  s2: jax.Array  # (m,) slacks of d >= 0 (equal to d at a primal feasible point)
  z1: jax.Array  # (n,) multipliers of the first n constraints (the mixture q)
  z2: jax.Array  # (m,) multipliers of d >= 0
  nu: jax.Array  # () multiplier of 1ᵀd = 1
  k: jax.Array   # iteration counter
  # Every iterate, rounded to the simplices, certifies a bracket on the margin; the
  # tightest bounds seen so far are kept with the points that certify them.
  best_d: jax.Array
  best_upper: jax.Array
  best_q: jax.Array
  best_lower: jax.Array


def _max_step(v, dv):
  """Largest α <= 1 keeping v + α dv >= 0."""
  ratio = jnp.where(dv < 0, -v / jnp.where(dv < 0, dv, -1.0), jnp.inf)
  return jnp.minimum(1.0, jnp.min(ratio))


def _interior_point(S, SS, c, *, tol, max_iter):
  """Mehrotra predictor–corrector for min_{d ∈ Δ} max_j dᵀ(S_j − c) over the rows of S.

  ``SS`` holds the outer products S_j S_jᵀ (rows × m²). Returns the best certified
  (d, upper, q, lower, iterations) over the iterates, with d, q in their simplices.
  """
  n, m = S.shape
  dtype = S.dtype
  ones_n = jnp.ones((n,), dtype)

  def gx(d, t):
    """G x for x = (d, t): the constraint values dᵀ(S_j − c) − t and −d."""
    return S @ d - jnp.dot(c, d) - t, -d

  def gtz(v1, v2):
    """Gᵀ v: (Sᵀv1 − c Σv1 − v2, −Σv1)."""
    return S.T @ v1 - c * jnp.sum(v1) - v2, -jnp.sum(v1)

  def residuals(st):
    r_dd, r_dt = gtz(st.z1, st.z2)
    r_dd = r_dd + st.nu
    r_dt = r_dt + 1.0
    g1, g2 = gx(st.d, st.t)
    r_p1 = g1 + st.s1
    r_p2 = g2 + st.s2
    r_eq = jnp.sum(st.d) - 1.0
    return r_dd, r_dt, r_p1, r_p2, r_eq

  def bounds(st):
    """Rounds (d, z1) to the simplices and returns the bracket they certify."""
    d = jnp.maximum(st.d, 0.0)
    d = d / jnp.sum(d)
    q = jnp.maximum(st.z1, 0.0)
    q = q / jnp.sum(q)
    upper = jnp.max(S @ d) - jnp.dot(c, d)
    lower = jnp.min(S.T @ q - c)
    return d, upper, q, lower

  def keep_best(st):
    d, upper, q, lower = bounds(st)
    better_u = upper < st.best_upper
    better_l = lower > st.best_lower
    return st._replace(
        best_d=jnp.where(better_u, d, st.best_d),
        best_upper=jnp.where(better_u, upper, st.best_upper),
        best_q=jnp.where(better_l, q, st.best_q),
        best_lower=jnp.where(better_l, lower, st.best_lower))

  def newton(st, res, D1, D2, rc1, rc2):
    """Solves the reduced KKT system for one (predictor or corrector) direction."""
    r_dd, r_dt, r_p1, r_p2, r_eq = res
    # K = Gᵀ diag(z/s) G with G = [[S − 1cᵀ, −1], [−I, 0]], built from the shared
    # outer products SS so that a batch of palettes costs one matmul.
    sd = D1 @ S                                    # Sᵀ D1 (m,)
    sum_d = jnp.sum(D1)
    sts = (D1 @ SS).reshape(m, m)
    k_dd = (sts - jnp.outer(sd, c) - jnp.outer(c, sd) + sum_d * jnp.outer(c, c)
            + jnp.diag(D2))
    k_dt = -(sd - sum_d * c)
    # rhs = −r_dual − Gᵀ(D r_pri − r_cent / s)
    v1 = D1 * r_p1 - rc1 / st.s1
    v2 = D2 * r_p2 - rc2 / st.s2
    g_d, g_t = gtz(v1, v2)
    rhs = jnp.concatenate([-r_dd - g_d, jnp.stack([-r_dt - g_t, -r_eq])])
    top = jnp.concatenate([k_dd, k_dt[:, None], jnp.ones((m, 1), dtype)], axis=1)
    mid = jnp.concatenate([k_dt, jnp.stack([sum_d, 0.0])])[None, :]
    bot = jnp.concatenate([jnp.ones((m,), dtype), jnp.zeros((2,), dtype)])[None, :]
    kkt = jnp.concatenate([top, mid, bot], axis=0)
    sol = jnp.linalg.solve(kkt, rhs)
    dd, dt, dnu = sol[:m], sol[m], sol[m + 1]
    g1, g2 = gx(dd, dt)
    dz1 = D1 * (g1 + r_p1) - rc1 / st.s1
    dz2 = D2 * (g2 + r_p2) - rc2 / st.s2
    ds1 = -r_p1 - g1
    ds2 = -r_p2 - g2
    return dd, dt, dnu, ds1, ds2, dz1, dz2

  def body(st):
    res = residuals(st)
    D1, D2 = st.z1 / st.s1, st.z2 / st.s2
    mu = (jnp.dot(st.s1, st.z1) + jnp.dot(st.s2, st.z2)) / (n + m)
    # Predictor (affine scaling) step.
    aff = newton(st, res, D1, D2, st.s1 * st.z1, st.s2 * st.z2)
    _, _, _, ds1, ds2, dz1, dz2 = aff
    a_aff = jnp.minimum(
        jnp.minimum(_max_step(st.s1, ds1), _max_step(st.s2, ds2)),
        jnp.minimum(_max_step(st.z1, dz1), _max_step(st.z2, dz2)))
    mu_aff = (jnp.dot(st.s1 + a_aff * ds1, st.z1 + a_aff * dz1)
              + jnp.dot(st.s2 + a_aff * ds2, st.z2 + a_aff * dz2)) / (n + m)
    sigma = (mu_aff / mu) ** 3
    # Corrector with centring.
    rc1 = st.s1 * st.z1 + ds1 * dz1 - sigma * mu
    rc2 = st.s2 * st.z2 + ds2 * dz2 - sigma * mu
    dd, dt, dnu, ds1, ds2, dz1, dz2 = newton(st, res, D1, D2, rc1, rc2)
    alpha = 0.99 * jnp.minimum(
        jnp.minimum(_max_step(st.s1, ds1), _max_step(st.s2, ds2)),
        jnp.minimum(_max_step(st.z1, dz1), _max_step(st.z2, dz2)))
    alpha = jnp.minimum(alpha, 1.0)
    new = st._replace(
        d=st.d + alpha * dd, t=st.t + alpha * dt,
        s1=st.s1 + alpha * ds1, s2=st.s2 + alpha * ds2,
        z1=st.z1 + alpha * dz1, z2=st.z2 + alpha * dz2,
        nu=st.nu + alpha * dnu, k=st.k + 1)
    ok = jnp.all(jnp.isfinite(jnp.stack([new.t, new.nu, jnp.sum(new.z1), jnp.sum(new.s1)])))
    # A non-finite step (rounding at the very end in float32) ends the loop and keeps
    # the bracket certified so far.
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b),
                        keep_best(new), st._replace(k=jnp.asarray(max_iter, st.k.dtype)))

  def cond(st):
    return (st.best_upper - st.best_lower > tol) & (st.k < max_iter)

  d0 = jnp.full((m,), 1.0 / m, dtype)
  g1, _ = gx(d0, jnp.zeros((), dtype))
  t0 = jnp.max(g1) + 1.0
  st = _IPMState(
      d=d0, t=t0, s1=t0 - g1, s2=d0,
      z1=ones_n / n, z2=jnp.full((m,), 1.0 / m, dtype),
      nu=jnp.zeros((), dtype), k=jnp.zeros((), jnp.int32),
      best_d=d0, best_upper=jnp.asarray(jnp.inf, dtype),
      best_q=ones_n / n, best_lower=jnp.asarray(-jnp.inf, dtype))
  st = jax.lax.while_loop(cond, body, keep_best(st))
  return st.best_d, st.best_upper, st.best_q, st.best_lower, st.k


def _first_unique(candidates: jax.Array, size: int) -> jax.Array:
  """The first ``size`` distinct entries of ``candidates``, in order (static shapes)."""
  earlier = jnp.tril(candidates[:, None] == candidates[None, :], k=-1)
  first = ~jnp.any(earlier, axis=1)
  (pos,) = jnp.nonzero(first, size=size, fill_value=0)
  return candidates[pos]


@functools.partial(jax.jit, static_argnames=("tol", "max_iter", "working_set", "swap",
                                             "max_rounds"))
def feasibility(
    rewards: jax.Array,
    palette: jax.Array,
    *,
    tol: float | None = None,
    max_iter: int = 60,
    working_set: int | None = None,
    swap: int | None = None,
    max_rounds: int = 100,
) -> Feasibility:
  """Decides whether ``palette`` is reachable by a mixture of the pilot samples.

  Solves the feasibility LP exactly (to ``tol``, in the rewards' dtype) by a
  primal–dual interior-point method; see the module docstring for the LP.

  Args:
    rewards: pilot reward matrix R, shape (n, m).
    palette: target levels c, shape (m,).
    tol: stop once the certified bracket ``upper − lower`` on the margin is below
      ``tol`` times the largest |R_j − c| entry; defaults to 1e-12 in float64 and
      1e-5 in float32.
    max_iter: iteration cap of each interior-point solve (typically 15–30 are used).
    working_set: rows in the cutting-plane working set; defaults to
      max(32, 4 (m + 1)). With ``working_set >= n`` the LP is solved on all rows at once.
    swap: rows swapped into the working set per round (the most violated ones, for
      the least weighted ones); defaults to m + 1.
    max_rounds: cap on cutting-plane rounds.

  Returns:
    A :class:`Feasibility`. ``feasible`` is False exactly when ``certificate`` is a
    valid proof of infeasibility (``upper < 0``).

  Example:
    >>> R = jnp.array([[0., 1.], [1., 0.]])
    >>> bool(feasibility(R, jnp.array([0.6, 0.6])).feasible)
    False
  """
  rewards = jnp.asarray(rewards)
  dtype = rewards.dtype
  palette = jnp.asarray(palette, dtype)
  n, m = rewards.shape
  if tol is None:
    tol = 1e-12 if dtype == jnp.float64 else 1e-5
  if working_set is None:
    working_set = max(32, 4 * (m + 1))
  k = min(n, working_set)
  if swap is None:
    swap = m + 1
  swap = min(swap, k // 2)

  # The LP only sees R_j − c, so centring R (and c with it) changes nothing but
  # rounding, and one common scale keeps the margin's units. Both come from R alone,
  # so everything computed from S is shared by a batch of palettes.
  center = jnp.mean(rewards, axis=0)
  S = rewards - center
  scale = jnp.max(jnp.abs(S))
  scale = jnp.where(scale > 0, scale, 1.0)
  S = S / scale                                    # (n, m)
  c = (palette - center) / scale                   # (m,)

  # Only rows on the upper boundary of the pilot set's hull can carry the optimum, so
  # the LP is solved on a working set of k rows (cutting planes): solve the restricted
  # LP, find the rows that most violate its solution d over all n rows, swap them in
  # for the restricted rows with the least weight q, and stop when no row is violated,
  # which makes d optimal for the full LP. The start is palette independent: the top
  # rows along each value and along the uniform direction.
  directions = jnp.concatenate([jnp.eye(m, dtype=dtype), jnp.full((1, m), 1.0 / m, dtype)])
  ranked = jnp.argsort(-(S @ directions.T), axis=0)[:k]          # (k, m + 1)
  rows0 = _first_unique(ranked.reshape(-1), k)

  def restricted(rows):
    sub = S[rows]
    sub_ss = (sub[:, :, None] * sub[:, None, :]).reshape(k, m * m)
    return _interior_point(sub, sub_ss, c, tol=tol, max_iter=max_iter)

  def outer_body(state):
    rows, best_d, best_up, best_q, best_lo, it, ipm_steps = state
    d, _, q_w, lower, steps = restricted(rows)
    # Both bounds are certified on the full pilot set: d against all n rows, and q_w
    # is a mixture of pilot rows.
    violation = S @ d - jnp.dot(c, d)
    top, worst = jax.lax.top_k(violation, swap)
    upper = top[0]
    q = jnp.zeros((n,), dtype).at[rows].add(q_w)
    better_u = upper < best_up
    better_l = lower > best_lo
    # The rows carrying the least weight make room for the most violated ones.
    _, idle = jax.lax.top_k(-q_w, swap)
    new_rows = rows.at[idle].set(worst.astype(rows.dtype))
    return (new_rows, jnp.where(better_u, d, best_d), jnp.where(better_u, upper, best_up),
            jnp.where(better_l, q, best_q), jnp.where(better_l, lower, best_lo),
            it + 1, ipm_steps + steps)

  def outer_cond(state):
    _, _, best_up, _, best_lo, it, _ = state
    return (best_up - best_lo > tol) & (it < max_rounds)

  init = (rows0, jnp.full((m,), 1.0 / m, dtype), jnp.asarray(jnp.inf, dtype),
          jnp.full((n,), 1.0 / n, dtype), jnp.asarray(-jnp.inf, dtype),
          jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
  _, d, upper, q, lower, _, num_steps = jax.lax.while_loop(outer_cond, outer_body, init)
  converged = upper - lower <= tol
  upper, lower = upper * scale, lower * scale
  feasible = upper >= 0
  margin = jnp.where(feasible, jnp.maximum(lower, 0.0), upper)
  return Feasibility(feasible=feasible, margin=margin, certificate=d, mixture=q,
                     upper=upper, lower=lower, num_steps=num_steps, converged=converged)
