"""Value palettes from quantiles or classifier odds, and their automatic adjustment.

A palette c (m,) says which expected level each value must reach under the aligned
model. Two ways of writing one down recur in MAP:

* **Quantile palettes** (the paper's "HHH-q%"): raise value i to the q_i-quantile of
  its pilot rewards, never below the pilot mean μ_i, so c_i = max(μ_i, Q_i(q_i)).
* **Classifier palettes**: for a reward r_i = log p(v_i | x, y) from a classifier,
  c_i = μ_i + log(1 + κ_i) asks the aligned model to make v_i "κ_i more likely"
  (its geometric-mean probability multiplied by 1 + κ_i).

A palette that no mixture of the pilot samples reaches is *infeasible*
(:func:`map_jax.core.feasibility.feasibility`). :func:`adjust_palette` pulls it back to
the feasible set, either uniformly along the segment from the pilot means
(``"interpolate"``) or one value at a time in priority order (``"greedy"``).
"""

from collections.abc import Sequence
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from map_jax.core import dual, validation
from map_jax.core import feasibility as feas


def _float_rewards(rewards) -> jax.Array:
  rewards = jnp.asarray(rewards)
  if not jnp.issubdtype(rewards.dtype, jnp.floating):
    rewards = rewards.astype(jnp.result_type(float))
  if rewards.ndim != 2:
    raise ValueError(f"rewards must be a matrix (n, m); got shape {rewards.shape}.")
  if validation.is_concrete(rewards):
    validation.check_rewards(rewards)
  return rewards


def _per_value(spec, m: int, name: str) -> list:
  """Checks that ``spec`` lists one entry (a number or None) per value."""
  if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
    try:
      spec = list(spec)  # e.g. a concrete NumPy or JAX vector
    except TypeError:
      raise ValueError(f"{name} must be a sequence of {m} numbers or None; got {spec!r}.") from None
  spec = list(spec)
  if len(spec) != m:
    raise ValueError(f"{name} has {len(spec)} entries but rewards have {m} values.")
  out = []
  for i, v in enumerate(spec):
    if v is None:
      out.append(None)
      continue
    try:
      f = float(v)
    except Exception:  # also a traced value: quantiles are part of the static spec
      raise ValueError(f"{name}[{i}] = {v!r} is not a concrete number or None.") from None
    if not math.isfinite(f):
      raise ValueError(f"{name}[{i}] = {v!r} is not finite.")
    out.append(f)
  return out


def quantile_palette(rewards: jax.Array, quantiles: Sequence[float | None], *, at_least_mean: bool = True) -> jax.Array:
  """Palette from per-value quantiles of the pilot rewards (the paper's rule).

  .. math::

     c_i = \\max(μ_i, Q_i(q_i))  \\quad\\text{or}\\quad  c_i = μ_i \\text{ if } q_i
     \\text{ is None,}

  where μ_i is the pilot mean of value i and Q_i its empirical quantile with linear
  interpolation (``numpy.quantile``'s default). The floor at μ_i makes "raise to the
  median" mean "do not lower" for a skewed value whose median is below its mean.

  Args:
    rewards: pilot reward matrix R, shape (n, m).
    quantiles: m entries, each a float in [0, 1] or None ("keep": the mean).
    at_least_mean: apply the floor at μ_i; without it c_i = Q_i(q_i) may lie below
      the mean, which the aligned model satisfies without effort (λ_i = 0).

  Returns:
    The palette c, shape (m,), in the rewards' dtype.

  Raises:
    ValueError: if ``quantiles`` does not have m entries or an entry is not None and
      not in [0, 1].

  Example:
    >>> R = jnp.array([[0., 1.], [1., 0.], [2., 2.], [3., 1.]])
    >>> quantile_palette(R, [0.75, None])   # max(1.5, 2.25), mean 1
    Array([2.25, 1.  ], dtype=float32)
  """
  rewards = _float_rewards(rewards)
  m = rewards.shape[1]
  qs = _per_value(quantiles, m, "quantiles")
  for i, q in enumerate(qs):
    if q is not None and not 0.0 <= q <= 1.0:
      raise ValueError(f"quantiles[{i}] = {q} is outside [0, 1].")
  mean = jnp.mean(rewards, axis=0)
  probs = jnp.asarray([0.5 if q is None else q for q in qs], rewards.dtype)
  # One quantile per column: the diagonal of the (m, m) table of all quantiles.
  levels = jnp.diagonal(jnp.quantile(rewards, probs, axis=0))
  if at_least_mean:
    levels = jnp.maximum(levels, mean)
  keep = jnp.asarray([q is None for q in qs])
  return jnp.where(keep, mean, levels)


def classifier_palette(rewards: jax.Array, kappa: Sequence[float | None]) -> jax.Array:
  """Palette "κ_i more likely" for log-probability rewards r_i = log p(v_i | x, y).

  .. math::

     c_i = μ_i + \\log(1 + κ_i),

  so exp(c_i) = (1 + κ_i) exp(μ_i): the aligned model's geometric-mean probability of
  v_i is 1 + κ_i times the base model's. κ_i = 0 or None keeps the mean; −1 < κ_i < 0
  allows value i to become less likely.

  Args:
    rewards: pilot reward matrix R (n, m) of classifier log-probabilities.
    kappa: m entries, each a float > −1 or None.

  Returns:
    The palette c, shape (m,).

  Raises:
    ValueError: if ``kappa`` does not have m entries or an entry is <= −1.

  Example:
    >>> R = jnp.log(jnp.array([[0.2, 0.5], [0.4, 0.5]]))
    >>> jnp.round(jnp.exp(classifier_palette(R, [1.0, None])), 4)  # 2 × 0.2828
    Array([0.5657, 0.5   ], dtype=float32)
  """
  rewards = _float_rewards(rewards)
  m = rewards.shape[1]
  ks = _per_value(kappa, m, "kappa")
  for i, k in enumerate(ks):
    if k is not None and k <= -1.0:
      raise ValueError(f"kappa[{i}] = {k} must be > -1 (log(1 + kappa) is undefined).")
  shift = jnp.asarray([0.0 if k is None else math.log1p(k) for k in ks], rewards.dtype)
  return jnp.mean(rewards, axis=0) + shift


class AdjustedPalette(NamedTuple):
  """Result of :func:`adjust_palette` (a pytree; batched under ``vmap``).

  Attributes:
    palette: the adjusted, feasible palette (m,). Equal to the input when that is
      feasible.
    rho: the smallest share of a requested raise that was granted,
      min_i fraction_i; for ``"interpolate"`` this is the step ρ along the segment.
    fraction: per value, (c'_i − c0_i) / (c_i − c0_i), the share of its requested
      raise above the start c0 that value i keeps (1 for values not raised).
    feasible: whether the *input* palette was feasible (and within ``max_kl`` if
      given); then nothing changed.
    margin: the LP feasibility margin of the adjusted palette: >= 0, and within the
      bisection tolerance of 0 when the palette had to be adjusted (it then lies on
      the boundary of the feasible set).
    start: c0 = min(c, μ), the always-feasible start of the adjustment.
  """

  palette: jax.Array
  rho: jax.Array
  fraction: jax.Array
  feasible: jax.Array
  margin: jax.Array
  start: jax.Array


class _Search(NamedTuple):
  lo: jax.Array  # largest step the LP found feasible (t = 0 is by assumption)
  hi: jax.Array  # smallest step found infeasible (2: none yet)
  t: jax.Array  # next trial step
  margin: jax.Array  # the LP margin at lo
  end_ok: jax.Array  # whether the end point (t = 1) is feasible


def _search_segment(rewards, start, end, *, tol, accept) -> _Search:
  """Largest t in [0, 1] with start + t (end − start) acceptable, given t = 0 is.

  ``accept(c) -> (ok, margin)``. Feasibility (the margin is concave in c) and a KL
  budget (the optimal KL is convex and nondecreasing in c) both make the acceptable
  steps an interval [0, t*], so bisection on the verdict finds t* to ``tol``. The step
  returned is the last one the LP found feasible, never a point beyond the boundary.
  The first trial is the end point itself, bit for bit, so a feasible end closes the
  bracket at once. If no step > 0 is feasible, start lies within ``tol`` of the
  boundary and its margin is reported as 0 (it is in [0, tol · max|end − start|]).
  """
  dtype = rewards.dtype

  def cond(s):
    return s.hi - s.lo > tol

  def body(s):
    point = jnp.where(s.t >= 1, end, start + s.t * (end - start))
    ok, margin = accept(point)
    lo = jnp.where(ok, s.t, s.lo)
    hi = jnp.where(ok & (s.t < 1), s.hi, s.t)
    return _Search(lo, hi, 0.5 * (lo + hi), jnp.where(ok, margin, s.margin), s.end_ok | (ok & (s.t >= 1)))

  # A single LP call site inside the loop, so the LP is traced and compiled once.
  zero = jnp.zeros((), dtype)
  init = _Search(zero, jnp.full((), 2.0, dtype), jnp.ones((), dtype), zero, jnp.zeros((), bool))
  return jax.lax.while_loop(cond, body, init)


def adjust_palette(
  rewards: jax.Array,
  palette: jax.Array,
  *,
  method: str = "interpolate",
  priority: Sequence[int] | None = None,
  max_kl: float | None = None,
  tol: float | None = None,
  lp_tol: float | None = None,
  lp_max_iter: int = feas.MAX_PIVOTS,
) -> AdjustedPalette:
  """Pulls a palette back to the feasible set of the pilot set.

  Let μ be the pilot means and c0 = min(c, μ): values asked to stay at or below their
  mean are not *raised* and keep their requested level; c0 is always feasible (the
  uniform mixture reaches μ). For palettes with c >= μ, such as every quantile palette
  with the mean floor, c0 = μ as in the paper. The raised values are then scaled back:

  * ``"interpolate"`` (the paper's rule): c' = c0 + ρ (c − c0) with the largest
    ρ ∈ [0, 1] for which c' is feasible. Since the feasibility margin is concave in c,
    the feasible ρ form an interval and ρ is found by bisection on the exact LP
    margin, to ``tol``.
  * ``"greedy"``: start every raised value at its mean and, in ``priority`` order,
    raise each one to the highest feasible level <= its target while the others are
    held; earlier values in the order get all they ask for if that is feasible.

  A palette on the boundary of the feasible set is reached only in the limit λ → ∞,
  by a reweighting concentrated on a handful of pilot samples (on the reference data,
  the interpolated HHH-90% palette has λ_humor ≈ 3000 and an ESS of 3). ``max_kl``
  asks for more: the largest step whose aligned model stays within a KL budget,
  KL(p_λ || p0) <= max_kl. The optimal KL is the value of a convex program whose
  constraints' right-hand side is c, so it is convex in c and nondecreasing in every
  c_i; along each segment the acceptable steps are again an interval, found by
  bisection on :func:`~map_jax.core.dual.solve_dual`'s KL.

  A palette already acceptable comes back unchanged with ρ = 1. Everything is pure JAX
  (``method`` and ``priority`` are static: under ``jit`` pass ``priority`` as a tuple
  in ``static_argnames``), so a batch of palettes can be adjusted under ``jit`` and
  ``vmap``. Derivatives flow only through a palette returned unchanged; the position
  of the boundary point is not differentiated.

  Args:
    rewards: pilot reward matrix R, shape (n, m).
    palette: requested levels c, shape (m,).
    method: ``"interpolate"`` or ``"greedy"``.
    priority: for ``"greedy"``, value indices in the order they are raised; values
      not listed follow in index order. Defaults to 0, 1, ..., m − 1.
    max_kl: optional KL budget (nats) for the aligned model on the pilot set; at most
      log n. Without it the adjusted palette lies on the feasible set's boundary.
    tol: bisection tolerance on the step along each segment (as a share of the
      requested raise); defaults to 1e-10 in float64 and 1e-6 in float32.
    lp_tol, lp_max_iter: options of :func:`map_jax.core.feasibility.feasibility`.

  Returns:
    An :class:`AdjustedPalette`.

  Example:
    >>> R = jnp.array([[0., 2.], [2., 0.], [0., 0.]])   # means (2/3, 2/3)
    >>> adj = adjust_palette(R, jnp.array([2., 2.]))     # best balanced level is (1, 1)
    >>> jnp.round(adj.palette, 4), jnp.round(adj.rho, 4)
    (Array([1., 1.], dtype=float32), Array(0.25, dtype=float32))
  """
  rewards = _float_rewards(rewards)
  dtype = rewards.dtype
  n, m = rewards.shape
  palette = jnp.asarray(palette, dtype)
  if palette.shape != (m,):
    raise ValueError(f"palette must have shape ({m},); got {palette.shape}.")
  if validation.is_concrete(palette):
    validation.check_palette(palette, m)
  if max_kl is not None and validation.is_concrete(max_kl) and not math.isfinite(float(max_kl)):
    raise ValueError(f"max_kl must be a finite number of nats; got {max_kl}.")
  if method not in ("interpolate", "greedy"):
    raise ValueError(f"method must be 'interpolate' or 'greedy'; got {method!r}.")
  if priority is not None and method != "greedy":
    raise ValueError("priority only applies to method='greedy'.")
  if tol is None:
    tol = 1e-10 if dtype == jnp.float64 else 1e-6

  # The search solves many palettes on one pilot set: prepared once, outside its loop.
  if max_kl is None:
    prepared = feas.prepare(rewards)

    def accept(c):
      lp = feas.feasibility(rewards, c, tol=lp_tol, max_iter=lp_max_iter, prepared=prepared)
      return lp.feasible, lp.margin
  else:
    pilot = dual.prepare_pilot(rewards)

    def accept(c):
      sol = dual.solve_dual(pilot, c, lp_tol=lp_tol, lp_max_iter=lp_max_iter)
      return sol.feasible & (sol.kl <= max_kl), sol.margin

  search = dict(tol=tol, accept=accept)

  palette_sg = jax.lax.stop_gradient(palette)
  start = jnp.minimum(palette_sg, jnp.mean(rewards, axis=0))
  raise_ = palette_sg - start  # >= 0, and 0 on values not raised

  if method == "interpolate":
    found = _search_segment(rewards, start, palette_sg, **search)
    feasible, margin = found.end_ok, found.margin
    adjusted = jnp.where(feasible, palette_sg, start + found.lo * raise_)
  else:

    def raise_one(carry, i):
      current, _, all_ok = carry
      end = jnp.where(jnp.arange(m) == i, palette_sg, current)
      found = _search_segment(rewards, current, end, **search)
      current = jnp.where(found.end_ok, end, current + found.lo * (end - current))
      return (current, found.margin, all_ok & found.end_ok), None

    order = jnp.asarray(_priority_order(priority, m))
    init = (start, jnp.zeros((), dtype), jnp.ones((), bool))
    (adjusted, margin, feasible), _ = jax.lax.scan(raise_one, init, order)

  # The input is feasible iff every end point was: then the result is the input, and
  # gradients flow to it as the identity.
  adjusted = jnp.where(feasible, palette, adjusted)
  raised = raise_ > 0
  fraction = jnp.where(raised, (adjusted - start) / jnp.where(raised, raise_, 1.0), 1.0)
  fraction = jnp.where(feasible, 1.0, fraction)
  return AdjustedPalette(
    palette=adjusted, rho=jnp.min(fraction), fraction=fraction, feasible=feasible, margin=margin, start=start
  )


def _priority_order(priority, m: int) -> list[int]:
  if priority is None:
    return list(range(m))
  order = []
  for k, i in enumerate(priority):
    if isinstance(i, bool) or not isinstance(i, int) and not hasattr(i, "__index__"):
      raise ValueError(f"priority[{k}] = {i!r} is not a value index.")
    i = int(i)
    if not 0 <= i < m:
      raise ValueError(f"priority[{k}] = {i} is not a value index in [0, {m}).")
    if i in order:
      raise ValueError(f"priority[{k}] = {i} is listed twice.")
    order.append(i)
  return order + [i for i in range(m) if i not in order]
