"""map-jax: multi-value alignment of language models (MAP) in JAX.

The solver and palette tools (pure JAX) are imported with the package; the models and
the sampler (Flax, tokenizers) load on first use, so ``import map_jax`` stays light for
work on reward matrices alone.
"""

import importlib

from map_jax.core.dual import DualSolution, PreparedPilot, dual_objective, prepare_pilot, solve_dual
from map_jax.core.feasibility import Feasibility, effective_sample_size, feasibility, upper_bounds
from map_jax.core.frontier import (
  RandomPalettes,
  feasible_palettes,
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

# Name -> "module:attribute" for the parts that import Flax and transformers. Every name says what it does,
# and none is also the name of a submodule (importing `map_jax.sampling` never replaces a function here).
_LAZY = {
  "load_model": "map_jax.models.loading:load_model",
  "load_sentence_encoder": "map_jax.models.loading:load_sentence_encoder",
  "save_params": "map_jax.models.loading:save_params",
  "restore_params": "map_jax.models.loading:restore_params",
  "CheckpointError": "map_jax.models.loading:CheckpointError",
  "get_reward": "map_jax.rewards.registry:get_reward",
  "available_rewards": "map_jax.rewards.registry:available_rewards",
  "load_prompts": "map_jax.data.prompts:load_prompts",
  "split_prompts": "map_jax.data.prompts:split_prompts",
  "generate": "map_jax.sampling:generate",
  "sample_tokens": "map_jax.sampling:sample",
  "continuation_logprobs": "map_jax.sampling:score",
  "token_logprobs": "map_jax.sampling:token_logprobs",
  "sequence_logprobs": "map_jax.sampling:sequence_logprobs",
  "resample_candidates": "map_jax.align.decode:select",
  "decode": "map_jax.align.decode:decode",
  "PPOConfig": "map_jax.align.ppo:PPOConfig",
  "RunConfig": "map_jax.align.trainer:RunConfig",
  "fine_tune": "map_jax.align.map_f:fine_tune",
  "fine_tune_sequential": "map_jax.align.map_f:fine_tune_sequential",
  "sequential_stages": "map_jax.align.map_f:sequential_stages",
  "make_mesh": "map_jax.parallel:make_mesh",
}


def __getattr__(name):
  if name in _LAZY:
    module, _, attr = _LAZY[name].partition(":")
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f"module 'map_jax' has no attribute {name!r}")


__all__ = [
  "AdjustedPalette",
  "DualSolution",
  "Feasibility",
  "RandomPalettes",
  "SequentialSolution",
  "adjust_palette",
  "feasible_palettes",
  "classifier_palette",
  "dual_objective",
  "effective_sample_size",
  "feasibility",
  "load_pilot",
  "morl_lambdas",
  "navigation_efficiency",
  "quantile_levels",
  "quantile_palette",
  "random_palettes",
  "realized_levels",
  "sensitivity",
  "sequential_solve",
  "solve_dual",
  "prepare_pilot",
  "PreparedPilot",
  "upper_bounds",
  *_LAZY,
]
