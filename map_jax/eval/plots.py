"""Figures of palette studies, shared by the sensitivity notebook and its launcher.

Each function returns a ``matplotlib.figure.Figure`` and never calls ``plt.show``, so a
notebook displays it and a launcher saves it (under the Agg backend). Levels are in
reward units, named per value by :data:`UNITS`.
"""

from collections.abc import Sequence

from matplotlib import colors
import matplotlib.pyplot as plt
import numpy as np

from map_jax.eval.study import PaletteStudy

# Units of the MAP reference pilot values (see examples/map_reference/README.md).
UNITS = {
  "humor": "classifier logit",
  "gpt2-helpful": "reward-model score",
  "gpt2-harmless": "reward-model score",
  "diversity": "distinct n-gram ratio",
  "coherence": "cosine similarity",
  "perplexity": "−log perplexity, nats/token",
}


def label(name: str) -> str:
  """Axis label "c_name (unit)" for a palette level."""
  unit = UNITS.get(name)
  return f"$c$ {name}" + (f" ({unit})" if unit else "")


def slice_figure(study: PaletteStudy, x, y, i: int, j: int, names: Sequence[str], rewards=None):
  """Four heat maps over a 2-D slice of palettes (c_i, c_j), the other values fixed.

  Panels: the LP feasibility margin with the feasible boundary (margin = 0); λ_i with
  contours of λ_j; log10 of the effective sample size; log10 of the condition number
  of the tilted covariance on the active set. Infeasible palettes are grey in the last
  three. With ``rewards``, dotted lines mark the pilot means (below them λ = 0).
  """
  sol = study.solution
  feasible = np.asarray(sol.feasible)
  # Cell edges half a step beyond the grid points, so the boundary contour (drawn
  # through the points) sits where the cells change colour.
  dx, dy = (x[1] - x[0]) / 2, (y[1] - y[0]) / 2
  extent = (x[0] - dx, x[-1] + dx, y[0] - dy, y[-1] + dy)
  fig, axes = plt.subplots(2, 2, figsize=(11, 9), constrained_layout=True)
  ni, nj = names[i], names[j]

  def show(ax, values, title, cbar, cmap="viridis", mask=True, norm=None):
    data = np.where(feasible, values, np.nan) if mask else values
    cm = plt.get_cmap(cmap).copy()
    cm.set_bad("0.8")
    im = ax.imshow(data, origin="lower", extent=extent, aspect="auto", cmap=cm, norm=norm)
    fig.colorbar(im, ax=ax, label=cbar)
    ax.contour(x, y, feasible.astype(float), levels=[0.5], colors="k", linewidths=1.5)
    ax.set_xlabel(label(ni))
    ax.set_ylabel(label(nj))
    ax.set_title(title)
    if rewards is not None:
      mean = np.asarray(rewards).mean(axis=0)
      ax.axvline(mean[i], color="w", ls=":", lw=1)
      ax.axhline(mean[j], color="w", ls=":", lw=1)
    return ax

  margin = np.asarray(sol.margin)
  lim = np.nanmax(np.abs(margin))
  show(
    axes[0, 0],
    margin,
    "Feasibility margin (black: boundary)",
    "LP margin (reward units)",
    cmap="RdBu",
    mask=False,
    norm=colors.TwoSlopeNorm(0.0, -lim, lim),
  )
  lam = np.asarray(sol.lam)
  ax = show(
    axes[0, 1], lam[..., i], f"λ {ni} (colour), λ {nj} (white contours)", f"λ {ni} (per {UNITS.get(ni, 'unit')})"
  )
  lj = np.where(feasible, lam[..., j], np.nan)
  if np.nanmax(lj) > 0:
    cs = ax.contour(x, y, lj, levels=6, colors="w", linewidths=0.8)
    ax.clabel(cs, fontsize=7, fmt="%.2g")
  show(axes[1, 0], np.log10(np.asarray(sol.ess)), "Effective sample size of p_λ", "log10 ESS (samples)", cmap="magma")
  show(
    axes[1, 1],
    np.log10(np.asarray(study.condition)),
    "Condition number of Cov_{p_λ} (standardized, active set)",
    "log10 condition number",
    cmap="cividis",
  )
  fig.suptitle(f"Palette slice {ni} × {nj} ({feasible.size} palettes; dotted: pilot means)")
  return fig


def path_figure(qs, study: PaletteStudy, names: Sequence[str], targeted: Sequence[int]):
  """λ, ESS and KL along the HHH-q% path of palettes, as functions of q."""
  sol = study.solution
  feasible = np.asarray(sol.feasible)
  fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
  qs = 100 * np.asarray(qs)
  for k in targeted:
    a0.semilogy(qs[feasible], np.asarray(sol.lam)[feasible, k], label=f"λ {names[k]}")
  a0.set_xlabel("palette quantile q (%) of humor, helpful, harmless")
  a0.set_ylabel("λ (per reward unit, log scale)")
  a0.set_title("λ as a function of the palette (HHH-q%)")
  a0.legend()
  a1.semilogy(qs[feasible], np.asarray(sol.ess)[feasible], "k-", label="ESS")
  a1.set_xlabel("palette quantile q (%)")
  a1.set_ylabel("effective sample size (samples, log scale)")
  a1.set_title("Effective sample size and KL to p0")
  a2 = a1.twinx()
  a2.plot(qs[feasible], np.asarray(sol.kl)[feasible], "C3--", label="KL(p_λ‖p0)")
  a2.set_ylabel("KL (nats)", color="C3")
  if not feasible.all():
    a0.axvline(qs[~feasible].min(), color="0.5", ls=":", label="first infeasible q")
    a1.axvline(qs[~feasible].min(), color="0.5", ls=":")
    a0.legend()
  lines = a1.get_legend_handles_labels()[0] + a2.get_legend_handles_labels()[0]
  a1.legend(lines, [l.get_label() for l in lines], loc="lower left")
  return fig


def trade_off_figure(matrix, names: Sequence[str], title: str):
  """The trade-off matrix d realized_i / d c_k as an annotated heat map."""
  matrix = np.asarray(matrix)
  lim = max(np.abs(matrix).max(), 1e-12)
  fig, ax = plt.subplots(figsize=(7, 6), constrained_layout=True)
  im = ax.imshow(matrix, cmap="RdBu", norm=colors.TwoSlopeNorm(0.0, -lim, lim))
  fig.colorbar(im, ax=ax, label="∂ realized_i / ∂ c_k (reward units per reward unit)")
  ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel("palette level raised, c_k")
  ax.set_ylabel("realized level E_{p_λ}[r_i]")
  for a in range(matrix.shape[0]):
    for b in range(matrix.shape[1]):
      ax.text(b, a, f"{matrix[a, b]:.2f}", ha="center", va="center", fontsize=8)
  ax.set_title(title)
  return fig


def navigation_figure(
  map_quantiles,
  morl_quantiles,
  names: Sequence[str],
  pairs: Sequence[tuple[int, int]],
  efficiency: dict,
  base_quantiles=None,
):
  """Realized levels (as pilot quantiles) of MAP palettes vs random MORL λ (paper Fig. 7).

  ``efficiency`` maps a method name ("MAP", "MORL") to its navigation efficiency, shown
  in the legend: the share of its λ that improve every value over the base model.
  ``base_quantiles`` (m,): the base model's mean levels as quantiles, drawn as dotted
  lines (a skewed value's mean is far from its median: humor's sits near 0.2).
  """
  base = np.full(map_quantiles.shape[-1], 0.5) if base_quantiles is None else np.asarray(base_quantiles)
  map_quantiles, morl_quantiles = np.asarray(map_quantiles), np.asarray(morl_quantiles)
  fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4.5), constrained_layout=True, squeeze=False)
  for ax, (i, j) in zip(axes[0], pairs):
    ax.scatter(
      morl_quantiles[:, i],
      morl_quantiles[:, j],
      s=6,
      alpha=0.4,
      c="C1",
      label=f"MORL random λ (efficiency {efficiency['MORL']:.0%})",
    )
    ax.scatter(
      map_quantiles[:, i],
      map_quantiles[:, j],
      s=6,
      alpha=0.4,
      c="C0",
      label=f"MAP palettes (efficiency {efficiency['MAP']:.0%})",
    )
    ax.axvline(base[i], color="0.3", ls=":", lw=1.2)
    ax.axhline(base[j], color="0.3", ls=":", lw=1.2)
    ax.set_xlabel(f"realized {names[i]} (quantile of p0)")
    ax.set_ylabel(f"realized {names[j]} (quantile of p0)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="lower left", fontsize=8)
  fig.suptitle(
    "Realized value levels, MAP vs MORL (dotted: the base model's mean level; up and right of both is better than p0)"
  )
  return fig
