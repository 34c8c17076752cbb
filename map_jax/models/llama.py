"""Llama-family decoder (RMSNorm, RoPE with scaling variants, grouped-query attention, SwiGLU) in Flax."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from map_jax.models import layers as L
from map_jax.models.family import FamilyConfig


@dataclasses.dataclass(frozen=True)
class LlamaConfig(FamilyConfig):
  """Shape and numerics of a Llama-architecture model (Llama 1/2/3, SmolLM, TinyLlama, ...).

  Built from a Hugging Face `config.json` (`from_hf`) or GGUF metadata (`loading.load_gguf`). Frozen and
  hashable so a module built from it can be a static argument of `jax.jit`. `dtype` is the compute dtype
  ("float32" on CPU, "bfloat16" on GPU/TPU), `param_dtype` the storage dtype of the weights.
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_scaling: tuple = ()  # sorted (key, value) items of HF's rope_parameters / rope_scaling
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  mlp_bias: bool = False
  hidden_act: str = "silu"
  bos_token_id: int | None = 1
  eos_token_ids: tuple[int, ...] = (2,)
  pad_token_id: int | None = None
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False

  architecture = "llama"

  @classmethod
  def from_hf(cls, hf: dict, **overrides: Any) -> "LlamaConfig":
    """From the fields of a transformers `LlamaConfig` (a config.json dict); `overrides` win."""
    heads = hf["num_attention_heads"]
    rope = dict(hf.get("rope_parameters") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    rope.update(hf.get("rope_scaling") or {})
    if rope.get("rope_type", rope.get("type", "default")) == "default":
      rope = {}
    eos = hf.get("eos_token_id", 2)
    kw = dict(
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      rope_theta=float(theta),
      rope_scaling=tuple(sorted(rope.items())),
      max_position_embeddings=hf.get("max_position_embeddings", 2048),
      tie_word_embeddings=hf.get("tie_word_embeddings", False),
      attention_bias=hf.get("attention_bias", False),
      mlp_bias=hf.get("mlp_bias", False),
      hidden_act=hf.get("hidden_act", "silu"),
      bos_token_id=hf.get("bos_token_id"),
      eos_token_ids=L.token_ids(eos),
      pad_token_id=hf.get("pad_token_id"),
    )
    kw.update(overrides)
    return cls(**kw)

  def params_from_hf(self, get) -> dict:
    """Flax params from the checkpoint's tensors (`params_from_hf` below)."""
    return params_from_hf(self, get)

  def module(self, **kwargs) -> "Llama":
    """The Flax module for this config (kwargs go to the module, e.g. `name=`)."""
    return Llama(self, **kwargs)


class LlamaBlock(nn.Module):
  """One pre-norm decoder layer: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""

  config: LlamaConfig
  lora: L.LoRA | None = None
  weights_major: bool = False  # see `layers.Dense`

  @nn.compact
  def __call__(self, carry, cos, sin, kv_mask, cache_index):
    c = self.config
    h, cache, layer = carry
    dt, pdt = L.dtype_of(c.dtype), L.dtype_of(c.param_dtype)
    proj = functools.partial(L.dense, dtype=dt, param_dtype=pdt, lora=self.lora, weights_major=self.weights_major)
    attn_in = functools.partial(proj, use_bias=c.attention_bias)
    mlp = functools.partial(proj, use_bias=c.mlp_bias)
    x = L.RMSNorm(c.rms_norm_eps, dt, pdt, name="input_norm")(h)
    q = attn_in((c.num_heads, c.head_dim), (L.EMBED, L.HEADS, L.HEAD_DIM), name="q_proj")(x)
    k = attn_in((c.num_kv_heads, c.head_dim), (L.EMBED, L.KV_HEADS, L.HEAD_DIM), name="k_proj")(x)
    v = attn_in((c.num_kv_heads, c.head_dim), (L.EMBED, L.KV_HEADS, L.HEAD_DIM), name="v_proj")(x)
    q, k = L.apply_rope(q, cos, sin), L.apply_rope(k, cos, sin)
    a, cache = L.attend(q, k, v, kv_mask=kv_mask, layer=layer, cache=cache, cache_index=cache_index)
    h = h + attn_in(c.hidden_size, (L.HEADS, L.HEAD_DIM, L.EMBED), axis=(-2, -1), name="o_proj")(a)
    x = L.RMSNorm(c.rms_norm_eps, dt, pdt, name="post_attention_norm")(h)
    gate = mlp(c.intermediate_size, (L.EMBED, L.MLP), name="gate_proj")(x)
    up = mlp(c.intermediate_size, (L.EMBED, L.MLP), name="up_proj")(x)
    h = h + mlp(c.hidden_size, (L.MLP, L.EMBED), name="down_proj")(L.activation(c.hidden_act)(gate) * up)
    return (h, cache, layer + 1), None


class Llama(nn.Module):
  """Llama causal LM. Pure `apply({"params": p}, tokens, ...)` with an explicit, preallocated KV cache.

  Call signature (shared by `GPT2` and `OPT`, which is what `map_jax.sampling` relies on):

    tokens    [B, T] int32
    positions [B, T] int32 position ids; without a cache they default to `kv_mask`'s running count, so left
              padding does not shift positions; with a cache they are required
    kv_mask   [B, S] bool, which key slots hold real tokens; S = T without a cache, the cache length with one
              (or int segment ids of packed sequences, 0 on padding: `layers.attend`)
    cache     `layers.KVCache` or None; this call writes k/v at slots [cache_index, cache_index + T)
    last_only compute logits for the last position only (prefill in generation)

  Returns `layers.LMOutput(logits float32 [B, T|1, V], hidden [B, T, E], cache)`.

  Example:
    >>> cfg, params, tok = map_jax.models.load_model("smollm2-135m-instruct")
    >>> ids = jnp.asarray(tok(["The capital of France is"])["input_ids"])
    >>> tok.decode(int(cfg.module().apply({"params": params}, ids).logits[0, -1].argmax()))
    ' Paris'
  """

  config: LlamaConfig
  lora: L.LoRA | None = None  # low-rank adapters on the projections (`layers.LoRA`); None: none
  unroll: bool = False  # layers as a Python loop over per-layer params (`layers.UnrolledLayers`)
  weights_major: bool = False  # projection kernels held [out, in] (`layers.Dense`; `for_decoding` on CPU)

  def setup(self):
    c = self.config
    dt, pdt = L.dtype_of(c.dtype), L.dtype_of(c.param_dtype)
    self.embed_tokens = L.Embed(
      c.vocab_size,
      c.hidden_size,
      dtype=dt,
      param_dtype=pdt,
      embedding_init=L.partitioned(nn.initializers.normal(0.02), (L.VOCAB, L.EMBED)),
    )
    self.layers = L.scan_layers(LlamaBlock, c.num_layers, 4, c.remat, self.unroll)(c, self.lora, self.weights_major)
    self.norm = L.RMSNorm(c.rms_norm_eps, dt, pdt)
    if not c.tie_word_embeddings:
      self.lm_head = L.dense(
        c.vocab_size, (L.EMBED, L.VOCAB), dtype=dt, param_dtype=pdt, weights_major=self.weights_major
      )
    scaling = dict(c.rope_scaling) or None
    self._inv_freq, self._rope_scale = L.rope_inv_freq(c.head_dim, c.rope_theta, scaling)

  def __call__(self, tokens, positions=None, kv_mask=None, cache=None, cache_index=0, last_only=False):
    if kv_mask is None:
      kv_mask = jnp.ones(tokens.shape, bool)
    if positions is None:
      if cache is not None:
        raise ValueError("with a KV cache, pass positions (the slots' masks alone do not give them)")
      positions = L.positions_from_mask(kv_mask)
    h = self.embed_tokens(tokens)
    cos, sin = L.rope_cos_sin(positions, self._inv_freq, self._rope_scale)
    carry = (h, cache, jnp.zeros((), jnp.int32))
    (h, cache, _), _ = self.layers(carry, cos, sin, kv_mask, jnp.asarray(cache_index, jnp.int32))
    h = self.norm(h)
    return L.LMOutput(self.logits(h[:, -1:] if last_only else h), h, cache)

  def logits(self, h):
    """Project hidden states [..., E] to float32 vocabulary logits (tied to the embedding or a separate head)."""
    if self.config.tie_word_embeddings:
      return self.embed_tokens.attend(h).astype(jnp.float32)
    return self.lm_head(h).astype(jnp.float32)


def params_from_hf(config: LlamaConfig, get) -> dict:
  """Map a transformers Llama state dict onto `Llama`'s param tree (unboxed numpy arrays).

  `get(name)` returns the float32 numpy array of a transformers parameter name (PyTorch [out, in] layout);
  this function transposes, splits heads and stacks layers for the scan.
  """
  c = config
  E, H, Hkv, D = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim

  def stack(fn):
    import numpy as np

    return np.stack([fn(f"model.layers.{i}.") for i in range(c.num_layers)])

  def proj_in(name, heads):  # [heads*D, E] -> [E, heads, D]
    return lambda p: get(p + name + ".weight").T.reshape(E, heads, D)

  layers = {
    "input_norm": {"scale": stack(lambda p: get(p + "input_layernorm.weight"))},
    "post_attention_norm": {"scale": stack(lambda p: get(p + "post_attention_layernorm.weight"))},
    "q_proj": {"kernel": stack(proj_in("self_attn.q_proj", H))},
    "k_proj": {"kernel": stack(proj_in("self_attn.k_proj", Hkv))},
    "v_proj": {"kernel": stack(proj_in("self_attn.v_proj", Hkv))},
    "o_proj": {"kernel": stack(lambda p: get(p + "self_attn.o_proj.weight").T.reshape(H, D, E))},
    "gate_proj": {"kernel": stack(lambda p: get(p + "mlp.gate_proj.weight").T)},
    "up_proj": {"kernel": stack(lambda p: get(p + "mlp.up_proj.weight").T)},
    "down_proj": {"kernel": stack(lambda p: get(p + "mlp.down_proj.weight").T)},
  }
  if c.attention_bias:
    for n, heads in (("q_proj", H), ("k_proj", Hkv), ("v_proj", Hkv)):
      layers[n]["bias"] = stack(lambda p: get(p + f"self_attn.{n}.bias").reshape(heads, D))
    layers["o_proj"]["bias"] = stack(lambda p: get(p + "self_attn.o_proj.bias"))
  if c.mlp_bias:
    for n in ("gate_proj", "up_proj", "down_proj"):
      layers[n]["bias"] = stack(lambda p: get(p + f"mlp.{n}.bias"))
  params = {
    "embed_tokens": {"embedding": get("model.embed_tokens.weight")},
    "layers": layers,
    "norm": {"scale": get("model.norm.weight")},
  }
  if not c.tie_word_embeddings:
    params["lm_head"] = {"kernel": get("lm_head.weight").T}
  return params
