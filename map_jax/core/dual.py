"""The MAP dual problem and its exact projected-Newton solver.

Given a pilot reward matrix R (n samples × m values, rows r(x_j, y_j) with y_j ~ p0) and
a value palette c (m,), MAP's aligned model is p_λ(y|x) ∝ p0(y|x) exp(λᵀr(x, y)) with
λ >= 0 maximising the concave dual

.. math::

   g(λ) = λᵀc − \\log \\frac{1}{n} \\sum_j \\exp(λᵀR_j).

On the pilot set p_λ puts weight w = softmax(Rλ) on sample j; ∇g = c − Rᵀw and the
Hessian is −Cov_w(R). At the optimum Rᵀw >= c, with equality where λ_i > 0 (KKT).

The solver is Bertsekas' projected Newton method with an Armijo search along the
projection arc. Each loop iteration evaluates the objective, gradient and Hessian at
one trial point in a single pass over the pilot set (the Hessian from precomputed
outer products R_j R_jᵀ, so a batch of palettes costs one matmul, or for large pilot
sets from products formed block by block in cache), and either accepts it and takes a
new Newton direction or halves the step. On large pilot sets Newton starts from the
solution on a strided subset of the rows. Values whose constraint is
slack are held at exactly λ_i = 0. Feasibility is decided first by the exact LP in
:mod:`map_jax.core.feasibility`; infeasible palettes get λ = 0 and a certificate,
never NaN. Everything that depends on R alone is built once by :func:`prepare_pilot`;
keep its result to solve many palettes on one pilot set.

Everything is pure JAX: ``solve_dual`` works under ``jit``, ``vmap`` (over palettes and
over reward matrices) and ``jax.jacobian`` with respect to the palette or rewards,
where the derivative comes from the implicit function theorem
(:mod:`map_jax.core.implicit`), not from unrolled iterations.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from map_jax.core import feasibility as feas
from map_jax.core import implicit, loops, validation


class DualSolution(NamedTuple):
  """The solution of the MAP dual for one palette (a pytree; batched under ``vmap``).

  Attributes:
    lam: λ (m,), >= 0; exactly 0 on values whose constraint is slack, and 0
      everywhere for an infeasible palette.
    realized: E_{p_λ}[r] (m,), the value levels the aligned model reaches on the
      pilot set.
    feasible: whether some mixture of the pilot samples reaches the palette.
    margin: ``max_q min_i (Rᵀq − c)_i`` (> 0 strictly feasible, < 0 infeasible).
    certificate: d (m,) in the simplex; for an infeasible palette
      ``max_j dᵀR_j < dᵀc``.
    ess: effective sample size 1 / Σ_j w_j² of the tilted pilot set (n at λ = 0).
    kl: KL(p_λ || p0) on the pilot set, Σ_j w_j log(n w_j).
    dual_value: g(λ); equals ``kl`` at the optimum (strong duality).
    kkt_residual: max_i |min(σ_i λ_i, (realized_i − c_i) / σ_i)| with σ the pilot
      standard deviations, a scale-free measure of optimality.
    converged: ``kkt_residual <= tol`` (for infeasible palettes: the LP converged).
    num_steps: accepted Newton steps (on a large pilot set, those of the starts on a subset of its rows and on
      its heaviest rows included; see :func:`prepare_pilot`).
    lp_basis: (m + 1,) the feasibility LP's final basis (see :class:`map_jax.core.feasibility.Feasibility`);
      with ``lam``, what ``solve_dual(..., start=solution)`` starts the next palette from.
  """

  lam: jax.Array
  realized: jax.Array
  feasible: jax.Array
  margin: jax.Array
  certificate: jax.Array
  ess: jax.Array
  kl: jax.Array
  dual_value: jax.Array
  kkt_residual: jax.Array
  converged: jax.Array
  num_steps: jax.Array
  lp_basis: jax.Array


def dual_objective(rewards: jax.Array, palette: jax.Array, lam: jax.Array) -> jax.Array:
  """g(λ) = λᵀc − log mean_j exp(λᵀR_j), computed stably with logsumexp."""
  n = rewards.shape[0]
  return jnp.dot(lam, palette) - (jax.nn.logsumexp(rewards @ lam) - jnp.log(n))


# The Hessian comes from a table of the rows' outer products (one matrix–vector product per evaluation, and one
# matrix product for a whole batch of palettes) while that table has at most 2²¹ entries (8 MB in float32:
# 23,000 rows of 12 values, 77,000 of 6). Beyond it the table no longer stays in cache, and reading it (360 MB
# at 10⁶ rows of 12 values) costs more than forming the products afresh: each evaluation streams the rows in
# blocks of _STREAM_ROWS and forms the block's products in cache (measured on one core at 10⁶ rows of 12
# values: 16 ms against the table's 17–19 ms per palette, 4.3× faster for 64 palettes at once, and no table in
# memory).
_MOMENT_TABLE_MAX_ENTRIES = 1 << 21
# Sums over the n rows run over blocks of this many rows, then over the blocks. One long float32 dot over 10⁶
# rows drifts by about 3e-6 relative to the sum, which would show up in the KKT residual (documented at 1e-6);
# summed per block and then across blocks it stays near 1e-7, at the same speed (a batched dot with few
# batches). Pilot sets of at most one block keep one plain product.
_BLOCK_ROWS = 1 << 14
# Rows per block of a streamed evaluation: 12 values and their 78 products of 512 rows fill 184 KB, well in L2
# (blocks of 1,024–8,192 rows measured 5–40% slower at 10⁶ × 12). The blocks' sums are compensated (Kahan), so
# their number costs no precision.
_STREAM_ROWS = 512
# Newton on a pilot set of more than 8 × feas.COARSE_ROWS rows starts from the solution on an evenly strided
# subset of at most feas.COARSE_ROWS of them (feas.coarse_subset, the LP's too). That start lies within the
# subset's sampling error of the solution (~1/√COARSE_ROWS), where Newton converges quadratically: two or three
# evaluations over all the rows instead of the 5–11 a start from λ = 0 takes (measured at 10⁶ rows: median
# single solve 61 -> 42 ms with 6 values, 208 -> 164 ms with 12; on 231,200 rows, where the subset is an eighth
# of the set, it gained nothing with 16 values). A palette the subset cannot reach (its Newton has not converged
# after _START_MAX_EVALS evaluations; those that converge take 7–15) starts from 0.
_START_MAX_EVALS = 20
# Where the subset's solution puts its weight on few rows (its effective sample size, scaled to the whole set,
# under _HEAVY_MAX_ESS, as with a dozen values and palettes near the 75% quantile), the subset lacks most of the
# rows that carry it, and Newton over all rows still takes 5–12 evaluations from there; where the subset cannot
# reach the palette at all, Newton from 0 takes 9–14. Then Newton also solves on a weighted sample of about
# 2 × _HEAVY_ROWS rows: the rows heavy under the subset's λ (or the direction its Newton took when it could not
# reach c) and every k-th row for the rest (see _heavy_rows), and all rows start from whichever λ has the lower
# objective on all rows. Measured at 10⁶ × 12 on the five palettes of `benchmarks.dual_solver --row=1000000:12`
# (ESS 46–275 for three of them; one the subset cannot reach), with the chord steps below: evaluations over all
# rows 5, 13 and 6 (2, 9 and 2 forming the Hessian) with the heavy rows alone and no start for the one, 4, 5
# and 4 (none forming it) with this sample; mean single solve 120 -> 90 ms (with _logits' pass mended too).
# Taking the sample's start up to an ESS of 65,536 rather than 4,096 also brings the two palettes of ESS 2,815
# and 5,137 from 2 evaluations that form the Hessian and 3–4 chord steps to 4 chord steps (three runs of the
# five, alternating: mean 92 -> 84 ms); for every palette (the 6-value ones have ESS 136,785–423,066) it cost
# 6 more ms. One palette alone: under vmap the batch reads the rows once for all its palettes anyway, and the
# start, tried lane by lane, measured slower (see loops.unbatched_cond).
_HEAVY_ROWS = 1 << 15
_HEAVY_MAX_ESS = 2 * _HEAVY_ROWS
# A Newton step on streamed rows reuses the Hessian of the last point where it was formed (a chord step: the
# pass then forms no products, 7 against 17 ms at 10⁶ × 12, see _evaluate_streamed) while each full step shrinks
# the KKT residual to at most this fraction of the last; after a step that shrank it less, a damped or a rejected
# one, the next evaluation forms it anew. The first step from a start near the solution (the subset's or the
# sample's) takes the Hessian found there. Near the solution chord steps shrink the residual 15–30 times each
# (10⁶ × 6 and 12, the benchmark's palettes), so they save most of the Hessian's cost at the price of an extra
# step now and then: mean single solve at 10⁶ × 6 41 -> 32 ms, at 10⁶ × 12 152 -> 121 ms (before the weighted
# sample above). Under vmap every palette forms the Hessian at every step (see loops.unbatched_cond).
_CHORD_CONTRACTION = 0.25


def _num_blocks(n: int) -> tuple[int, int]:
  """(count, size) of the row blocks for n rows: one block of n, or blocks of _BLOCK_ROWS, the last zero-padded."""
  size = min(n, _BLOCK_ROWS)
  return -(-n // size), size


@functools.partial(
  jax.tree_util.register_dataclass, data_fields=["zt", "zb", "stream", "moments", "log_weight"], meta_fields=["n"]
)
@dataclasses.dataclass(frozen=True)
class StandardizedRows:
  """The standardized rows z = (R − μ) / σ of a pilot set in the layouts a Newton evaluation and the solution's
  summary (:func:`_tilted`) read, each zero-padded to whole blocks of rows: with a moment table zt, zb and the
  table (blocks of _BLOCK_ROWS), streamed the stream alone (blocks of _STREAM_ROWS)."""

  n: int  # the real rows; the rest is padding
  # zt: (m, count · size) zᵀ; the logits λᵀzᵀ of a batch of palettes come out (batch, n) with no transpose, and
  # XLA:CPU runs this product several times faster than zλ with m numbers per row. zb: (count, m, size) the
  # same in blocks, for the blocked sums zᵀw (a batched product; over zt's layout XLA:CPU runs it ten times
  # slower).
  zt: jax.Array | None
  zb: jax.Array | None
  # The Hessian's data, one of the two (see _MOMENT_TABLE_MAX_ENTRIES): moments (count, m + m(m+1)/2, size),
  # the rows of zᵀ and then the upper triangle of the rows' outer products; or stream (num, m, _STREAM_ROWS),
  # zᵀ in small blocks whose products are formed in cache at each pass.
  stream: jax.Array | None
  moments: jax.Array | None
  # log w_j of weighted rows ((count, size) or (num, size), as the logits come), for Newton's evaluations on a
  # sample of a pilot set (see _heavy_rows); None for rows of weight 1.
  log_weight: jax.Array | None = None


def _standardized_rows(z: jax.Array, hessian: str, log_weight: jax.Array | None = None) -> StandardizedRows:
  """The layouts of standardized rows z (n, m) for a Hessian from the moment table (zt, zb and the table) or
  streamed (the stream alone), with the rows' log weights (n,) if given. All but the table stay differentiable
  in z."""
  n, m = z.shape
  if hessian == "streamed":
    num = -(-n // _STREAM_ROWS)
    stream = jnp.pad(z, ((0, num * _STREAM_ROWS - n), (0, 0)))
    if log_weight is not None:
      log_weight = jnp.pad(log_weight, (0, num * _STREAM_ROWS - n)).reshape(num, _STREAM_ROWS)
    return StandardizedRows(n, None, None, stream.reshape(num, _STREAM_ROWS, m).transpose(0, 2, 1), None, log_weight)
  count, size = _num_blocks(n)
  if log_weight is not None:
    log_weight = jnp.pad(log_weight, (0, count * size - n)).reshape(count, size)
  z_rows = jnp.pad(z, ((0, count * size - n), (0, 0))).reshape(count, size, m)
  zb = z_rows.transpose(0, 2, 1)
  zt = z_rows.reshape(count * size, m).T
  upper_i, upper_k = np.triu_indices(m)
  zs = jax.lax.stop_gradient(zb)
  moments = jnp.concatenate([zs, zs[:, upper_i] * zs[:, upper_k]], axis=1)
  return StandardizedRows(n, zt, zb, None, moments, log_weight)


@functools.partial(
  jax.tree_util.register_dataclass, data_fields=["rewards", "mean", "scale", "rows", "coarse", "lp"], meta_fields=[]
)
@dataclasses.dataclass(frozen=True)
class PreparedPilot:
  """A pilot set prepared once for any number of palettes: :func:`prepare_pilot`, passed to :func:`solve_dual`.

  A pytree: keep it across calls (a slider drag, a sweep of palettes), or pass it unbatched to ``jit`` and
  ``vmap`` as an argument (closed over as a constant, XLA would fold it into the program). It holds R and the
  LP's row blocks (two copies of R), and the standardized rows: for up to 2²¹ table entries in two layouts
  and the table of their outer products, otherwise in one layout (a third copy of R); on more than 262,144 rows
  also an evenly strided subset of at most 32,768 of them, where Newton finds its start.
  """

  rewards: jax.Array  # R (n, m) as given
  mean: jax.Array  # μ (m,)
  scale: jax.Array  # σ (m,), 1 for constant columns
  rows: StandardizedRows  # differentiable in R (μ and σ held constant) but for the Hessian's data
  coarse: StandardizedRows | None  # every k-th row, for Newton's start on large sets (see feas.COARSE_ROWS)
  lp: feas.PreparedLP


def prepare_pilot(rewards: jax.Array, *, hessian: str = "auto") -> PreparedPilot:
  """Prepares a pilot reward matrix R (n, m) for :func:`solve_dual`, once for all its palettes.

  Everything in a solve that depends on R alone (standardization, the LP's row blocks and starting shortlist,
  the Hessian's moment table, the subset of rows for Newton's start) is built here; a palette then costs only
  its Newton and simplex steps. On a pilot set of 231,200 rows and 6 values that is about half of a single solve
  (`python -m benchmarks.dual_solver --scaling`).

  Args:
    rewards: pilot reward matrix R, shape (n, m), float32 or float64.
    hessian: how each Newton step forms the Hessian Cov_w(z): ``"moments"`` (a table of the rows' m(m+1)/2
      outer products, one matrix–vector product per step and one matrix product for a batch of palettes),
      ``"streamed"`` (the rows in blocks of 512, their products formed in cache at each step; memory like R
      itself) or ``"auto"`` (the table while it has at most 2²¹ entries). The two agree to rounding.

  Raises:
    ValueError: on a concrete R that is not a finite, non-empty (n, m) matrix.

  Example:
    >>> R = jnp.array([[0., 1.], [1., 0.], [0.5, 0.5]])
    >>> pilot = prepare_pilot(R)
    >>> [bool(solve_dual(pilot, c).feasible) for c in jnp.array([[0.4, 0.45], [0.9, 0.9]])]
    [True, False]
  """
  if hessian not in ("auto", "moments", "streamed"):
    raise ValueError(f"hessian must be 'auto', 'moments' or 'streamed'; got {hessian!r}.")
  if validation.is_concrete(rewards):
    validation.check_rewards(rewards)
  return _prepare(rewards, hessian=hessian)


def _auto_hessian(n: int, m: int) -> str:
  return "moments" if n * (m + m * (m + 1) // 2) <= _MOMENT_TABLE_MAX_ENTRIES else "streamed"


@functools.partial(jax.jit, static_argnames=("hessian",))
def _prepare(rewards, *, hessian):
  rewards = jnp.asarray(rewards)
  if not jnp.issubdtype(rewards.dtype, jnp.floating):
    rewards = rewards.astype(jnp.result_type(float))
  if rewards.ndim != 2:
    raise ValueError(f"rewards must be a 2-D (samples × values) matrix; got shape {rewards.shape}.")
  n, m = rewards.shape
  if hessian == "auto":
    hessian = _auto_hessian(n, m)
  r_sg = jax.lax.stop_gradient(rewards)
  # A constant column is exactly zero once centred on its value; computing it as (R − mean) / std
  # would leave rounding noise that a singular Hessian direction amplifies.
  constant = jnp.max(r_sg, axis=0) == jnp.min(r_sg, axis=0)
  mean = jnp.where(constant, r_sg[0], jnp.mean(r_sg, axis=0))
  # σ of the centred column divided by its largest deviation first: the squares of rewards of order 1e-19
  # underflow float32 (σ² ~ 1e-38), which would pass for a constant column.
  spread = jnp.max(jnp.abs(r_sg - mean), axis=0)
  spread = jnp.where(spread > 0, spread, 1.0)
  std = spread * jnp.std((r_sg - mean) / spread, axis=0)
  scale = jnp.where(constant | (std == 0), 1.0, std)
  z = (rewards - mean) / scale
  rows = _standardized_rows(z, hessian)
  subset, _ = feas.coarse_subset(jax.lax.stop_gradient(z))
  coarse = None if subset is None else _standardized_rows(subset, _auto_hessian(*subset.shape))
  return PreparedPilot(rewards, mean, scale, rows, coarse, feas.prepare(r_sg))


def _row_mask(count: int, size: int, n: int) -> jax.Array:
  """(count, size): True on the n real rows, False on the padding."""
  return (np.arange(count)[:, None] * size + np.arange(size)[None, :]) < n


def _row_sums(blocks: jax.Array, w: jax.Array) -> jax.Array:
  """Σ_j w_j x_j for blocks (count, k, size) of columns x_j and weights w (count, size): per block, then over
  the blocks (see _BLOCK_ROWS)."""
  if blocks.shape[0] == 1:
    return blocks[0] @ w[0]
  return jnp.einsum("cks,cs->ck", blocks, w).sum(0)


class _NewtonState(NamedTuple):
  lam: jax.Array  # current iterate (standardized units)
  f: jax.Array  # −g at lam
  grad: jax.Array  # ∇(−g) = realized − c at lam
  step: jax.Array  # −(Newton direction): lam(α) = max(lam − α step, 0)
  active: jax.Array  # coordinates held at their bound in this direction
  alpha: jax.Array  # current step length on the projection arc
  num_steps: jax.Array
  num_evals: jax.Array
  residual: jax.Array
  hess: jax.Array  # the Hessian the step came from
  fresh: jax.Array  # whether the next evaluation forms the Hessian anew (see _CHORD_CONTRACTION)


def _evaluate(rows: StandardizedRows, c: jax.Array, lam: jax.Array):
  """−g, its gradient and Hessian at lam, in one pass over the pilot set (standardized units).

  With a moment table the Hessian comes from the shared outer products (E_w[z zᵀ] − μμᵀ) rather than from
  centred rows as in :func:`map_jax.core.implicit.tilted_moments`: under ``vmap`` over palettes the mean and
  the second moments are one matmul of the (batch, n) weights against a matrix all palettes share (its
  m(m+1)/2 distinct products only). Streamed (see _MOMENT_TABLE_MAX_ENTRIES), the same sums come block by
  block. In standardized units the cancellation costs little, and Newton needs only a good direction; the
  exact derivative uses the centred form. Every sum over rows is a sum over blocks of per-block sums (see
  _BLOCK_ROWS), compensated when streamed.
  """
  if rows.stream is not None:
    return _evaluate_streamed(rows, c, lam)
  n, zt, zb, moments = rows.n, rows.zt, rows.zb, rows.moments
  count, m, size = zb.shape
  logits = (lam @ zt).reshape(count, size)
  if rows.log_weight is None:
    # Padding rows have logit 0, never above the largest real one (the real logits average 0 in these units).
    top = jnp.max(logits)
  else:
    logits = logits + rows.log_weight
    top = jnp.max(jnp.where(_row_mask(count, size, n), logits, -jnp.inf))
  e = jnp.exp(logits - top)
  if count * size != n:
    e = jnp.where(_row_mask(count, size, n), e, 0.0)
  total = jnp.sum(jnp.sum(e, axis=1))
  lse = top + jnp.log(total) - jnp.log(n)
  table = _row_sums(moments, e) / total
  return _from_moments(lse, table, c, lam)


def _from_moments(lse, table, c, lam):
  """−g, gradient and Hessian from log E exp(λᵀz) and the weighted means of z and of its upper products."""
  m = c.shape[0]
  mean = table[:m]
  upper = jnp.zeros((m, m), table.dtype).at[np.triu_indices(m)].set(table[m:])
  second = upper + jnp.triu(upper, 1).T
  hess = second - jnp.outer(mean, mean)
  return lse - jnp.dot(lam, c), mean - c, hess


def _stream_sums(rows: StandardizedRows, lam: jax.Array, block_sums, powers: np.ndarray):
  """One scan over the blocks (num, m, size) of zᵀ in rows.stream for sums over the rows weighted by
  e_j = exp(λᵀz_j + log w_j − top), top the largest such logit: ``block_sums(zb, e, logits)`` gives a block's
  sums, the k-th of degree powers[k] in e. Each block's weights are relative to the largest logit so far and
  the sums are rescaled as it grows (the online log-sum-exp); the blocks are added with Kahan's compensation.
  Returns top and the sums."""
  n, stream = rows.n, rows.stream
  num, m, size = stream.shape

  def block(carry, xs):
    top, sums, comp = carry
    zb, first, log_w = xs  # log_w None for rows of weight 1
    logits = lam @ zb if log_w is None else lam @ zb + log_w
    real = first + jnp.arange(size) < n
    new_top = jnp.maximum(top, jnp.max(jnp.where(real, logits, -jnp.inf)))
    e = jnp.where(real, jnp.exp(logits - new_top), 0.0)
    rescale = jnp.exp(top - new_top) ** powers.astype(stream.dtype)
    y = block_sums(zb, e, logits) - comp * rescale
    t = sums * rescale + y
    return (new_top, t, (t - sums * rescale) - y), None

  zeros = jnp.zeros(len(powers), stream.dtype)
  init = (jnp.array(-jnp.inf, stream.dtype), zeros, zeros)
  (top, sums, _), _ = jax.lax.scan(block, init, (stream, jnp.arange(num) * size, rows.log_weight))
  return top, sums


def _evaluate_streamed(rows: StandardizedRows, c, lam, hessian=True):
  """_evaluate over the stream: Σ e, Σ e z and Σ e z_i z_k, the block's products formed in cache. Without the
  Hessian (hessian=False: −g and its gradient only, None for the Hessian) a pass reads the same rows but forms
  no products: at 10⁶ × 12 it takes 7 ms against 17."""
  m = rows.stream.shape[1]
  upper_i, upper_k = np.triu_indices(m)

  def block_sums(zb, e, _):
    sums = [jnp.sum(e)[None], zb @ e]
    if hessian:
      sums.append((zb[upper_i] * zb[upper_k]) @ e)
    return jnp.concatenate(sums)

  top, sums = _stream_sums(rows, lam, block_sums, np.ones(1 + m + (len(upper_i) if hessian else 0)))
  lse = top + jnp.log(sums[0]) - jnp.log(rows.n)
  if not hessian:
    return lse - jnp.dot(lam, c), sums[1:] / sums[0] - c, None
  return _from_moments(lse, sums[1:] / sums[0], c, lam)


def _tilted(rows: StandardizedRows, lam: jax.Array):
  """log Σ_j exp(λᵀz_j), and under the weights w = softmax(zλ): E_w z, the ESS 1 / Σ w² and KL(w || uniform)
  (differentiable in λ and the rows). Streamed (:func:`_stream_sums`) when the rows are: a batch of
  palettes then works on blocks in cache rather than on (batch, n) arrays (at 231,200 rows of 6 values, 64
  palettes took 3.8 ms each here against 0.9 ms one at a time). Rows of weight 1 only."""
  n = rows.n
  if rows.stream is None:
    count, _, size = rows.zb.shape
    logits = (lam @ rows.zt).reshape(count, size)
    real = _row_mask(count, size, n)
    lse = jax.nn.logsumexp(jnp.where(real, logits, -jnp.inf))
    log_w = logits - lse
    w = jnp.where(real, jnp.exp(log_w), 0.0)
    kl = jnp.sum(jnp.where(real, w * (log_w + jnp.log(n)), 0.0))
    # feasibility.effective_sample_size, blocked
    return lse, _row_sums(rows.zb, w), 1.0 / jnp.sum(jnp.sum(jnp.square(w), axis=1)), kl
  m = rows.stream.shape[1]

  def block_sums(zb, e, logits):  # Σ e, Σ e z, Σ e², Σ e λᵀz
    return jnp.concatenate([jnp.sum(e)[None], zb @ e, jnp.sum(e * e)[None], jnp.sum(e * logits)[None]])

  top, sums = _stream_sums(rows, lam, block_sums, np.r_[np.ones(m + 1), 2.0, 1.0])
  total = sums[0]
  lse = top + jnp.log(total)
  # Σ w log(n w) = Σ w λᵀz − lse + log n
  return lse, sums[1 : m + 1] / total, total**2 / sums[m + 1], sums[m + 2] / total - lse + jnp.log(n)


def _logits(rows: StandardizedRows, lam: jax.Array) -> jax.Array:
  """λᵀz_j of every row (of weight 1), flat in row order, −inf on the padding."""
  # Streamed, as a product and a sum over the m values: XLA:CPU's dot over the blocks' middle axis first copies
  # the rows into another layout (24 against 3 ms at 10⁶ × 12).
  logits = (rows.stream * lam[:, None]).sum(-2) if rows.stream is not None else lam @ rows.zt
  flat = logits.reshape(-1)
  return jnp.where(jnp.arange(flat.shape[0]) < rows.n, flat, -jnp.inf)


def _heavy_rows(rows: StandardizedRows, logits: jax.Array) -> StandardizedRows:
  """A weighted sample of the rows (of weight 1) that holds the weight exp(logit) of all of them: the row of
  largest logit (given as `_logits`) in each group of k = n // _HEAVY_ROWS consecutive rows, each of weight 1,
  then every k-th row of all, of weight k, or 0 where it is among the former. (The rows after the last whole
  group are only among the latter.)

  On this sample log E exp(λᵀz) is within sampling error of the whole set's at any λ whose weight sits on the
  heavy rows or spreads over many, so its Newton solution is a start near the whole set's; without the others a
  palette that the heavy rows alone exceed would get λ = 0 there. The largest of each group rather than the
  largest of all: XLA:CPU's top_k over 10⁶ logits, or the cumulative sum that picks the rows above a threshold,
  costs more than a Newton evaluation (and 17 per block of 512 rows 7 ms, against 1 ms for the groups' maxima);
  when a palette's weight sits on a few hundred rows spread over the set, few share a group.
  """
  n = rows.n
  k = max(1, n // _HEAVY_ROWS)
  groups = n // k
  grouped = logits[: groups * k].reshape(groups, k)
  heavy = jnp.argmax(grouped, axis=1) + k * jnp.arange(groups)
  others = np.arange(0, n, k)
  # A row of the others that is its group's heavy row has weight 0 there. The heavy rows come first, so a
  # streamed pass meets a finite logit in its first block.
  group_of = others // k
  taken = (group_of < groups) & (heavy[np.minimum(group_of, groups - 1)] == others)
  log_weight = jnp.concatenate(
    [jnp.zeros(groups, logits.dtype), jnp.where(taken, -jnp.inf, np.log(k)).astype(logits.dtype)]
  )
  ids = jnp.concatenate([heavy, jnp.asarray(others)])
  if rows.stream is not None:
    z = rows.stream[ids // _STREAM_ROWS, :, ids % _STREAM_ROWS]
  else:
    z = rows.zt[:, ids].T
  return _standardized_rows(z, _auto_hessian(*z.shape), log_weight)


def _kkt_residual(lam, grad):
  return jnp.max(jnp.abs(jnp.minimum(lam, grad)))


def _newton_step(lam, grad, hess, residual, ridge):
  """Projected Newton direction (Bertsekas 1982) with static shapes.

  Coordinates at (or within ``residual`` of) their bound whose gradient pushes them out
  are held: they move by a diagonally scaled gradient step and the projection keeps
  them at 0. The others take the Newton step of the reduced Hessian.
  """
  eps = jnp.minimum(residual, 1e-3)
  active = (lam <= eps) & (grad > 0)
  free = ~active
  diag = jnp.diagonal(hess)
  reduced = jnp.where(free[:, None] & free[None, :], hess, 0.0)
  reduced = reduced + jnp.diag(jnp.where(active, diag, 0.0) + ridge * (1.0 + diag))
  # Cholesky rather than LU: the reduced matrix is symmetric positive definite, and
  # Cholesky needs no row pivoting, which XLA:CPU runs as a small while loop of its own
  # inside this one. Should rounding leave the matrix indefinite (a NaN factor), the
  # diagonally scaled gradient step stands in.
  chol = jax.lax.linalg.cholesky(reduced, symmetrize_input=False)
  half = jax.lax.linalg.triangular_solve(chol, grad[:, None], left_side=True, lower=True)
  step = jax.lax.linalg.triangular_solve(chol, half, left_side=True, lower=True, transpose_a=True)[:, 0]
  fallback = grad / (diag + ridge * (1.0 + diag))
  step = jnp.where(jnp.all(jnp.isfinite(step)), step, fallback)
  return step, active


def _newton(
  rows: StandardizedRows, c: jax.Array, lam0: jax.Array, *, tol, max_iter, max_evals, ridge, hess0=None, fresh0=True
):
  """Projected Newton on −g from lam0 (standardized units). Given hess0, a Hessian near the one at lam0 (such as
  a subset's at its solution), and fresh0 False, the first evaluation is a chord step with it."""
  dtype = c.dtype
  sigma = 1e-4
  # Roundoff in f at the optimum; an accepted step may increase f by this much.
  slack = 16 * jnp.finfo(dtype).eps

  def evaluate(rows, c, lam, fresh, hess):
    """_evaluate, or its chord form with hess on streamed rows unless fresh."""
    if rows.stream is None:  # a table's Hessian costs little more than its gradient
      return _evaluate(rows, c, lam)

    def chord(operand):
      rows, c, lam, hess = operand
      f, grad, _ = _evaluate_streamed(rows, c, lam, hessian=False)
      return f, grad, hess

    # Under vmap every palette forms its Hessian: the batch reads the rows once for all its lanes.
    return loops.unbatched_cond(~fresh, chord, lambda operand: _evaluate(*operand[:3]), (rows, c, lam, hess))

  if hess0 is None:
    f0, g0, h0 = _evaluate(rows, c, lam0)
    fresh0 = jnp.array(True)
  else:
    fresh0 = jnp.asarray(fresh0)
    f0, g0, h0 = evaluate(rows, c, lam0, fresh0, hess0)
  res0 = _kkt_residual(lam0, g0)
  step0, active0 = _newton_step(lam0, g0, h0, res0, ridge)
  one, zero = jnp.ones((), jnp.int32), jnp.zeros((), jnp.int32)
  # After a chord step from a given Hessian the next evaluation trusts it until a step shrinks the residual
  # too little (see _CHORD_CONTRACTION).
  state = _NewtonState(lam0, f0, g0, step0, active0, jnp.ones((), dtype), zero, one, res0, h0, fresh0)

  def cond(consts, s):
    return (s.residual > tol) & (s.num_steps < max_iter) & (s.num_evals < max_evals) & (s.alpha > 1e-12)

  def body(consts, s):
    rows, c = consts
    trial = jnp.maximum(s.lam - s.alpha * s.step, 0.0)
    f_t, g_t, h_t = evaluate(rows, c, trial, s.fresh, s.hess)
    # Armijo along the projection arc: predicted decrease from the free coordinates'
    # Newton step plus the held ones' actual movement.
    predicted = s.alpha * jnp.sum(jnp.where(s.active, 0.0, s.grad * s.step)) + jnp.sum(
      jnp.where(s.active, s.grad * (s.lam - trial), 0.0)
    )
    accept = f_t <= s.f - sigma * predicted + slack * (1.0 + jnp.abs(s.f))
    accept = accept & jnp.isfinite(f_t)
    res_t = _kkt_residual(trial, g_t)
    step_t, active_t = _newton_step(trial, g_t, h_t, res_t, ridge)
    new = _NewtonState(
      trial,
      f_t,
      g_t,
      step_t,
      active_t,
      jnp.ones((), dtype),
      s.num_steps + 1,
      s.num_evals + 1,
      res_t,
      h_t,
      (res_t > _CHORD_CONTRACTION * s.residual) | (s.alpha < 1),
    )
    old = s._replace(alpha=0.5 * s.alpha, num_evals=s.num_evals + 1, fresh=jnp.array(True))
    return jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, old)

  # Under vmap a palette near the feasibility boundary needs 30–50 steps where most
  # need 5; the compacting loop keeps the others from paying for it.
  return loops.compacting_while_loop(cond, body, (rows, c), state)


def solve_dual(
  rewards: jax.Array | PreparedPilot,
  palette: jax.Array,
  *,
  tol: float | None = None,
  max_iter: int = 50,
  ridge: float | None = None,
  lp_tol: float | None = None,
  lp_max_iter: int = feas.MAX_PIVOTS,
  start: jax.Array | DualSolution | None = None,
) -> DualSolution:
  """Solves the MAP dual exactly for one palette.

  Args:
    rewards: pilot reward matrix R, shape (n, m), float32 or float64; or ``prepare_pilot(R)``, kept across
      calls so that each palette pays only for its own steps (the results are the same bit for bit).
    palette: target levels c, shape (m,).
    tol: target KKT residual (see :class:`DualSolution`); defaults to 1e-12 in
      float64 and 1e-6 in float32.
    max_iter: cap on Newton steps (typically 5–20 are needed).
    ridge: relative diagonal regularisation of the Hessian, which is singular for a
      constant reward column; defaults to 100 × machine epsilon.
    lp_tol, lp_max_iter: options of the feasibility LP, see
      :func:`map_jax.core.feasibility.feasibility`.
    start: the solution of a previous palette on the same pilot set, such as the last one in a slider drag or
      a sweep along a path: Newton starts from its ``lam`` and the feasibility LP from its ``lp_basis`` (on
      more than about 4,000 rows; see the ``start`` of :func:`map_jax.core.feasibility.feasibility`). Or a
      λ (m,) alone, in reward units, for Newton only (negative entries count as 0, non-finite ones make it
      start from 0). The answer is the same to ``tol``; a start near it saves Newton steps and LP pivots, and
      one from which Newton has not converged after 20 evaluations, or the LP reached no feasible basis in 32
      pivots, gives way to the usual start.

  Returns:
    A :class:`DualSolution`.

  Raises:
    ValueError: on concrete inputs, for an empty or non-finite reward matrix, a
      palette of the wrong shape or with non-finite levels (see
      :mod:`map_jax.core.validation`). Traced inputs are not inspected.

  Example:
    >>> R = jnp.array([[0., 1.], [1., 0.], [0.5, 0.5]])
    >>> sol = solve_dual(R, jnp.array([0.4, 0.45]))
    >>> bool(sol.feasible), sol.lam.shape
    (True, (2,))
  """
  pilot = rewards if isinstance(rewards, PreparedPilot) else prepare_pilot(rewards)
  m = pilot.rewards.shape[1]
  if validation.is_concrete(palette):
    validation.check_palette(palette, m)
  lam_start, lp_start = (start.lam, start.lp_basis) if isinstance(start, DualSolution) else (start, None)
  if lam_start is not None and jnp.shape(lam_start) != (m,):
    raise ValueError(f"start must be a solution or a λ of shape ({m},); got λ of shape {jnp.shape(lam_start)}.")
  if lp_start is not None and jnp.shape(lp_start) != (m + 1,):
    raise ValueError(f"start's lp_basis must have shape ({m + 1},); got {jnp.shape(lp_start)}.")
  return _solve_prepared(
    pilot,
    palette,
    lam_start,
    lp_start,
    tol=tol,
    max_iter=max_iter,
    ridge=ridge,
    lp_tol=lp_tol,
    lp_max_iter=lp_max_iter,
  )


# Compiled once per shape, dtype and options, so eager calls are fast too; inside an
# outer jit or vmap this inlines.
@functools.partial(jax.jit, static_argnames=("tol", "max_iter", "ridge", "lp_tol", "lp_max_iter"))
def _solve_prepared(pilot: PreparedPilot, palette, start, lp_start, *, tol, max_iter, ridge, lp_tol, lp_max_iter):
  rewards = pilot.rewards
  dtype = rewards.dtype
  palette = jnp.asarray(palette, dtype)
  if palette.shape != rewards.shape[1:]:
    raise ValueError(f"solve_dual expects rewards (n, m) and palette (m,); got {rewards.shape} and {palette.shape}.")
  f64 = dtype == jnp.float64
  if tol is None:
    tol = 1e-12 if f64 else 1e-6
  if ridge is None:
    ridge = 100 * float(jnp.finfo(dtype).eps)

  c_sg = jax.lax.stop_gradient(palette)
  lp = feas.feasibility(
    jax.lax.stop_gradient(rewards),
    c_sg,
    tol=lp_tol,
    max_iter=lp_max_iter,
    prepared=jax.lax.stop_gradient(pilot.lp),
    start=None if lp_start is None else jax.lax.stop_gradient(lp_start),
  )
  mean, scale = pilot.mean, pilot.scale
  # Infeasible palettes are solved at the pilot means instead (λ = 0 at once), so the
  # batch stays finite; their λ is reported as 0.
  c_solve = jnp.where(lp.feasible, c_sg, mean)
  c_std = (c_solve - mean) / scale
  n = rewards.shape[0]
  newton = functools.partial(_newton, tol=tol, max_iter=max_iter, ridge=ridge)
  rows = jax.lax.stop_gradient(pilot.rows)
  # A start (the subset's solution, or the caller's λ) gets _START_MAX_EVALS evaluations; one that has not
  # converged by then gives way to the next start.
  start_evals = min(_START_MAX_EVALS, 4 * max_iter)

  def from_subset_or_zero(num_steps):
    lam0 = jnp.zeros_like(c_std)
    if pilot.coarse is None:
      state = newton(rows, c_std, lam0, max_evals=4 * max_iter)
      return state._replace(num_steps=num_steps + state.num_steps)
    first = newton(pilot.coarse, c_std, lam0, max_evals=start_evals)
    converged = first.residual <= tol
    lam0 = jnp.where(converged, first.lam, lam0)
    num_steps = num_steps + first.num_steps
    # A palette the subset cannot reach, or whose weight sits on few rows: try the heavy rows' sample's start.
    concentrated = ~converged | (_tilted(pilot.coarse, lam0)[2] * (n / pilot.coarse.n) < _HEAVY_MAX_ESS)

    def from_heavy_rows(operand):  # every traced value passed in (see loops.unbatched_cond)
      rows, c_std, lam0, towards, converged, hess0 = operand
      # The rows heavy at the subset's solution, or where its Newton was heading when it could not reach c.
      logits = _logits(rows, towards)
      second = newton(_heavy_rows(rows, logits), c_std, lam0, max_evals=start_evals)
      # −g on all rows (up to the constant log n) at both: the lower is the better start (see _HEAVY_ROWS). At
      # λ = 0 it is log n.
      before = jnp.where(converged, jax.nn.logsumexp(logits) - jnp.dot(lam0, c_std), jnp.log(n))
      after = jax.nn.logsumexp(_logits(rows, second.lam)) - jnp.dot(second.lam, c_std)
      better = (second.residual <= tol) & (after < before)
      lam, hess = jnp.where(better, second.lam, lam0), jnp.where(better, second.hess, hess0)
      return lam, hess, better | converged, second.num_steps

    lam0, hess0, near, steps = loops.unbatched_cond(
      concentrated,
      from_heavy_rows,
      lambda operand: (operand[2], operand[5], operand[4], jnp.zeros((), jnp.int32)),
      (rows, c_std, lam0, first.lam, converged, first.hess),
    )
    # A start near the solution lends its Hessian (the subset's, or the heavy rows') to the first step on all rows.
    state = newton(rows, c_std, lam0, max_evals=4 * max_iter, hess0=hess0, fresh0=~near)
    return state._replace(num_steps=num_steps + steps + state.num_steps)

  if start is None:
    state = from_subset_or_zero(jnp.zeros((), jnp.int32))
  else:
    given = jnp.maximum(jax.lax.stop_gradient(jnp.asarray(start, dtype)) * scale, 0.0)
    given = jnp.where(jnp.all(jnp.isfinite(given)), given, 0.0)
    first = newton(rows, c_std, given, max_evals=start_evals)
    state = jax.lax.cond(first.residual <= tol, lambda: first, lambda: from_subset_or_zero(first.num_steps))
  lam = jnp.where(lp.feasible, state.lam / scale, 0.0)
  lam = implicit.attach_implicit_grad(rewards, palette, lam)

  # Everything below is ordinary differentiable JAX of (rewards, palette, λ), in the standardized units of the
  # solve: with R = μ + σ z (μ, σ held constant), λᵀr = λᵀμ + (σλ)ᵀz and the constant λᵀμ cancels in the
  # weights, so rewards far from zero (1e4 + O(1)) cost no float32 precision in the logits, weights, levels,
  # ESS or KL.
  lse, z_mean, ess, kl = _tilted(pilot.rows, lam * scale)
  realized = mean + scale * z_mean
  margin = lp.margin - jnp.dot(lp.certificate, palette - c_sg)  # d margin / dc = −d
  converged = jnp.where(lp.feasible, state.residual <= tol, lp.converged)
  return DualSolution(
    lam=lam,
    realized=realized,
    feasible=lp.feasible,
    margin=margin,
    certificate=lp.certificate,
    ess=ess,
    kl=kl,
    dual_value=jnp.dot(lam, palette - mean) - (lse - jnp.log(n)),  # dual_objective, sharing lse
    kkt_residual=state.residual,
    converged=converged,
    num_steps=state.num_steps,
    lp_basis=lp.basis,
  )
