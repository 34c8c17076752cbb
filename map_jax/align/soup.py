"""Model soups: parameter interpolation of two fine-tuned models of one architecture (DPO-Soup, reward soups)."""

from typing import Any

import jax


def soup(params_a: Any, params_b: Any, alpha: float) -> Any:
  """DPO-Soup: θ(α) = (1 − α)·θ_A + α·θ_B, leaf by leaf (the two models must share one tree)."""
  if jax.tree.structure(params_a) != jax.tree.structure(params_b):
    raise ValueError("the two models' parameter trees differ; a soup needs one architecture")
  return jax.tree.map(lambda x, y: (1.0 - alpha) * x + alpha * y, params_a, params_b)


__all__ = ["soup"]
