"""Sequence-classification heads on decoders: GPT-2 / Llama / OPT reward models (`*ForSequenceClassification`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from map_jax.models import layers as L
from map_jax.models.family import FamilyConfig


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(FamilyConfig):
  """A decoder backbone (`GPT2Config`, `LlamaConfig`, `OPTConfig`) plus a linear `score` head on the last token.

  This is transformers' `GPT2ForSequenceClassification` & co., the shape of many reward models (e.g.
  gpt2-large-harmless-reward_model: one label, the reward). The backbone's LM head is not part of the
  checkpoint, so Llama backbones are built tied (their unused vocabulary projection is compiled away).
  """

  backbone: Any
  num_labels: int
  labels: tuple[str, ...] = ()

  architecture = "classifier"

  @property
  def dtype(self) -> str:
    return self.backbone.dtype

  @property
  def param_dtype(self) -> str:
    return self.backbone.param_dtype

  @property
  def max_position_embeddings(self) -> int:
    return self.backbone.max_position_embeddings

  @classmethod
  def from_hf(cls, hf: dict, backbone_cls, **overrides: Any) -> "ClassifierConfig":
    backbone = backbone_cls.from_hf(hf, **overrides)
    if hasattr(backbone, "tie_word_embeddings"):
      backbone = dataclasses.replace(backbone, tie_word_embeddings=True)
    id2label = hf.get("id2label") or {str(i): f"LABEL_{i}" for i in range(hf.get("num_labels", 2))}
    labels = tuple(id2label[k] for k in sorted(id2label, key=int))
    return cls(backbone, len(labels), labels)

  def params_from_hf(self, get) -> dict:
    """Flax params from the checkpoint's tensors (`params_from_hf` below)."""
    return params_from_hf(self, get)

  def module(self, **kwargs) -> "DecoderClassifier":
    """The Flax module for this config (kwargs go to the module, e.g. `name=`)."""
    return DecoderClassifier(self, **kwargs)


class DecoderClassifier(nn.Module):
  """`apply({"params": p}, tokens [B, T], mask [B, T]) -> logits [B, num_labels]` (float32).

  Scores the hidden state of each row's last real token, which with left padding is column T-1; positions
  come from the mask, so padding on either side gives the same scores.
  """

  config: ClassifierConfig

  @nn.compact
  def __call__(self, tokens, mask=None):
    mask = jnp.ones(tokens.shape, bool) if mask is None else mask.astype(bool)
    hidden = self.config.backbone.module(name="backbone")(tokens, kv_mask=mask).hidden
    last = jnp.argmax(jnp.where(mask, jnp.arange(tokens.shape[1]), -1), axis=-1)
    h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    c = self.config.backbone
    return L.dense(
      self.config.num_labels,
      (L.EMBED, None),
      dtype=L.dtype_of(c.dtype),
      param_dtype=L.dtype_of(c.param_dtype),
      name="score",
    )(h).astype(jnp.float32)


def params_from_hf(config: ClassifierConfig, get) -> dict:
  """The backbone's params (its own mapping) plus `score.weight` ([labels, E] in PyTorch)."""
  return {"backbone": config.backbone.params_from_hf(get), "score": {"kernel": get("score.weight").T}}
