"""map-jax: multi-value alignment of language models (MAP) in JAX.

The solver and palette tools (pure JAX) are imported with the package; the models and
the sampler (Flax, tokenizers) load on first use, so ``import map_jax`` stays light for
work on reward matrices alone.
"""

import importlib

from map_jax.core.dual import DualSolution, dual_objective, solve_dual
from map_jax.core.feasibility import Feasibility, effective_sample_size, feasibility, upper_bounds
from map_jax.core.frontier import (
    RandomPalettes,
    kept,
    morl_lambdas,
    navigation_efficiency,
    quantile_levels,
    random_palettes,
    realized_levels,
)
from map_jax.core.palette import AdjustedPalette, adjust_palette, classifier_palette, quantile_palette
from map_jax.core.sensitivity import sensitivity
from map_jax.core.sequential import SequentialSolution, sequential_solve
from map_jax.data.pilot import load_pilot

# Name -> module for the parts that import Flax and transformers.
_LAZY = {
    "load_model": "map_jax.models.loading",
    "load_sentence_encoder": "map_jax.models.loading",
    "save_params": "map_jax.models.loading",
    "restore_params": "map_jax.models.loading",
    "CheckpointError": "map_jax.models.loading",
    "token_logprobs": "map_jax.generate",
    "get_reward": "map_jax.rewards",
    "load_prompts": "map_jax.data.prompts",
    "split_prompts": "map_jax.data.prompts",
    "select": "map_jax.align.decode",
    "decode": "map_jax.align.decode",
    "available_rewards": "map_jax.rewards",
    "generate": "map_jax.generate",
    "sample": "map_jax.generate",
    "score": "map_jax.generate",
    "PPOConfig": "map_jax.align.ppo",
    "RunConfig": "map_jax.align.trainer",
    "fine_tune": "map_jax.align.trainer",
    "fine_tune_sequential": "map_jax.align.trainer",
    "sequential_stages": "map_jax.align.trainer",
    "make_mesh": "map_jax.parallel",
}


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'map_jax' has no attribute {name!r}")


__all__ = [
    "AdjustedPalette", "DualSolution", "Feasibility", "RandomPalettes", "SequentialSolution",
    "adjust_palette", "kept",
    "classifier_palette", "dual_objective", "effective_sample_size", "feasibility", "load_pilot",
    "morl_lambdas", "navigation_efficiency", "quantile_levels", "quantile_palette",
    "random_palettes", "realized_levels", "sensitivity", "sequential_solve", "solve_dual",
    "upper_bounds", *_LAZY,
]
