"""The model-family contract: what a config class provides so that map_jax can load, sample and fine-tune it.

A model family is one file in `map_jax/models/` (llama.py, gpt2.py, opt.py, bert.py) or in a user's package:
a frozen dataclass config that satisfies `ModelFamily` (and `CausalLM` for a language model the sampler and PPO
use), its Flax module, and a registration of the config class under the Hugging Face `model_type` it reads:

    from map_jax import plugins
    plugins.register("model_family", "mistral", "my_pkg.mistral:MistralConfig")

`map_jax.models.loading.load_hf` then builds the config from `config.json` (`from_hf`), lets it adapt to the
tensors present (`adapt_to_weights`), maps the checkpoint's tensors to Flax params (`params_from_hf`), and
`config.module()` gives the module the sampler, the scorer and PPO apply.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import flax.linen as nn
import numpy as np

# A checkpoint reader: Hugging Face tensor name -> float32 array (a missing name raises `CheckpointError`).
TensorGetter = Callable[[str], np.ndarray]


class FamilyConfig:
  """A base for family configs (subclass it under `@dataclasses.dataclass(frozen=True)`): the defaults of the
  contract, so a family writes only what it changes. `params_from_hf` and `module` are its own."""

  def adapt_to_weights(self, has: Callable[[str], bool]) -> "FamilyConfig":
    """No tensor-dependent options: the config as it is."""
    del has
    return self


@runtime_checkable
class ModelFamily(Protocol):
  """A model config: frozen and hashable (a static argument of `jax.jit`), built from a transformers config."""

  architecture: str  # the family's name, e.g. "llama"
  dtype: str  # compute dtype ("float32" on CPU, "bfloat16" on accelerators)
  param_dtype: str  # storage dtype of the weights

  @classmethod
  def from_hf(cls, hf: dict, **overrides: Any) -> "ModelFamily":
    """The config from the fields of a Hugging Face `config.json`; `overrides` (dtype, ...) win."""

  def adapt_to_weights(self, has: Callable[[str], bool]) -> "ModelFamily":
    """The config adjusted to the tensors the checkpoint holds (`has(name)`); most families return self."""

  def params_from_hf(self, get: TensorGetter) -> dict:
    """Flax params (plain arrays, the module's tree) from the checkpoint's tensors."""

  def module(self, **kwargs: Any) -> nn.Module:
    """The Flax module of this config."""


@runtime_checkable
class CausalLM(ModelFamily, Protocol):
  """A decoder the sampler (`map_jax.sampling`) and PPO use.

  Its module is applied as `module.apply({"params": p}, tokens [B, T], positions, kv_mask, cache, cache_index,
  last_only)` and returns a `map_jax.models.layers.LMOutput` (logits, the updated `KVCache`); the fields below
  size the KV cache and the context.
  """

  vocab_size: int
  num_layers: int
  num_kv_heads: int
  head_dim: int
  max_position_embeddings: int
  eos_token_ids: tuple[int, ...]


__all__ = ["CausalLM", "FamilyConfig", "ModelFamily", "TensorGetter"]
