"""Exact feasibility of a value palette on a pilot set: margin, certificate, bounds, ESS.

A palette c is feasible on a pilot set of n samples with rewards R (n × m) iff some
distribution q over the samples reaches it, Rᵀq >= c. The *margin*

    margin(c) = max_{q ∈ Δ_n} min_i (Rᵀq − c)_i = min_{d ∈ Δ_m} max_j dᵀ(R_j − c)

(the two forms are LP duals of each other) is > 0 for a strictly feasible palette, for
which the MAP dual has a finite maximiser λ, and < 0 for an infeasible one. In the
second case the minimising d is a *certificate*: d >= 0 and max_j dᵀR_j < dᵀc, so no
mixture of the samples can reach c, which anyone can check in one line.

In primal form, with a slack s_i >= 0 per value, the LP has n + m + 1 unknowns but only
m + 1 equality rows,

    maximise t   s.t.   Σ_j q_j (R_j − μ) − t 1 − s = c − μ,   1ᵀq = 1,   q, s >= 0

(centred at the pilot means μ and divided by one common scale, which only changes
rounding), and is solved here by the revised simplex method in plain JAX, so it runs
under ``jit`` and ``vmap`` over palettes. A basis holds t (free, always basic) and m of the q_j and s_i; its dual
values are (−d, ν), the certificate of the other form and ν = max over the basic rows
of dᵀR_j. Pricing column j asks whether row j cuts off the current vertex,
dᵀR_j > ν: each pivot is one cutting-plane step that brings in the most violated
row (Dantzig's rule) and, unlike cutting planes with a restricted LP solved afresh,
keeps everything else it knows. A pivot costs one pass over the rows (n × m) and
O(m²) with a rank-one update of the basis inverse; on the MAP pilot set
(n = 2,312, m = 6) the optimum is typically 8 pivots away from the best single
sample, where the method starts, and at most about 30. When no column prices out,
d and q are optimal. Both bounds are reported, computed from the gaps R_j − c:
``max_j dᵀ(R_j − c)`` (an upper bound on the margin, certified by d) and
``min_i (Rᵀq − c)_i`` (a lower bound, certified by q).
"""

import functools
import math
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
    num_steps: simplex pivots used.
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


def compacting_while_loop(cond_fun, body_fun, consts, init, *, shrink: int = 4,
                          min_lanes: int = 16):
  """``lax.while_loop`` whose ``vmap`` pays for the iterations its lanes need.

  Equivalent to ``lax.while_loop(lambda s: cond_fun(consts, s), lambda s:
  body_fun(consts, s), init)``. Under ``vmap`` a plain while loop runs its body on the
  whole batch until the slowest lane is done, so one palette near the feasibility
  boundary that needs 40 Newton steps makes a batch of thousands pay 40 steps each.
  Here the batched loop runs only while more than a quarter of the lanes are active,
  then gathers the active ones into a batch a quarter the size and goes on there, and
  so on down to ``min_lanes``; the results are scattered back. Every lane still applies
  ``body_fun`` exactly as long as its own ``cond_fun`` holds, so the answers are those
  of the plain loop (up to rounding that depends on the batch size).

  Args:
    cond_fun, body_fun: ``cond_fun(consts, state) -> bool`` and
      ``body_fun(consts, state) -> state`` for one lane.
    consts: a pytree the loop reads but does not change (batched or not).
    init: the initial state.
    shrink: factor by which each stage's batch is smaller than the last.
    min_lanes: the last stage, no larger than this, runs until every lane is done.

  Returns:
    The final state.
  """

  @jax.custom_batching.custom_vmap
  def loop(consts, state):
    return jax.lax.while_loop(lambda s: cond_fun(consts, s), lambda s: body_fun(consts, s),
                              state)

  @loop.def_vmap
  def rule(axis_size, in_batched, consts, state):
    consts_batched, state_batched = in_batched
    state = jax.tree.map(
        lambda x, b: x if b else jnp.broadcast_to(x, (axis_size,) + jnp.shape(x)),
        state, state_batched)
    axes = jax.tree.map(lambda b: 0 if b else None, consts_batched)
    v_cond = jax.vmap(cond_fun, in_axes=(axes, 0))
    v_body = jax.vmap(body_fun, in_axes=(axes, 0))

    def select(active, new, old):
      return jax.tree.map(
          lambda a, b: jnp.where(active.reshape(active.shape + (1,) * (a.ndim - 1)), a, b),
          new, old)

    def run(consts, state, until):
      """Steps the active lanes while more than ``until`` of them are active."""
      def body(s):
        return select(v_cond(consts, s), v_body(consts, s), s)
      return jax.lax.while_loop(lambda s: jnp.sum(v_cond(consts, s)) > until, body, state)

    sizes = [axis_size]
    while sizes[-1] > min_lanes:
      sizes.append(-(-sizes[-1] // shrink))
    sizes.append(0)

    def stage(k, consts, state):
      state = run(consts, state, sizes[k + 1])
      if sizes[k + 1] == 0:
        return state
      active = v_cond(consts, state)
      # At most sizes[k + 1] < sizes[k] lanes are active, so an idle lane exists to pad
      # the next stage's batch; padding lanes stay idle and are written back unchanged.
      (lanes,) = jnp.nonzero(active, size=sizes[k + 1], fill_value=jnp.argmin(active))
      sub_consts = jax.tree.map(lambda x, b: x[lanes] if b else x, consts, consts_batched)
      sub = stage(k + 1, sub_consts, jax.tree.map(lambda x: x[lanes], state))
      return jax.tree.map(lambda x, y: x.at[lanes].set(y), state, sub)

    out = stage(0, consts, state)
    return out, jax.tree.map(lambda _: True, out)

  return loop(consts, init)


class _Simplex(NamedTuple):
  basis: jax.Array   # (m + 1,) column of each basic variable: row j < n, slack n + i;
                     # position 0 holds t, which is free and never leaves
  inv: jax.Array     # (m + 1, m + 1) inverse of the basis matrix
  x: jax.Array       # (m + 1,) values of the basic variables (x[0] = t)
  k: jax.Array       # pivots so far
  done: jax.Array    # no column prices out (optimal), or no pivot is possible


def _columns(S: jax.Array, ids: jax.Array) -> jax.Array:
  """Constraint columns of the primal LP for column ids (rows j < n, slacks n + i)."""
  n, m = S.shape
  is_row = ids < n
  row = jnp.concatenate([S[jnp.where(is_row, ids, 0)], jnp.ones(ids.shape + (1,), S.dtype)],
                        axis=-1)
  slack = -jax.nn.one_hot(ids - n, m + 1, dtype=S.dtype)  # −e_i, and 0 in the last row
  return jnp.where(is_row[..., None], row, slack)


def _row_blocks(S: jax.Array):
  """The rows of S in blocks of about √n (the last padded with copies of row 0, which
  change no LP), with the original index of every padded row."""
  n, m = S.shape
  size = max(1, int(math.isqrt(n - 1)) + 1) if n > 1 else 1
  count = -(-n // size)
  padded = jnp.concatenate([S, jnp.broadcast_to(S[:1], (count * size - n, m))])
  ids = jnp.concatenate([jnp.arange(n), jnp.zeros((count * size - n,), int)])
  return padded.reshape(count, size, m), ids


def _most_violated(blocks: jax.Array, ids: jax.Array, d: jax.Array):
  """argmax_j dᵀS_j and its value, by a max per block and an argmax over the winning
  block: XLA:CPU's argmax over all n rows costs about ten times a max (under ``vmap``
  it dominated the whole solve), a max over n rows plus two short argmaxes does not."""
  per_block = jnp.max(blocks @ d, axis=1)
  b = jnp.argmax(per_block)
  within = jnp.argmax(blocks[b] @ d)
  return ids[b * blocks.shape[1] + within], per_block[b]


def _simplex(S: jax.Array, c: jax.Array, *, tol: float, max_iter: int) -> _Simplex:
  """Revised primal simplex for max t s.t. Σ_j q_j S_j − t 1 − s = c, 1ᵀq = 1, q, s >= 0."""
  n, m = S.shape
  dtype = S.dtype
  blocks, ids = _row_blocks(S)
  # A ratio-test pivot smaller than this is rounding noise, not a direction.
  pivot_tol = 100 * float(jnp.finfo(dtype).eps)
  b = jnp.concatenate([c, jnp.ones((1,), dtype)])
  t_column = jnp.concatenate([-jnp.ones((m,), dtype), jnp.zeros((1,), dtype)])

  # Start from a good single sample j0: q = e_{j0}, t = min_i (S_{j0} − c)_i, every
  # slack basic but the one of the value attaining that minimum. j0 is the best for c
  # among the 64 samples with the best worst value, a palette-independent shortlist:
  # searching all n rows per palette saves one pivot in ten and, under vmap, costs
  # more than the pivots.
  _, shortlist = jax.lax.top_k(jnp.min(S, axis=1), min(n, 64))
  j0 = shortlist[jnp.argmax(jnp.min(S[shortlist] - c, axis=1))]
  i0 = jnp.argmin(S[j0] - c)
  slots = jnp.arange(m)
  basis = jnp.concatenate([jnp.full((1,), -1, jnp.int32),
                           jnp.where(slots == i0, j0, n + slots).astype(jnp.int32)])
  matrix = jnp.concatenate([t_column[:, None], _columns(S, basis[1:]).T], axis=1)
  inv = jnp.linalg.inv(matrix)
  state = _Simplex(basis, inv, inv @ b, jnp.zeros((), jnp.int32), jnp.zeros((), bool))

  def body(consts, st):
    blocks, ids, S, c = consts
    # Dual values y = B⁻ᵀ e_0, i.e. the first row of B⁻¹: (−d, ν) with 1ᵀd = 1.
    d, nu = -st.inv[0, :m], st.inv[0, m]
    # Reduced costs: row j prices out when dᵀS_j > ν (it cuts off the current vertex),
    # slack i when d_i < 0. Dantzig's rule takes the largest.
    j, top = _most_violated(blocks, ids, d)
    rc_row = top - nu
    i = jnp.argmax(-d)
    take_row = rc_row >= -d[i]
    enter = jnp.where(take_row, j, n + i).astype(jnp.int32)
    price = jnp.maximum(rc_row, -d[i])
    delta = st.inv @ _columns(S, enter)
    # Ratio test over the basic q_j and s_i (never t): the first to reach 0 leaves.
    blocking = (jnp.arange(m + 1) > 0) & (delta > pivot_tol)
    ratio = jnp.where(blocking, st.x / jnp.where(blocking, delta, 1.0), jnp.inf)
    p = jnp.argmin(ratio)
    theta = ratio[p]
    optimal = price <= tol
    stuck = ~jnp.isfinite(theta)
    x = (st.x - theta * delta).at[p].set(theta)
    x = x.at[1:].max(0.0)
    pivot_row = st.inv[p] / delta[p]
    inv = (st.inv - jnp.outer(delta, pivot_row)).at[p].set(pivot_row)
    new = _Simplex(st.basis.at[p].set(enter), inv, x, st.k + 1, jnp.zeros((), bool))
    stop = optimal | stuck
    return jax.tree.map(lambda a, b: jnp.where(stop, a, b),
                        st._replace(done=jnp.ones((), bool)), new)

  def cond(consts, st):
    return ~st.done & (st.k < max_iter)

  return compacting_while_loop(cond, body, (blocks, ids, S, c), state)


def _certified(rewards, palette, blocks, ids, basis, x, y):
  """Rounds a basis's primal (x) and dual (y) values to the simplices.

  Returns the certificate d, the upper bound max_j dᵀ(R_j − c) it certifies, the
  weights of the basic rows and the lower bound min_i (Rᵀq − c)_i they certify. Both
  bounds are computed from gaps R_j − c, which are exactly 0 where a target equals a
  reward, so a palette on the boundary stays there.
  """
  n, m = rewards.shape
  d = jnp.maximum(-y[:m], 0.0)
  d = d / jnp.sum(d)
  j, _ = _most_violated(blocks, ids, d)
  upper = jnp.dot(rewards[j] - palette, d)
  is_row = basis[1:] < n
  q = jnp.where(is_row, jnp.maximum(x[1:], 0.0), 0.0)
  q = q / jnp.sum(q)
  lower = jnp.min(q @ (rewards[jnp.where(is_row, basis[1:], 0)] - palette))
  return d, upper, q, lower


@functools.partial(jax.jit, static_argnames=("tol", "max_iter"))
def feasibility(
    rewards: jax.Array,
    palette: jax.Array,
    *,
    tol: float | None = None,
    max_iter: int = 100,
) -> Feasibility:
  """Decides whether ``palette`` is reachable by a mixture of the pilot samples.

  Solves the feasibility LP exactly (to ``tol``, in the rewards' dtype) by the revised
  simplex method; see the module docstring for the LP.

  Args:
    rewards: pilot reward matrix R, shape (n, m).
    palette: target levels c, shape (m,).
    tol: optimality tolerance on the certified bracket ``upper − lower`` on the margin,
      relative to the largest |R_j − mean(R)| entry; defaults to 1e-12 in float64 and
      1e-5 in float32.
    max_iter: cap on simplex pivots (on the MAP pilot set, n = 2312 and m = 6,
      typically 8 and at most about 30 are used).

  Returns:
    A :class:`Feasibility`. ``feasible`` is False only when ``certificate`` is a
    valid proof of infeasibility (``upper < 0``, and no mixture found reaches c).

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

  # The LP only sees R_j − c, so centring R (and c with it) changes nothing but
  # rounding, and one common scale keeps the margin's units. Both come from R alone,
  # so everything computed from S is shared by a batch of palettes.
  center = jnp.mean(rewards, axis=0)
  S = rewards - center
  scale = jnp.max(jnp.abs(S))
  scale = jnp.where(scale > 0, scale, 1.0)
  S = S / scale                                    # (n, m)
  c = (palette - center) / scale                   # (m,)

  st = _simplex(S, c, tol=tol, max_iter=max_iter)
  # The loop updates B⁻¹ by rank-one pivots; solving once more with the final basis
  # removes their rounding. Both versions certify a bracket: keep the tighter ends.
  matrix = _columns(S, st.basis).T.at[:, 0].set(
      jnp.concatenate([-jnp.ones((m,), dtype), jnp.zeros((1,), dtype)]))
  b = jnp.concatenate([c, jnp.ones((1,), dtype)])
  x_polished = jnp.linalg.solve(matrix, b)
  y_polished = jnp.linalg.solve(matrix.T, jnp.zeros((m + 1,), dtype).at[0].set(1.0))
  blocks, ids = _row_blocks(S)
  candidates = [_certified(rewards, palette, blocks, ids, st.basis, x_polished, y_polished),
                _certified(rewards, palette, blocks, ids, st.basis, st.x, st.inv[0])]
  (d, upper, q_b, lower), (d2, upper2, q_b2, lower2) = candidates
  use2_u = ~(upper <= upper2)  # also when the polished bound is NaN
  use2_l = ~(lower >= lower2)
  d, upper = jnp.where(use2_u, d2, d), jnp.where(use2_u, upper2, upper)
  q_b, lower = jnp.where(use2_l, q_b2, q_b), jnp.where(use2_l, lower2, lower)
  rows = jnp.where(st.basis[1:] < n, st.basis[1:], n)
  q = jnp.zeros((n,), dtype).at[rows].add(q_b, mode="drop")

  converged = upper - lower <= tol * scale
  # A palette on the boundary (margin 0, as when a target equals a constant column)
  # is feasible; rounding may then leave either bound a hair below 0, so the palette is
  # declared infeasible only when neither d nor q says otherwise.
  feasible = (upper >= 0) | (lower >= 0)
  margin = jnp.where(feasible, jnp.maximum(lower, 0.0), upper)
  return Feasibility(feasible=feasible, margin=margin, certificate=d, mixture=q,
                     upper=upper, lower=lower, num_steps=st.k, converged=converged)
