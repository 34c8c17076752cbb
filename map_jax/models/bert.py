"""BERT / DistilBERT encoders in Flax: sentence embeddings (mean pooling) and sequence-classification heads."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from map_jax.models import layers as L
from map_jax.models import tokenizer as tok_lib
from map_jax.models.family import FamilyConfig


@dataclasses.dataclass(frozen=True)
class BertConfig(FamilyConfig):
  """A post-LayerNorm bidirectional encoder: BERT (`flavor="bert"`, token types, tanh pooler) or DistilBERT.

  `num_labels > 0` adds the sequence-classification head of `BertForSequenceClassification` (pooler ->
  classifier) or `DistilBertForSequenceClassification` (CLS -> pre_classifier -> ReLU -> classifier).
  """

  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  flavor: str = "bert"
  pooler: bool = True
  num_labels: int = 0
  labels: tuple[str, ...] = ()
  pad_token_id: int = 0
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False

  architecture = "bert"

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def from_hf(cls, hf: dict, **overrides: Any) -> "BertConfig":
    classifier = any(a.endswith("ForSequenceClassification") for a in hf.get("architectures") or ())
    # transformers omits id2label from config.json when it is the default two labels.
    id2label = hf.get("id2label") or {str(i): f"LABEL_{i}" for i in range(hf.get("num_labels", 2))}
    labels = tuple(id2label[k] for k in sorted(id2label, key=int)) if classifier else ()
    if hf["model_type"] == "distilbert":
      if hf.get("sinusoidal_pos_embds"):
        raise NotImplementedError("DistilBERT with sinusoidal position embeddings is not supported")
      kw = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["dim"],
        num_layers=hf["n_layers"],
        num_heads=hf["n_heads"],
        intermediate_size=hf["hidden_dim"],
        max_position_embeddings=hf["max_position_embeddings"],
        type_vocab_size=0,
        hidden_act=hf.get("activation", "gelu"),
        flavor="distilbert",
        pooler=False,
      )
    else:
      if hf.get("position_embedding_type", "absolute") != "absolute":
        raise NotImplementedError("BERT with relative position embeddings is not supported")
      kw = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf["max_position_embeddings"],
        type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        hidden_act=hf.get("hidden_act", "gelu"),
        flavor="bert",
      )
    kw.update(num_labels=len(labels), labels=labels, pad_token_id=hf.get("pad_token_id") or 0)
    kw.update(overrides)
    return cls(**kw)

  def adapt_to_weights(self, has) -> "BertConfig":
    """Drop the pooler when the checkpoint has none (sentence-transformers exports often omit it)."""
    if self.pooler and self.num_labels == 0 and not has("bert.pooler.dense.weight"):
      return dataclasses.replace(self, pooler=False)
    return self

  def params_from_hf(self, get) -> dict:
    """Flax params from the checkpoint's tensors (`params_from_hf` below)."""
    return params_from_hf(self, get)

  def module(self, **kwargs) -> "Bert":
    """The Flax module for this config (kwargs go to the module, e.g. `name=`)."""
    return Bert(self, **kwargs)


class EncoderOutput(NamedTuple):
  """hidden [B, T, E]; pooled [B, E] (BERT's tanh pooler, else None); logits [B, labels] (else None)."""

  hidden: jax.Array
  pooled: jax.Array | None
  logits: jax.Array | None


class BertBlock(nn.Module):
  """Post-LN layer: LN(x + Attn(x)), then LN(x + MLP(x))."""

  config: BertConfig

  @nn.compact
  def __call__(self, carry, kv_mask):
    c = self.config
    h, cache, layer = carry
    dt, pdt = L.dtype_of(c.dtype), L.dtype_of(c.param_dtype)
    H, D = c.num_heads, c.head_dim
    q, k, v = (
      L.dense((H, D), (L.EMBED, L.HEADS, L.HEAD_DIM), use_bias=True, dtype=dt, param_dtype=pdt, name=n)(h)
      for n in ("query", "key", "value")
    )
    a, _ = L.attend(q, k, v, kv_mask=kv_mask, causal=False)
    a = L.dense(
      c.hidden_size,
      (L.HEADS, L.HEAD_DIM, L.EMBED),
      axis=(-2, -1),
      use_bias=True,
      dtype=dt,
      param_dtype=pdt,
      name="attention_output",
      bias_names=(L.EMBED,),
    )(a)
    h = L.layer_norm(c.layer_norm_eps, dt, pdt, name="attention_norm")(h + a)
    x = L.dense(c.intermediate_size, (L.EMBED, L.MLP), use_bias=True, dtype=dt, param_dtype=pdt, name="intermediate")(h)
    x = L.dense(c.hidden_size, (L.MLP, L.EMBED), use_bias=True, dtype=dt, param_dtype=pdt, name="output")(
      L.activation(c.hidden_act)(x)
    )
    h = L.layer_norm(c.layer_norm_eps, dt, pdt, name="output_norm")(h + x)
    return (h, cache, layer + 1), None


class Bert(nn.Module):
  """Encoder: `apply({"params": p}, tokens [B, T], mask [B, T], token_type_ids=None) -> EncoderOutput`.

  Positions are 0..T-1 as in transformers, so pad on the right (`tokenizer.pad_right`).
  """

  config: BertConfig

  @nn.compact
  def __call__(self, tokens, mask=None, token_type_ids=None):
    c = self.config
    dt, pdt = L.dtype_of(c.dtype), L.dtype_of(c.param_dtype)
    init = nn.initializers.normal(0.02)
    mask = jnp.ones(tokens.shape, bool) if mask is None else mask.astype(bool)
    h = nn.Embed(
      c.vocab_size,
      c.hidden_size,
      dtype=dt,
      param_dtype=pdt,
      name="word_embeddings",
      embedding_init=L.partitioned(init, (L.VOCAB, L.EMBED)),
    )(tokens)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    h = h + nn.Embed(
      c.max_position_embeddings,
      c.hidden_size,
      dtype=dt,
      param_dtype=pdt,
      name="position_embeddings",
      embedding_init=L.partitioned(init, (L.POSITIONS, L.EMBED)),
    )(positions)
    if c.type_vocab_size:
      types = jnp.zeros_like(tokens) if token_type_ids is None else token_type_ids
      h = h + nn.Embed(
        c.type_vocab_size,
        c.hidden_size,
        dtype=dt,
        param_dtype=pdt,
        name="token_type_embeddings",
        embedding_init=L.partitioned(init, (None, L.EMBED)),
      )(types)
    h = L.layer_norm(c.layer_norm_eps, dt, pdt, name="embeddings_norm")(h)
    (h, _, _), _ = L.scan_layers(BertBlock, c.num_layers, 1, c.remat)(c, name="layers")(
      (h, None, jnp.zeros((), jnp.int32)), mask
    )
    pooled = logits = None
    if c.pooler:
      pooled = jnp.tanh(
        L.dense(c.hidden_size, (L.EMBED, L.EMBED), use_bias=True, dtype=dt, param_dtype=pdt, name="pooler")(h[:, 0])
      )
    if c.num_labels:
      if c.flavor == "distilbert":
        x = jax.nn.relu(
          L.dense(c.hidden_size, (L.EMBED, L.EMBED), use_bias=True, dtype=dt, param_dtype=pdt, name="pre_classifier")(
            h[:, 0]
          )
        )
      else:
        x = pooled
      logits = L.dense(
        c.num_labels, (L.EMBED, None), use_bias=True, dtype=dt, param_dtype=pdt, name="classifier", bias_names=(None,)
      )(x).astype(jnp.float32)
    return EncoderOutput(h, pooled, logits)


def params_from_hf(config: BertConfig, get) -> dict:
  """Map a transformers BERT / DistilBERT state dict ([out, in] Linear weights) onto `Bert`'s params."""
  c = config
  E, H, D = c.hidden_size, c.num_heads, c.head_dim
  distil = c.flavor == "distilbert"
  root = "distilbert." if distil else "bert."
  layer_fmt = root + ("transformer.layer.{}." if distil else "encoder.layer.{}.")

  def stack(fn):
    return np.stack([fn(layer_fmt.format(i)) for i in range(c.num_layers)])

  def heads_in(name):
    return {
      "kernel": stack(lambda p: get(p + name + ".weight").T.reshape(E, H, D)),
      "bias": stack(lambda p: get(p + name + ".bias").reshape(H, D)),
    }

  def ln(name):
    return {"scale": stack(lambda p: get(p + name + ".weight")), "bias": stack(lambda p: get(p + name + ".bias"))}

  def plain(name):
    return {"kernel": stack(lambda p: get(p + name + ".weight").T), "bias": stack(lambda p: get(p + name + ".bias"))}

  names = (
    dict(
      query="attention.q_lin",
      key="attention.k_lin",
      value="attention.v_lin",
      attention_output="attention.out_lin",
      attention_norm="sa_layer_norm",
      intermediate="ffn.lin1",
      output="ffn.lin2",
      output_norm="output_layer_norm",
    )
    if distil
    else dict(
      query="attention.self.query",
      key="attention.self.key",
      value="attention.self.value",
      attention_output="attention.output.dense",
      attention_norm="attention.output.LayerNorm",
      intermediate="intermediate.dense",
      output="output.dense",
      output_norm="output.LayerNorm",
    )
  )
  layers = {
    "query": heads_in(names["query"]),
    "key": heads_in(names["key"]),
    "value": heads_in(names["value"]),
    "attention_output": {
      "kernel": stack(lambda p: get(p + names["attention_output"] + ".weight").T.reshape(H, D, E)),
      "bias": stack(lambda p: get(p + names["attention_output"] + ".bias")),
    },
    "attention_norm": ln(names["attention_norm"]),
    "intermediate": plain(names["intermediate"]),
    "output": plain(names["output"]),
    "output_norm": ln(names["output_norm"]),
  }
  emb = root + "embeddings."
  params = {
    "word_embeddings": {"embedding": get(emb + "word_embeddings.weight")},
    "position_embeddings": {"embedding": get(emb + "position_embeddings.weight")},
    "embeddings_norm": {"scale": get(emb + "LayerNorm.weight"), "bias": get(emb + "LayerNorm.bias")},
    "layers": layers,
  }
  if c.type_vocab_size:
    params["token_type_embeddings"] = {"embedding": get(emb + "token_type_embeddings.weight")}
  if c.pooler:
    params["pooler"] = {"kernel": get(root + "pooler.dense.weight").T, "bias": get(root + "pooler.dense.bias")}
  if c.num_labels:
    if distil:
      params["pre_classifier"] = {"kernel": get("pre_classifier.weight").T, "bias": get("pre_classifier.bias")}
    params["classifier"] = {"kernel": get("classifier.weight").T, "bias": get("classifier.bias")}
  return params


# ------------------------------------------------------------------------------------------- sentence embeddings


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Average of the hidden states over real tokens, as sentence-transformers' mean pooling."""
  m = mask.astype(hidden.dtype)[..., None]
  return (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)


@functools.partial(jax.jit, static_argnames=("module", "normalize"))
def embed(module: Bert, params, tokens, mask, normalize: bool = True) -> jax.Array:
  """Sentence embeddings [B, E]: encoder -> mean pooling -> (optionally) L2 normalisation. Jitted."""
  e = mean_pool(module.apply({"params": params}, tokens, mask).hidden, mask).astype(jnp.float32)
  if normalize:
    e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
  return e


@dataclasses.dataclass
class SentenceEncoder:
  """A BERT encoder + tokenizer that maps texts to unit-norm embeddings (all-MiniLM-L6-v2 by default).

  Example:
    >>> enc = map_jax.models.load_sentence_encoder()
    >>> e = enc(["a cat", "a kitten"]); float(e[0] @ e[1])
  """

  config: BertConfig
  params: Any
  tokenizer: Any
  max_length: int = 256
  normalize: bool = True

  def __call__(self, texts: Sequence[str], min_bucket: int = 16) -> np.ndarray:
    ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
    pad = tok_lib.pad_id(self.tokenizer)
    longest = max((len(i) for i in ids), default=1)
    length = min(tok_lib.bucket(longest, min_bucket), self.config.max_position_embeddings)
    tokens, mask = tok_lib.pad_right(ids, pad, length=length)
    return np.asarray(embed(self.config.module(), self.params, tokens, mask, self.normalize))
