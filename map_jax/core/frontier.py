"""Exploring the reachable value levels: random palettes, the MORL baseline, navigation efficiency.

MAP targets a palette c and solves for λ; the multi-objective RL (MORL) baseline picks
λ directly, typically as a random scale times a random direction on the simplex. The
MAP paper compares the two by the *realized* levels E_{p_λ}[r] each choice of λ
reaches on the pilot set, where p_λ puts weight softmax(Rλ)_j on sample j:

* :func:`random_palettes` draws c_i ~ U(μ_i, B_i) between the pilot mean and the
  largest pilot reward, solves each palette, and keeps the feasible ones whose λ is
  not extreme (||λ||₁ <= 6). Every kept palette improves every value over the base
  model by construction.
* :func:`morl_lambdas` draws λ = s u with s ~ U(0, 6) and u ~ Dirichlet(1, ..., 1).
* :func:`navigation_efficiency` is the share of λ whose realized levels are at least
  the base model's in *every* value: 1 for MAP's kept palettes, and much lower for
  random MORL directions, which trade some values away.

Levels are reported in reward units (:func:`realized_levels`) or as quantiles of the
base model's pilot distribution (:func:`quantile_levels`), the scale of the paper's
radar plots.
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from map_jax.core import dual


class RandomPalettes(NamedTuple):
  """Candidates from :func:`random_palettes`; all arrays have a leading axis ``num``.

  Attributes:
    palettes: the sampled palettes c, (num, m).
    solution: the batched :class:`~map_jax.core.dual.DualSolution` of each palette.
    keep: (num,) True where the palette is feasible and ||λ||₁ <= ``max_l1``.
  """

  palettes: jax.Array
  solution: dual.DualSolution
  keep: jax.Array


def random_palettes(
  key: jax.Array,
  rewards: jax.Array,
  num: int,
  *,
  max_l1: float = 6.0,
  values: Sequence[int] | None = None,
  **solve_options,
) -> RandomPalettes:
  """Samples palettes uniformly between the pilot means and maxima, and solves them.

  For each candidate k and value i (in ``values``; the others stay at the mean)

  .. math::

     c_{ki} \\sim U(μ_i, B_i),  \\qquad  B_i = \\max_j R_{ji},

  then λ_k = :func:`~map_jax.core.dual.solve_dual` (R, c_k), all under one ``vmap``.
  A candidate is kept if it is feasible and ||λ_k||₁ <= ``max_l1`` (the paper's filter
  against palettes that only a degenerate, very low-ESS reweighting reaches). Shapes
  are static: every candidate is returned with a ``keep`` mask; :func:`feasible_palettes` filters.

  Args:
    key: a PRNG key.
    rewards: pilot reward matrix R, shape (n, m).
    num: number of candidates (static).
    max_l1: largest ||λ||₁ kept.
    values: indices of the values to randomise (static); defaults to all.
    **solve_options: passed to :func:`~map_jax.core.dual.solve_dual`.

  Returns:
    A :class:`RandomPalettes`.

  Example:
    >>> R = jax.random.normal(jax.random.key(0), (500, 3))
    >>> cands = random_palettes(jax.random.key(1), R, 64)
    >>> palettes, solution = feasible_palettes(cands)
    >>> bool(jnp.all(solution.realized >= palettes - 1e-4))
    True
  """
  rewards = jnp.asarray(rewards)
  if not jnp.issubdtype(rewards.dtype, jnp.floating):
    rewards = rewards.astype(jnp.result_type(float))
  n, m = rewards.shape
  chosen = list(range(m)) if values is None else [int(i) for i in values]
  mask = jnp.zeros((m,), bool).at[jnp.asarray(chosen, jnp.int32)].set(True)
  low = jnp.mean(rewards, axis=0)
  high = jnp.max(rewards, axis=0)
  u = jax.random.uniform(key, (num, m), rewards.dtype)
  palettes = jnp.where(mask, low + u * (high - low), low)
  solution = jax.vmap(lambda c: dual.solve_dual(rewards, c, **solve_options))(palettes)
  keep = solution.feasible & (jnp.sum(jnp.abs(solution.lam), axis=-1) <= max_l1)
  return RandomPalettes(palettes, solution, keep)


def feasible_palettes(candidates: RandomPalettes) -> tuple[jax.Array, dual.DualSolution]:
  """The kept palettes and their solutions, filtered eagerly (not traceable).

  Returns:
    ``(palettes, solution)`` with leading axis ``sum(keep)``.
  """
  keep = jax.device_get(candidates.keep)
  return (candidates.palettes[keep], jax.tree.map(lambda leaf: leaf[keep], candidates.solution))


def morl_lambdas(key: jax.Array, num: int, m: int, *, max_scale: float = 6.0, dtype=None) -> jax.Array:
  """The MORL baseline's random λ = s u, s ~ U(0, max_scale), u ~ Dirichlet(1_m).

  The direction u is uniform on the simplex, so ||λ||₁ = s is uniform on
  [0, max_scale] and independent of the direction.

  Args:
    key: a PRNG key.
    num: number of λ (static).
    m: number of values (static).
    max_scale: the largest ||λ||₁.
    dtype: float dtype; defaults to JAX's default float.

  Returns:
    λ, shape (num, m), >= 0.

  Example:
    >>> lams = morl_lambdas(jax.random.key(0), 4, 3)
    >>> lams.shape, bool(jnp.all(lams.sum(-1) <= 6.0))
    ((4, 3), True)
  """
  dtype = jnp.result_type(float) if dtype is None else dtype
  k_scale, k_dir = jax.random.split(key)
  scale = jax.random.uniform(k_scale, (num, 1), dtype, 0.0, max_scale)
  # Dirichlet(1, ..., 1) is a vector of i.i.d. exponentials normalised to sum 1.
  e = jax.random.exponential(k_dir, (num, m), dtype)
  return scale * (e / jnp.sum(e, axis=-1, keepdims=True))


def realized_levels(rewards: jax.Array, lam: jax.Array) -> jax.Array:
  """E_{p_λ}[r] on the pilot set: Rᵀ softmax(Rλ).

  Args:
    rewards: pilot reward matrix R, shape (n, m).
    lam: λ, shape (..., m); leading axes are batch axes.

  Returns:
    The realized levels, shape (..., m).
  """
  rewards = jnp.asarray(rewards)
  w = jax.nn.softmax(jnp.asarray(lam, rewards.dtype) @ rewards.T, axis=-1)
  return w @ rewards


def quantile_levels(rewards: jax.Array, levels: jax.Array) -> jax.Array:
  """Each level as a quantile of the base model's pilot rewards: the mid-rank ECDF.

  .. math::

     F_i(ℓ_i) = \\frac{1}{n} \\left(\\#\\{j : R_{ji} < ℓ_i\\} + \\tfrac12 \\#\\{j : R_{ji} = ℓ_i\\}\\right)

  0.5 means "as good as the median pilot sample". A level on a tied mass point (a
  reward that is exactly 0 for most samples, like a clipped harmlessness score) sits
  in the middle of that mass rather than at its top; for distinct rewards this is
  the ordinary ECDF up to 1/(2n). The one definition used throughout (palettes.json,
  reports, notebooks).

  Args:
    rewards: pilot reward matrix R, shape (n, m).
    levels: levels ℓ, shape (..., m).

  Returns:
    Fractions in [0, 1], shape (..., m).
  """
  rewards = jnp.asarray(rewards)
  n, m = rewards.shape
  levels = jnp.asarray(levels, rewards.dtype)
  ordered = jnp.sort(rewards, axis=0)
  flat = levels.reshape(-1, m)

  def ranks(side):
    return jax.vmap(lambda col, x: jnp.searchsorted(col, x, side=side), in_axes=(1, 1), out_axes=1)(ordered, flat)

  counts = ranks("left") + ranks("right")
  return (counts.astype(rewards.dtype) / (2 * n)).reshape(levels.shape)


def navigation_efficiency(rewards: jax.Array, lams: jax.Array, c0: jax.Array | None = None) -> jax.Array:
  """Share of λ whose realized levels are at least c0 in every value.

  .. math::

     \\frac{1}{K} \\sum_k \\mathbb{1}\\left[\\,E_{p_{λ_k}}[r_i] >= c0_i \\;\\forall i\\,\\right]

  Args:
    rewards: pilot reward matrix R, shape (n, m).
    lams: λ, shape (K, m).
    c0: reference levels (m,); defaults to the pilot means (the base model).

  Returns:
    A scalar in [0, 1].
  """
  rewards = jnp.asarray(rewards)
  c0 = jnp.mean(rewards, axis=0) if c0 is None else jnp.asarray(c0, rewards.dtype)
  realized = realized_levels(rewards, lams)
  return jnp.mean(jnp.all(realized >= c0, axis=-1).astype(rewards.dtype))
