"""GPT-2 decoder (learned positions, pre-LayerNorm, fused QKV in the checkpoint, GELU-tanh MLP) in Flax."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from map_jax.models import layers as L
from map_jax.models.family import FamilyConfig


@dataclasses.dataclass(frozen=True)
class GPT2Config(FamilyConfig):
  """Shape and numerics of a GPT-2 model; field names follow map-jax's decoders (see `LlamaConfig`)."""

  vocab_size: int = 50257
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 1024
  layer_norm_eps: float = 1e-5
  hidden_act: str = "gelu_new"
  bos_token_id: int | None = 50256
  eos_token_ids: tuple[int, ...] = (50256,)
  pad_token_id: int | None = None
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False

  architecture = "gpt2"

  @property
  def num_kv_heads(self) -> int:
    return self.num_heads

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def from_hf(cls, hf: dict, **overrides: Any) -> "GPT2Config":
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
      raise NotImplementedError("GPT-2 variants with non-standard attention scaling are not supported")
    eos = hf.get("eos_token_id", 50256)
    kw = dict(
      vocab_size=hf["vocab_size"],
      hidden_size=hf["n_embd"],
      num_layers=hf["n_layer"],
      num_heads=hf["n_head"],
      intermediate_size=hf.get("n_inner") or 4 * hf["n_embd"],
      max_position_embeddings=hf["n_positions"],
      layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
      hidden_act=hf.get("activation_function", "gelu_new"),
      bos_token_id=hf.get("bos_token_id"),
      eos_token_ids=L.token_ids(eos),
      pad_token_id=hf.get("pad_token_id"),
    )
    kw.update(overrides)
    return cls(**kw)

  def params_from_hf(self, get) -> dict:
    """Flax params from the checkpoint's tensors (`params_from_hf` below)."""
    return params_from_hf(self, get)

  def module(self, **kwargs) -> "GPT2":
    """The Flax module for this config (kwargs go to the module, e.g. `name=`)."""
    return GPT2(self, **kwargs)


class GPT2Block(nn.Module):
  """x + Attn(LN(x)), then x + MLP(LN(x))."""

  config: GPT2Config
  lora: L.LoRA | None = None
  weights_major: bool = False  # see `layers.Dense`

  @nn.compact
  def __call__(self, carry, kv_mask, cache_index):
    c = self.config
    h, cache, layer = carry
    dt, pdt = L.dtype_of(c.dtype), L.dtype_of(c.param_dtype)
    proj = functools.partial(L.dense, dtype=dt, param_dtype=pdt, lora=self.lora, weights_major=self.weights_major)
    H, D = c.num_heads, c.head_dim
    x = L.layer_norm(c.layer_norm_eps, dt, pdt, name="ln_1")(h)
    q, k, v = (
      proj((H, D), (L.EMBED, L.HEADS, L.HEAD_DIM), use_bias=True, name=n)(x) for n in ("q_proj", "k_proj", "v_proj")
    )
    a, cache = L.attend(q, k, v, kv_mask=kv_mask, layer=layer, cache=cache, cache_index=cache_index)
    h = h + proj(
      c.hidden_size,
      (L.HEADS, L.HEAD_DIM, L.EMBED),
      axis=(-2, -1),
      use_bias=True,
      name="o_proj",
      bias_names=(L.EMBED,),
    )(a)
    x = L.layer_norm(c.layer_norm_eps, dt, pdt, name="ln_2")(h)
    x = proj(c.intermediate_size, (L.EMBED, L.MLP), use_bias=True, name="fc")(x)
    x = proj(c.hidden_size, (L.MLP, L.EMBED), use_bias=True, name="proj")(L.activation(c.hidden_act)(x))
    return (h + x, cache, layer + 1), None


class GPT2(nn.Module):
  """GPT-2 causal LM with the same call signature and `LMOutput` as `llama.Llama` (tied output embedding)."""

  config: GPT2Config
  lora: L.LoRA | None = None  # low-rank adapters on the projections (`layers.LoRA`); None: none
  unroll: bool = False  # layers as a Python loop over per-layer params (`layers.UnrolledLayers`)
  weights_major: bool = False  # projection kernels held [out, in] (`layers.Dense`; `for_decoding` on CPU)

  def setup(self):
    c = self.config
    dt, pdt = L.dtype_of(c.dtype), L.dtype_of(c.param_dtype)
    init = nn.initializers.normal(0.02)
    self.wte = L.Embed(
      c.vocab_size, c.hidden_size, dtype=dt, param_dtype=pdt, embedding_init=L.partitioned(init, (L.VOCAB, L.EMBED))
    )
    self.wpe = nn.Embed(
      c.max_position_embeddings,
      c.hidden_size,
      dtype=dt,
      param_dtype=pdt,
      embedding_init=L.partitioned(init, (L.POSITIONS, L.EMBED)),
    )
    self.layers = L.scan_layers(GPT2Block, c.num_layers, 2, c.remat, self.unroll)(c, self.lora, self.weights_major)
    self.ln_f = L.layer_norm(c.layer_norm_eps, dt, pdt)

  def __call__(self, tokens, positions=None, kv_mask=None, cache=None, cache_index=0, last_only=False):
    if kv_mask is None:
      kv_mask = jnp.ones(tokens.shape, bool)
    if positions is None:
      if cache is not None:
        raise ValueError("with a KV cache, pass positions (the slots' masks alone do not give them)")
      positions = L.positions_from_mask(kv_mask)
    h = self.wte(tokens) + self.wpe(positions)
    (h, cache, _), _ = self.layers((h, cache, jnp.zeros((), jnp.int32)), kv_mask, jnp.asarray(cache_index, jnp.int32))
    h = self.ln_f(h)
    return L.LMOutput(self.logits(h[:, -1:] if last_only else h), h, cache)

  def logits(self, h):
    return self.wte.attend(h).astype(jnp.float32)


def params_from_hf(config: GPT2Config, get) -> dict:
  """Map a transformers GPT-2 state dict (Conv1D weights are [in, out]) onto `GPT2`'s param tree."""
  c = config
  E, H, D = c.hidden_size, c.num_heads, c.head_dim

  def stack(fn):
    return np.stack([fn(f"transformer.h.{i}.") for i in range(c.num_layers)])

  def qkv(j, what):
    def f(p):
      if what == "kernel":
        return get(p + "attn.c_attn.weight")[:, j * E : (j + 1) * E].reshape(E, H, D)
      return get(p + "attn.c_attn.bias")[j * E : (j + 1) * E].reshape(H, D)

    return f

  ln = lambda n: {
    "scale": stack(lambda p: get(p + n + ".weight")),  # noqa: E731
    "bias": stack(lambda p: get(p + n + ".bias")),
  }
  layers = {
    "ln_1": ln("ln_1"),
    "ln_2": ln("ln_2"),
    **{
      n: {"kernel": stack(qkv(j, "kernel")), "bias": stack(qkv(j, "bias"))}
      for j, n in enumerate(("q_proj", "k_proj", "v_proj"))
    },
    "o_proj": {
      "kernel": stack(lambda p: get(p + "attn.c_proj.weight").reshape(H, D, E)),
      "bias": stack(lambda p: get(p + "attn.c_proj.bias")),
    },
    "fc": {"kernel": stack(lambda p: get(p + "mlp.c_fc.weight")), "bias": stack(lambda p: get(p + "mlp.c_fc.bias"))},
    "proj": {
      "kernel": stack(lambda p: get(p + "mlp.c_proj.weight")),
      "bias": stack(lambda p: get(p + "mlp.c_proj.bias")),
    },
  }
  return {
    "wte": {"embedding": get("transformer.wte.weight")},
    "wpe": {"embedding": get("transformer.wpe.weight")},
    "layers": layers,
    "ln_f": {"scale": get("transformer.ln_f.weight"), "bias": get("transformer.ln_f.bias")},
  }
