"""Batched λ-sensitivity studies: many palettes solved under one ``vmap``.

Every palette after the pilot set is scored costs one :func:`~map_jax.core.dual.solve_dual`
call; a study solves a whole cloud or grid of palettes in one compiled, vmapped call and
adds what the solver does not report itself: the condition number of the tilted
covariance on the active set, which governs both dλ/dc = Cov_FF⁻¹ and the sampling
error of λ estimated from n pilot samples.

Used by ``notebooks/sensitivity_study.ipynb`` and ``experiments/sensitivity_study.py``.
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from map_jax.core import dual, implicit
from map_jax.core import sensitivity as sens


def hhh_palette(rewards, q: float, targeted: Sequence[int] = (0, 1, 2)) -> np.ndarray:
  """The paper's HHH-q% palette: targeted values at max(mean, q-quantile), others at mean.

  Computed in NumPy (float64) so it can serve as an independent reference for
  :func:`map_jax.core.palette.quantile_palette`.
  """
  rewards = np.asarray(rewards, np.float64)
  c = rewards.mean(axis=0)
  idx = list(targeted)
  c[idx] = np.maximum(c[idx], np.quantile(rewards[:, idx], q, axis=0))
  return c


def tilted_condition(rewards: jax.Array, lam: jax.Array) -> jax.Array:
  """Condition number of the tilted covariance of the *standardized* rewards on the active set.

  Rewards are divided by their pilot standard deviation first, so the number measures
  how close the active values are to being collinear under p_λ, not how different
  their units are. 1 when no value is active (λ = 0 needs no inversion).

  Static shapes: the inactive block is filled with the active block's largest
  eigenvalue, which changes neither the largest nor the smallest active eigenvalue.
  """
  scale = jnp.std(rewards, axis=0)
  scale = jnp.where(scale > 0, scale, 1.0)
  z = rewards / scale
  _, _, cov = implicit.tilted_moments(z, lam * scale)
  active = lam > 0
  both = active[:, None] & active[None, :]
  top = jnp.max(jnp.linalg.eigvalsh(jnp.where(both, cov, 0.0)))
  filled = jnp.where(both, cov, 0.0) + jnp.diag(jnp.where(active, 0.0, top))
  low = jnp.min(jnp.linalg.eigvalsh(filled))
  return jnp.where(jnp.any(active), top / low, 1.0)


class PaletteStudy(NamedTuple):
  """Solutions of a batch of palettes (leading axes as given to :func:`solve_batch`).

  Attributes:
    palettes: the palettes c, (..., m).
    solution: the batched :class:`~map_jax.core.dual.DualSolution`.
    condition: condition number of the standardized tilted covariance on the active
      set, (...,); see :func:`tilted_condition`.
  """

  palettes: jax.Array
  solution: dual.DualSolution
  condition: jax.Array


@jax.jit
def _solve_flat(pilot, palettes):
  return jax.vmap(lambda c: dual.solve_dual(pilot, c))(palettes)


# A separate computation from the solve: fused into the same vmapped program as the
# solver, the batched eigvalsh hung XLA:CPU (jax 0.10.2) for a few hundred palettes on
# the 2,312-row pilot set, while each part alone runs in seconds.
_condition_flat = jax.jit(jax.vmap(tilted_condition, in_axes=(None, 0)))


def solve_batch(rewards, palettes, *, batch_size: int | None = 256) -> PaletteStudy:
  """Solves every palette in ``palettes`` (..., m) on the pilot set, vmapped in chunks.

  Args:
    rewards: pilot reward matrix R, (n, m).
    palettes: palettes with any leading batch shape, (..., m).
    batch_size: palettes per vmapped call; the last chunk is padded with the pilot
      means (λ = 0 at once), so every chunk has one shape and compiles once. ``None``
      solves all palettes in a single vmapped call. Chunks also end their solver loops
      independently, so a few hard palettes near the feasibility boundary do not hold
      up the whole batch. (A single vmapped call over 10,000 palettes on the 2,312-row
      pilot set, and also chunks of 1,024, hung XLA:CPU in jax 0.10.2 with every
      thread waiting on a futex, even with the single-threaded Eigen flag that
      ``map_jax/__init__.py`` sets; chunks of 256 run fine.)

  Returns:
    A :class:`PaletteStudy` with the leading shape of ``palettes``.
  """
  rewards = jnp.asarray(rewards)
  palettes = jnp.asarray(palettes, rewards.dtype)
  lead, m = palettes.shape[:-1], palettes.shape[-1]
  flat = palettes.reshape(-1, m)
  total = flat.shape[0]
  size = total if batch_size is None else min(batch_size, total)
  pad = -total % size
  padded = jnp.concatenate([flat, jnp.broadcast_to(jnp.mean(rewards, 0), (pad, m))])
  pilot = dual.prepare_pilot(rewards)  # once for every chunk
  sols, conds = [], []
  for start in range(0, padded.shape[0], size):
    sol = _solve_flat(pilot, padded[start : start + size])
    sols.append(sol)
    conds.append(_condition_flat(rewards, sol.lam))
  cat = lambda *a: jnp.concatenate(a)[:total]
  sol = jax.tree.map(cat, *sols)
  cond = cat(*conds)
  unflat = lambda x: x.reshape(lead + x.shape[1:])
  return PaletteStudy(palettes, jax.tree.map(unflat, sol), unflat(cond))


def grid_slice(
  rewards, i: int, j: int, size: int, *, low_quantile: float = 0.05, base=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A size × size grid of palettes in the (c_i, c_j) plane, the other values at ``base``.

  Each axis runs from the pilot ``low_quantile``-quantile of its value (below the
  mean, where λ = 0) to the largest pilot reward B (beyond which nothing is
  feasible). ``base`` defaults to the pilot means.

  Returns:
    ``(x, y, palettes)``: the axis levels (size,), (size,) and palettes (size, size, m)
    with ``palettes[a, b] `` at (c_i, c_j) = (x[b], y[a]) (rows follow y, as ``imshow``).
  """
  rewards = np.asarray(rewards)
  base = rewards.mean(axis=0) if base is None else np.asarray(base, rewards.dtype)
  x = np.linspace(np.quantile(rewards[:, i], low_quantile), rewards[:, i].max(), size)
  y = np.linspace(np.quantile(rewards[:, j], low_quantile), rewards[:, j].max(), size)
  palettes = np.broadcast_to(base, (size, size, rewards.shape[1])).copy()
  palettes[:, :, i] = x[None, :]
  palettes[:, :, j] = y[:, None]
  return x, y, palettes


class SensitivityStudy(NamedTuple):
  """Everything the sensitivity notebook and launcher show, from :func:`sensitivity_study`.

  Attributes:
    slices: per value pair (i, j), ``(x, y, PaletteStudy)`` of a grid slice.
    path_q: quantiles q of the HHH-q% path, (P,).
    path: the :class:`PaletteStudy` of the HHH-q% palettes, (P,).
    cloud: the random cloud c_i ~ U(μ_i, B_i) on the targeted values, (K,).
    cloud_kept: (K,) feasible and ||λ||₁ <= 6, the rule of
      :func:`map_jax.core.frontier.random_palettes`.
    morl_lam: random MORL λ (K, m), :func:`map_jax.core.frontier.morl_lambdas`.
    efficiency: navigation efficiency of the kept MAP λ and the MORL λ.
    trade_off: ``(palette, d_lam, d_realized)`` at the HHH-``trade_off_q`` palette.
    num_palettes: palettes solved in the one batched call.
    seconds: wall time of that call (compilation excluded: it is timed on a second run
      only when ``time_twice``; otherwise it includes compilation).
  """

  slices: dict
  path_q: np.ndarray
  path: PaletteStudy
  cloud: PaletteStudy
  cloud_kept: np.ndarray
  morl_lam: np.ndarray
  efficiency: dict
  trade_off: tuple
  num_palettes: int
  seconds: float


def sensitivity_study(
  rewards,
  num_palettes: int,
  *,
  key=None,
  pairs: Sequence[tuple[int, int]] = ((0, 1), (0, 2), (1, 2)),
  targeted: Sequence[int] = (0, 1, 2),
  trade_off_q: float = 0.6,
  path_points: int = 41,
  batch_size: int | None = 256,
  time_twice: bool = False,
) -> SensitivityStudy:
  """Solves about ``num_palettes`` palettes in one vmapped call and derives the study.

  Half the budget goes to 2-D grid slices (one per pair, the other values at their
  mean), half to a random cloud of palettes c_i ~ U(μ_i, B_i) on the ``targeted``
  values (the MAP side of the navigation-efficiency comparison, paper Fig. 7 /
  Table 3), plus ``path_points`` HHH-q% palettes for q in [0.5, 0.9]. All are
  concatenated so the solver compiles once.
  """
  import time

  from map_jax.core import frontier  # Local: keeps this module's import light.

  rewards = jnp.asarray(rewards)
  r_np = np.asarray(rewards)
  n, m = r_np.shape
  key = jax.random.key(0) if key is None else key
  k_cloud, k_morl = jax.random.split(key)
  size = max(2, int(np.ceil(np.sqrt(num_palettes / 2 / len(pairs)))))
  num_cloud = max(1, num_palettes - size * size * len(pairs))
  grids = [grid_slice(r_np, i, j, size) for i, j in pairs]
  path_q = np.linspace(0.5, 0.9, path_points)
  path_c = np.stack([hhh_palette(r_np, q, targeted) for q in path_q])
  mask = np.zeros(m, bool)
  mask[list(targeted)] = True
  low, high = r_np.mean(axis=0), r_np.max(axis=0)
  u = np.asarray(jax.random.uniform(k_cloud, (num_cloud, m), rewards.dtype))
  cloud_c = np.where(mask, low + u * (high - low), low)
  everything = np.concatenate([g[2].reshape(-1, m) for g in grids] + [path_c, cloud_c])

  start = time.perf_counter()
  study = solve_batch(rewards, everything, batch_size=batch_size)
  jax.block_until_ready(study)
  if time_twice:
    start = time.perf_counter()
    study = solve_batch(rewards, everything, batch_size=batch_size)
    jax.block_until_ready(study)
  seconds = time.perf_counter() - start

  def take(lo, hi, shape):
    return jax.tree.map(lambda a: np.asarray(a[lo:hi]).reshape(shape + a.shape[1:]), study)

  slices, at = {}, 0
  for (i, j), (x, y, _) in zip(pairs, grids):
    slices[(i, j)] = (x, y, take(at, at + size * size, (size, size)))
    at += size * size
  path = take(at, at + path_points, (path_points,))
  at += path_points
  cloud = take(at, at + num_cloud, (num_cloud,))
  kept = np.asarray(cloud.solution.feasible) & (np.abs(np.asarray(cloud.solution.lam)).sum(-1) <= 6.0)
  morl = np.asarray(frontier.morl_lambdas(k_morl, num_cloud, m, dtype=rewards.dtype))
  efficiency = {
    "MAP": float(frontier.navigation_efficiency(rewards, cloud.solution.lam[kept])) if kept.any() else float("nan"),
    "MORL": float(frontier.navigation_efficiency(rewards, morl)),
  }
  c_t = hhh_palette(r_np, trade_off_q, targeted)
  d_lam, d_real = sens.sensitivity(rewards, jnp.asarray(c_t, rewards.dtype))
  return SensitivityStudy(
    slices,
    path_q,
    path,
    cloud,
    kept,
    morl,
    efficiency,
    (c_t, np.asarray(d_lam), np.asarray(d_real)),
    len(everything),
    seconds,
  )


def study_rows(result: SensitivityStudy, names: Sequence[str]) -> list[dict]:
  """One CSV-ready record per solved palette of a :class:`SensitivityStudy`."""
  parts = [(f"slice:{names[i]}×{names[j]}", s) for (i, j), (_, _, s) in result.slices.items()]
  parts += [("hhh_path", result.path), ("cloud", result.cloud)]
  rows = []
  for kind, s in parts:
    m = s.palettes.shape[-1]
    flat = jax.tree.map(lambda a: np.asarray(a).reshape((-1,) + a.shape[s.palettes.ndim - 1 :]), s)
    for k in range(flat.palettes.shape[0]):
      sol = flat.solution
      row = {"kind": kind}
      row.update({f"c_{names[i]}": float(flat.palettes[k, i]) for i in range(m)})
      row.update({"feasible": bool(sol.feasible[k]), "margin": float(sol.margin[k])})
      row.update({f"lambda_{names[i]}": float(sol.lam[k, i]) for i in range(m)})
      row.update({f"realized_{names[i]}": float(sol.realized[k, i]) for i in range(m)})
      row.update(
        {
          "ess": float(sol.ess[k]),
          "kl": float(sol.kl[k]),
          "condition": float(flat.condition[k]),
          "converged": bool(sol.converged[k]),
        }
      )
      rows.append(row)
  return rows
