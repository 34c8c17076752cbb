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

(centred at the pilot means μ and divided by one common scale, which only changes rounding), and is solved
here by the revised simplex method in plain JAX, so it runs under ``jit`` and ``vmap`` over palettes. A basis
holds t (free, always basic) and m of the q_j and s_i; its dual values are (−d, ν), the certificate of the
other form and ν = max over the basic rows of dᵀR_j. Pricing column j asks whether row j cuts off the current
vertex, dᵀR_j > ν: each pivot is one cutting-plane step that brings in a violated row and, unlike cutting
planes with a restricted LP solved afresh, keeps everything else it knows. A pivot prices every row, a pass
over R (n × m), and costs O(m²) more with a rank-one update of the basis inverse; on large pilot sets pricing
is partial: a pass finds the most violated row and a pool of the next best, pivots then price only the pool,
O(pool · m) each, until nothing in it prices out, and the next pass refills it. On the MAP pilot set (n =
2,312, m = 6) the optimum is typically about 10 pivots away from the best single sample, where the method
starts; with 12 values, 50 to 140. When no column of all n prices out, d and q are optimal. Given the final
basis of a previous palette on the same pilot set (``start``), as in a slider drag, the simplex starts there
instead: c enters only the right-hand side, so that basis keeps its reduced costs' signs, and a few pivots of
the dual simplex method make it feasible for the new palette (a drag of 30 moves on 9,248 rows in the tests:
1.2 pivots per palette instead of 17; on sets as small as MAP's, where every pivot prices all rows, starting
afresh is cheaper and a start is not used). Without one, on more than 262,144 rows, the simplex starts from
its final basis on every k-th row (see COARSE_ROWS). Both bounds are reported, computed from the gaps R_j − c:
``max_j dᵀ(R_j − c)`` (an upper bound on the margin, certified by d) and
``min_i (Rᵀq − c)_i`` (a lower bound, certified by q).
"""

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from map_jax.core import loops


class Feasibility(NamedTuple):
  """Result of :func:`feasibility` for one palette.

  Attributes:
    feasible: ``True`` unless ``certificate`` proves the palette unreachable.
    margin: ``max_q min_i (Rᵀq − c)_i`` in reward units; ``>= 0`` iff feasible.
    certificate: ``d`` in the simplex (m,). When infeasible, ``max_j dᵀR_j < dᵀc``.
    mixture: ``q`` in the simplex (n,), the best mixture of pilot samples.
    upper: ``max_j dᵀ(R_j − c)``, an upper bound on the margin.
    lower: ``min_i (Rᵀq − c)_i``, a lower bound on the margin.
    num_steps: simplex pivots used (on a large pilot set, those on the subset it starts from included).
    converged: whether ``upper − lower`` reached the tolerance.
    basis: (m + 1,) the final basis, column ids of the primal LP (row j < n, slack n + i; −1 for t), to pass as
      ``start`` for the next palette on the same pilot set.
  """

  feasible: jax.Array
  margin: jax.Array
  certificate: jax.Array
  mixture: jax.Array
  upper: jax.Array
  lower: jax.Array
  num_steps: jax.Array
  converged: jax.Array
  basis: jax.Array


def upper_bounds(rewards: jax.Array) -> jax.Array:
  """Per-value upper bounds B_i = max_j R[j, i]: no palette with c_i > B_i is feasible."""
  return jnp.max(rewards, axis=0)


def effective_sample_size(weights: jax.Array) -> jax.Array:
  """Kish's effective sample size 1 / Σ_j w_j² of normalised importance weights."""
  return 1.0 / jnp.sum(jnp.square(weights), axis=-1)


class _Simplex(NamedTuple):
  # basis: (m + 1,) column of each basic variable: row j < n, slack n + i; position 0 holds t, which is free
  # and never leaves
  basis: jax.Array
  inv: jax.Array  # (m + 1, m + 1) inverse of the basis matrix
  x: jax.Array  # (m + 1,) values of the basic variables (x[0] = t)
  k: jax.Array  # pivots so far
  done: jax.Array  # no column prices out (optimal), or no pivot is possible


# On pilot sets of more than 8 × COARSE_ROWS rows the solvers first work on every k-th row (at most COARSE_ROWS
# of them) and start from there: the LP from the subset's final basis (a basis of the whole LP, feasible for
# the palette, whose partial pricing then has only the rows the subset missed to bring in), Newton from the
# subset's λ (see map_jax.core.dual).
COARSE_ROWS = 1 << 15


def coarse_subset(rows: jax.Array) -> tuple[jax.Array | None, int]:
  """Every k-th of the n rows (at most COARSE_ROWS of them) and k, on more than 8 × COARSE_ROWS rows; else
  (None, 0)."""
  n = rows.shape[0]
  if n <= 8 * COARSE_ROWS:
    return None, 0
  stride = -(-n // COARSE_ROWS)
  return rows[: stride * (n // stride) : stride], stride


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["center", "scale", "blocks", "ids", "shortlist", "coarse"],
  meta_fields=["num_rows", "stride"],
)
@dataclasses.dataclass(frozen=True)
class PreparedLP:
  """What the LP reads of a pilot set, built once per reward matrix by :func:`prepare` and shared by every
  palette (a pytree: pass it unbatched to ``vmap``).

  The LP only sees S = (R − center) / scale, one common scale so the margin keeps reward units. S is held once,
  transposed in row blocks (see :func:`_row_blocks`); a row of S is read back from there.
  """

  center: jax.Array  # (m,) the pilot means
  scale: jax.Array  # () max |R − center|, 1 for a constant matrix
  blocks: jax.Array  # (m, size, count) Sᵀ in blocks of about √n rows
  ids: jax.Array  # (size · count,) the row of S at each block position (padding repeats row 0)
  shortlist: jax.Array  # (min(n, 64),) the rows with the best worst value, where the simplex starts
  coarse: "PreparedLP | None"  # every stride-th row (same center and scale), see COARSE_ROWS
  num_rows: int  # n
  stride: int  # of the coarse subset; 0 without one


def _rows(prepared: PreparedLP, j: jax.Array) -> jax.Array:
  """Rows S_j (j < n) read from the blocks: row j is column j % size of block j // size."""
  size = prepared.blocks.shape[1]
  return jnp.moveaxis(prepared.blocks[:, j % size, j // size], 0, -1)


def _columns(prepared: PreparedLP, ids: jax.Array) -> jax.Array:
  """Constraint columns of the primal LP for column ids (rows j < n, slacks n + i)."""
  n, m = prepared.num_rows, prepared.blocks.shape[0]
  dtype = prepared.blocks.dtype
  is_row = ids < n
  row = jnp.concatenate([_rows(prepared, jnp.where(is_row, ids, 0)), jnp.ones(ids.shape + (1,), dtype)], axis=-1)
  slack = -jax.nn.one_hot(ids - n, m + 1, dtype=dtype)  # −e_i, and 0 in the last row
  return jnp.where(is_row[..., None], row, slack)


def _row_blocks(S: jax.Array):
  """Sᵀ with its columns (the rows of S) in blocks of about √n, the last padded with
  copies of row 0, which change no LP; and the original index of every padded row.

  Stored transposed, (m, size, blocks) with block b as column b: the pass dᵀS_j over
  all rows is then a vector–matrix product over contiguous rows of Sᵀ, which XLA:CPU
  runs several times faster than the matrix–vector product S d with m = 6 numbers per
  row (and which under ``vmap`` becomes the matrix product (batch, m) × (m, n)).
  """
  n, m = S.shape
  size = max(1, int(math.isqrt(n - 1)) + 1) if n > 1 else 1
  count = -(-n // size)
  padded = jnp.concatenate([S, jnp.broadcast_to(S[:1], (count * size - n, m))])
  ids = jnp.concatenate([jnp.arange(n), jnp.zeros((count * size - n,), int)])
  return padded.T.reshape(m, count, size).transpose(0, 2, 1), ids


def _pool(blocks: jax.Array, ids: jax.Array, d: jax.Array, size: int):
  """The `size` rows with the largest dᵀS_j among the best rows of each row block, best first, and dᵀS of the
  first: one pass over all rows (see :func:`_best_of_blocks`)."""
  return _best_of_blocks(jnp.tensordot(d, blocks, axes=1), ids, size)


def _best_of_blocks(scores: jax.Array, ids: jax.Array, size: int):
  """The rows of the best row of each block for the blocks with the `size` largest maxima of `scores` (one per
  row, laid out as the blocks: (size of a block, blocks)), best first, and the first's score. By a max per
  block, then short searches over the blocks: XLA:CPU's argmax over all n rows costs about ten times a max
  (under ``vmap`` it dominated the whole solve)."""
  per_block = jnp.max(scores, axis=0)
  top, chosen = jax.lax.top_k(per_block, min(size, per_block.shape[0]))
  within = jnp.argmax(scores[:, chosen], axis=0)
  return ids[chosen * scores.shape[0] + within], top[0]


def _most_violated(blocks: jax.Array, ids: jax.Array, d: jax.Array):
  """argmax_j dᵀS_j and its value (a pool of one)."""
  pool, top = _pool(blocks, ids, d, 1)
  return pool[0], top


def _initial_inverse(row: jax.Array, i0: jax.Array) -> jax.Array:
  """Inverse of the starting basis (t, slacks, and one row in slack i0's slot), written
  out: with the row's weight q = b_m, t = q·row_i0 − b_i0 and s_i = q·row_i − b_i − t.
  (XLA:CPU inverts even a 7 × 7 matrix with a while loop over the LU pivots.)"""
  m = row.shape[0]
  dtype = row.dtype
  e_m = jnp.zeros((m + 1,), dtype).at[m].set(1.0)
  e_i0 = jax.nn.one_hot(i0, m + 1, dtype=dtype)
  t_row = row[i0] * e_m - e_i0
  slack_rows = e_i0 - jnp.eye(m, m + 1, dtype=dtype) + (row - row[i0])[:, None] * e_m
  slack_rows = jnp.where((jnp.arange(m) == i0)[:, None], e_m, slack_rows)
  return jnp.concatenate([t_row[None], slack_rows])


def _exchange(st: _Simplex, p: jax.Array, enter: jax.Array, delta: jax.Array, theta: jax.Array) -> _Simplex:
  """Column `enter` (B⁻¹ times it: `delta`) takes basis position p at value theta: the rank-one update of B⁻¹."""
  x = (st.x - theta * delta).at[p].set(theta)
  pivot_row = st.inv[p] / delta[p]
  inv = (st.inv - jnp.outer(delta, pivot_row)).at[p].set(pivot_row)
  return _Simplex(st.basis.at[p].set(enter), inv, x, st.k + 1, jnp.zeros((), bool))


def _basis_matrix(prepared: PreparedLP, basis: jax.Array) -> jax.Array:
  """The (m + 1) × (m + 1) matrix of a basis's columns, t's column (−1, …, −1, 0) first."""
  m, dtype = prepared.blocks.shape[0], prepared.blocks.dtype
  t_column = jnp.concatenate([-jnp.ones((m,), dtype), jnp.zeros((1,), dtype)])
  return _columns(prepared, basis).T.at[:, 0].set(t_column)


# Dual simplex pivots (each a pass over all rows) that a start from a given basis may take to reach a basis
# feasible for the new palette before it gives way to the usual start.
_WARM_MAX_PIVOTS = 32


def _start_at(prepared: PreparedLP, c: jax.Array, basis: jax.Array, *, max_pivots: int):
  """The simplex state at `basis` (a previous palette's final one on the same pilot set), made feasible for the
  palette c by pivots of the dual simplex method, and whether that worked.

  The basis matrix does not depend on the palette (c is only the right-hand side b), so a basis optimal for one
  palette keeps every reduced cost of the right sign for all others: only x = B⁻¹b may have turned negative.
  Each dual pivot takes the most negative basic variable out and brings in the column whose ratio of reduced
  cost to its entry in that variable's row is smallest, which keeps the reduced costs' signs (a ratio test over
  all n rows, one pass over R); a small move of the palette needs a few. The primal simplex that follows checks
  optimality over all rows in any case, so a basis that is not optimal for any palette only costs pivots.
  Failure (ids out of range, a singular basis, no feasible basis within `max_pivots`) is reported, not hidden.
  """
  n, m = prepared.num_rows, prepared.blocks.shape[0]
  dtype = prepared.blocks.dtype
  pivot_tol = 100 * float(jnp.finfo(dtype).eps)
  b = jnp.concatenate([c, jnp.ones((1,), dtype)])
  basis = jnp.asarray(basis).astype(jnp.int32)
  in_range = jnp.all((basis[1:] >= 0) & (basis[1:] < n + m))
  basis = jnp.concatenate([jnp.full((1,), -1, jnp.int32), jnp.clip(basis[1:], 0, n + m - 1)])
  matrix = _basis_matrix(prepared, basis)
  inv = jnp.linalg.inv(matrix)
  eye = jnp.eye(m + 1, dtype=dtype)
  well_posed = in_range & jnp.all(jnp.isfinite(inv)) & (jnp.max(jnp.abs(inv @ matrix - eye)) <= 1e-3)
  inv = jnp.where(well_posed, inv, eye)
  x = inv @ b

  def feasible(x):
    return jnp.min(x[1:]) >= -pivot_tol

  state = _Simplex(basis, inv, x, jnp.zeros((), jnp.int32), ~well_posed | feasible(x))

  def body(prepared, st):
    p = 1 + jnp.argmin(st.x[1:])  # t (position 0) is free and never leaves
    y, row = st.inv[0], st.inv[p]  # y = (−d, ν): row j's reduced cost is dᵀS_j − ν, slack i's is y_i
    both = jnp.tensordot(jnp.stack([row[:m], -y[:m]]), prepared.blocks, axes=1)  # (2, size, count)
    alpha, cost = both[0] + row[m], both[1] - y[m]
    ratio = jnp.where(alpha < -pivot_tol, jnp.minimum(cost, 0.0) / alpha, jnp.inf)
    (j,), neg_ratio = _best_of_blocks(-ratio, prepared.ids, 1)
    ratio_s = jnp.where(row[:m] > pivot_tol, jnp.minimum(y[:m], 0.0) / -row[:m], jnp.inf)  # slack i: entry −row_i
    i = jnp.argmin(ratio_s)
    enter = jnp.where(-neg_ratio <= ratio_s[i], j, n + i).astype(jnp.int32)
    delta = st.inv @ _columns(prepared, enter)
    new = _exchange(st, p, enter, delta, st.x[p] / delta[p])
    new = new._replace(done=feasible(new.x))
    stuck = ~jnp.isfinite(jnp.minimum(-neg_ratio, ratio_s[i])) | ~(delta[p] < 0)
    return jax.tree.map(lambda a, b: jnp.where(stuck, a, b), st._replace(done=jnp.ones((), bool)), new)

  def cond(prepared, st):
    return ~st.done & (st.k < max_pivots)

  state = loops.compacting_while_loop(cond, body, prepared, state)
  ok = well_posed & feasible(state.x) & jnp.all(jnp.isfinite(state.x))
  return state._replace(x=state.x.at[1:].max(0.0), done=jnp.zeros((), bool)), ok


_POOL = 64  # rows priced by the pivots between two passes over all rows (see _simplex)
# The default cap on simplex pivots: partial pricing takes more pivots than pricing all rows at every pivot
# (up to about 140 at n = 231,200 and m = 12, against 75), each of them cheap.
MAX_PIVOTS = 400


def _simplex(prepared: PreparedLP, c: jax.Array, *, tol: float, max_iter: int, start=None) -> _Simplex:
  """Revised primal simplex for max t s.t. Σ_j q_j S_j − t 1 − s = c, 1ᵀq = 1, q, s >= 0.

  Partial pricing, on pilot sets with more row blocks than `_POOL` (n above about 4,000): a pass over all n
  rows finds the most violated row and a pool of the next best (at most one per row block); pivots then
  price only the pool and the slacks until none of them prices out, and the next pass over all rows either
  refills the pool or proves the basis optimal. A pivot costs O(pool · m + m²) instead of a pass over R, so
  the cost follows the passes rather than the pivots (50 to 140 at m = 12). Smaller sets price every row at
  every pivot.

  It starts from a good single sample or, given a basis `start` (see :func:`_start_at`) and partial pricing,
  from there.
  """
  n, m = prepared.num_rows, prepared.blocks.shape[0]
  dtype = prepared.blocks.dtype
  # A ratio-test pivot smaller than this is rounding noise, not a direction.
  pivot_tol = 100 * float(jnp.finfo(dtype).eps)
  b = jnp.concatenate([c, jnp.ones((1,), dtype)])

  # Start from a good single sample j0: q = e_{j0}, t = min_i (S_{j0} − c)_i, every
  # slack basic but the one of the value attaining that minimum. j0 is the best for c
  # among the 64 samples with the best worst value, a palette-independent shortlist:
  # searching all n rows per palette saves one pivot in ten and, under vmap, costs
  # more than the pivots.
  candidates = _rows(prepared, prepared.shortlist)
  best = jnp.argmax(jnp.min(candidates - c, axis=1))
  j0, row0 = prepared.shortlist[best], candidates[best]
  i0 = jnp.argmin(row0 - c)
  slots = jnp.arange(m)
  basis = jnp.concatenate([jnp.full((1,), -1, jnp.int32), jnp.where(slots == i0, j0, n + slots).astype(jnp.int32)])
  inv = _initial_inverse(row0, i0)
  state = _Simplex(basis, inv, inv @ b, jnp.zeros((), jnp.int32), jnp.zeros((), bool))
  # With no more row blocks than the pool holds, the pool is about all of the pass: pricing every row at every
  # pivot (Dantzig's rule) costs no more there and takes fewer pivots, with no inner loop to batch under vmap.
  partial = prepared.blocks.shape[2] > _POOL
  # A start pays where a pass over all rows costs more than its basis inverse and checks: not on pilot sets
  # small enough for full pricing (MAP's 2,312 rows of 6 values: 0.13 ms afresh, 0.20 ms from the basis).
  if start is not None and partial:
    warm, ok = _start_at(prepared, c, start, max_pivots=min(max_iter, _WARM_MAX_PIVOTS))
    # A start that did not work counts its pivots and gives way to the usual one.
    state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), warm, state._replace(k=warm.k))

  def pivot(prepared, st, enter, price):
    """One pivot bringing in column `enter` of reduced cost `price` (> tol), or done when none is possible."""
    delta = st.inv @ _columns(prepared, enter)
    # Ratio test over the basic q_j and s_i (never t): the first to reach 0 leaves.
    blocking = (jnp.arange(m + 1) > 0) & (delta > pivot_tol)
    ratio = jnp.where(blocking, st.x / jnp.where(blocking, delta, 1.0), jnp.inf)
    p = jnp.argmin(ratio)
    theta = ratio[p]
    stop = (price <= tol) | ~jnp.isfinite(theta)
    new = _exchange(st, p, enter, delta, theta)
    new = new._replace(x=new.x.at[1:].max(0.0))
    return jax.tree.map(lambda a, b: jnp.where(stop, a, b), st._replace(done=jnp.ones((), bool)), new)

  def entering(st, best_row, top):
    """Dantzig's rule between row `best_row` (dᵀS = `top`) and the most negative slack."""
    # Dual values y = B⁻ᵀ e_0, i.e. the first row of B⁻¹: (−d, ν) with 1ᵀd = 1. Row j prices out when
    # dᵀS_j > ν (it cuts off the current vertex), slack i when d_i < 0.
    d, nu = -st.inv[0, :m], st.inv[0, m]
    rc_row = top - nu
    i = jnp.argmax(-d)
    take_row = rc_row >= -d[i]
    return jnp.where(take_row, best_row, n + i).astype(jnp.int32), jnp.maximum(rc_row, -d[i])

  def body(consts, st):
    prepared, c = consts
    if not partial:
      return pivot(prepared, st, *entering(st, *_most_violated(prepared.blocks, prepared.ids, -st.inv[0, :m])))
    pool, top = _pool(prepared.blocks, prepared.ids, -st.inv[0, :m], _POOL)
    st = pivot(prepared, st, *entering(st, pool[0], top))  # done here when nothing in all of R prices out
    rows = _rows(prepared, pool)  # (pool, m)

    def inner_cond(inner):
      st, pool_done = inner
      return ~st.done & ~pool_done & (st.k < max_iter)

    def inner_body(inner):
      st, _ = inner
      scores = rows @ -st.inv[0, :m]
      best = jnp.argmax(scores)
      enter, price = entering(st, pool[best], scores[best])
      pool_done = price <= tol  # nothing in the pool prices out: back to a pass over all rows
      new = pivot(prepared, st, enter, price)
      return jax.tree.map(lambda a, b: jnp.where(pool_done, a, b), st, new), pool_done

    st, _ = jax.lax.while_loop(inner_cond, inner_body, (st, jnp.zeros((), bool)))
    return st

  def cond(consts, st):
    return ~st.done & (st.k < max_iter)

  return loops.compacting_while_loop(cond, body, (prepared, c), state)


def _certified(rewards, palette, prepared, basis, x, y):
  """Rounds a basis's primal (x) and dual (y) values to the simplices.

  Returns the certificate d, the upper bound max_j dᵀ(R_j − c) it certifies, the
  weights of the basic rows and the lower bound min_i (Rᵀq − c)_i they certify. Both
  bounds are computed from gaps R_j − c, which are exactly 0 where a target equals a
  reward, so a palette on the boundary stays there.
  """
  n, m = rewards.shape
  d = jnp.maximum(-y[:m], 0.0)
  d = d / jnp.sum(d)
  j, _ = _most_violated(prepared.blocks, prepared.ids, d)
  upper = jnp.dot(rewards[j] - palette, d)
  is_row = basis[1:] < n
  q = jnp.where(is_row, jnp.maximum(x[1:], 0.0), 0.0)
  q = q / jnp.sum(q)
  lower = jnp.min(q @ (rewards[jnp.where(is_row, basis[1:], 0)] - palette))
  return d, upper, q, lower


@jax.jit
def prepare(rewards: jax.Array) -> PreparedLP:
  """The palette-independent part of the LP for a pilot set, to pass to every :func:`feasibility` call on it.

  Its arrays hold one (padded) copy of R; building it reads R a few times, which a single palette on a large
  pilot set would otherwise pay on every call.
  """
  rewards = jnp.asarray(rewards)
  # The LP only sees R_j − c, so centring R (and c with it) changes nothing but
  # rounding, and one common scale keeps the margin's units. Both come from R alone.
  center = jnp.mean(rewards, axis=0)
  S = rewards - center
  scale = jnp.max(jnp.abs(S))
  scale = jnp.where(scale > 0, scale, 1.0)
  S = S / scale
  subset, stride = coarse_subset(S)
  coarse = None if subset is None else _prepared(subset, center, scale, None, 0)
  return _prepared(S, center, scale, coarse, stride)


def _prepared(S: jax.Array, center, scale, coarse, stride) -> PreparedLP:
  n = S.shape[0]
  blocks, ids = _row_blocks(S)
  _, shortlist = jax.lax.top_k(jnp.min(S, axis=1), min(n, 64))
  return PreparedLP(center, scale, blocks, ids, shortlist.astype(jnp.int32), coarse, n, stride)


@functools.partial(jax.jit, static_argnames=("tol", "max_iter"))
def feasibility(
  rewards: jax.Array,
  palette: jax.Array,
  *,
  tol: float | None = None,
  max_iter: int = MAX_PIVOTS,
  prepared: PreparedLP | None = None,
  start: jax.Array | None = None,
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
      typically about 10 are used; with 12 values up to about 140).
    prepared: ``prepare(rewards)``, when kept across calls on the same pilot set; built here otherwise (the
      result is the same bit for bit).
    start: the ``basis`` of a previous result on the same pilot set, such as the last palette's in a slider
      drag: the simplex starts there (made feasible for this palette by a few dual simplex pivots, see
      :func:`_start_at`) instead of at the best single sample. The bracket on the margin is certified the same
      way and meets the same tolerance, so the answer agrees to ``tol``; a basis from which no feasible one is
      reached within 32 pivots (one of another pilot set, say) gives way to the usual start. Pilot sets of at
      most 64 row blocks (about 4,000 rows), where every pivot prices all rows, always start afresh, which is
      cheaper there.

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
  if prepared is None:
    prepared = prepare(rewards)
  scale = prepared.scale
  c = (palette - prepared.center) / scale  # (m,)

  if start is not None and jnp.shape(start) != (m + 1,):
    raise ValueError(f"start must be a basis of shape ({m + 1},) from a previous result; got shape {jnp.shape(start)}.")
  subset_pivots = 0
  if start is None and prepared.coarse is not None:
    # Start from the optimal basis on the subset (its ids mapped to the whole set's; see COARSE_ROWS).
    sub = _simplex(prepared.coarse, c, tol=tol, max_iter=max_iter)
    n_sub = prepared.coarse.num_rows
    start = jnp.where(sub.basis < n_sub, sub.basis * prepared.stride, sub.basis - n_sub + n).at[0].set(-1)
    subset_pivots = sub.k
  st = _simplex(prepared, c, tol=tol, max_iter=max_iter, start=start)
  # The loop updates B⁻¹ by rank-one pivots; a step of iterative refinement against the
  # final basis itself removes most of their rounding (without the LU factorisation
  # whose pivoting XLA:CPU runs as a while loop). Both versions certify a bracket: keep
  # the tighter ends.
  matrix = _basis_matrix(prepared, st.basis)
  b = jnp.concatenate([c, jnp.ones((1,), dtype)])
  e_0 = jnp.zeros((m + 1,), dtype).at[0].set(1.0)
  x_polished = st.x + st.inv @ (b - matrix @ st.x)
  y_polished = st.inv[0] + (e_0 - st.inv[0] @ matrix) @ st.inv
  # Both in one pass over the rows (the two certificates' most violated rows).
  certify = jax.vmap(functools.partial(_certified, rewards, palette, prepared, st.basis))
  both = certify(jnp.stack([x_polished, st.x]), jnp.stack([y_polished, st.inv[0]]))
  (d, upper, q_b, lower), (d2, upper2, q_b2, lower2) = [jax.tree.map(lambda a, k=k: a[k], both) for k in (0, 1)]
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
  return Feasibility(
    feasible=feasible,
    margin=margin,
    certificate=d,
    mixture=q,
    upper=upper,
    lower=lower,
    num_steps=st.k + subset_pivots,
    converged=converged,
    basis=st.basis,
  )
