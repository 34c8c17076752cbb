"""Evaluation of MAP solutions: batched palette studies and their figures."""

from map_jax.eval.study import (
  PaletteStudy,
  SensitivityStudy,
  grid_slice,
  hhh_palette,
  sensitivity_study,
  solve_batch,
  study_rows,
  tilted_condition,
)

__all__ = [
  "PaletteStudy",
  "SensitivityStudy",
  "sensitivity_study",
  "study_rows",
  "grid_slice",
  "hhh_palette",
  "solve_batch",
  "tilted_condition",
]
