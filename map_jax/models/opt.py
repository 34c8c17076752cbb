"""OPT decoder (learned positions offset by 2, pre- or post-LayerNorm, ReLU MLP, optional embed projection)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from map_jax.models import layers as L
from map_jax.models.family import FamilyConfig

POSITION_OFFSET = 2  # OPT's learned position table starts at index 2 (a fairseq legacy).


@dataclasses.dataclass(frozen=True)
class OPTConfig(FamilyConfig):
  """Shape and numerics of an OPT model (125M ... 66B); `word_embed_proj_dim` != hidden_size as in OPT-350M."""

  vocab_size: int = 50272
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 2048
  word_embed_proj_dim: int = 768
  do_layer_norm_before: bool = True
  final_layer_norm: bool = True
  enable_bias: bool = True
  hidden_act: str = "relu"
  bos_token_id: int | None = 2
  eos_token_ids: tuple[int, ...] = (2,)
  pad_token_id: int | None = 1
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False

  architecture = "opt"
  layer_norm_eps = 1e-5

  @property
  def num_kv_heads(self) -> int:
    return self.num_heads

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def projects(self) -> bool:
    return self.word_embed_proj_dim != self.hidden_size

  @classmethod
  def from_hf(cls, hf: dict, **overrides: Any) -> "OPTConfig":
    if hf.get("layer_norm_elementwise_affine") is False:
      raise NotImplementedError("OPT without LayerNorm affine params is not supported")
    eos = hf.get("eos_token_id", 2)
    kw = dict(
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      intermediate_size=hf["ffn_dim"],
      max_position_embeddings=hf["max_position_embeddings"],
      word_embed_proj_dim=hf.get("word_embed_proj_dim") or hf["hidden_size"],
      do_layer_norm_before=hf.get("do_layer_norm_before", True),
      final_layer_norm=hf.get("do_layer_norm_before", True) and not hf.get("_remove_final_layer_norm", False),
      enable_bias=hf.get("enable_bias", True),
      hidden_act=hf.get("activation_function", "relu"),
      bos_token_id=hf.get("bos_token_id"),
      eos_token_ids=L.token_ids(eos),
      pad_token_id=hf.get("pad_token_id"),
    )
    kw.update(overrides)
    return cls(**kw)

  def params_from_hf(self, get) -> dict:
    """Flax params from the checkpoint's tensors (`params_from_hf` below)."""
    return params_from_hf(self, get)

  def module(self, **kwargs) -> "OPT":
    """The Flax module for this config (kwargs go to the module, e.g. `name=`)."""
    return OPT(self, **kwargs)


class OPTBlock(nn.Module):
  """Pre-LN (most sizes) or post-LN (OPT-350M) residual attention + ReLU MLP."""

  config: OPTConfig
  lora: L.LoRA | None = None
  weights_major: bool = False  # see `layers.Dense`

  @nn.compact
  def __call__(self, carry, kv_mask, cache_index):
    c = self.config
    h, cache, layer = carry
    dt, pdt = L.dtype_of(c.dtype), L.dtype_of(c.param_dtype)
    proj = functools.partial(L.dense, dtype=dt, param_dtype=pdt, lora=self.lora, weights_major=self.weights_major)
    H, D, b = c.num_heads, c.head_dim, c.enable_bias
    pre = c.do_layer_norm_before
    ln1 = L.layer_norm(c.layer_norm_eps, dt, pdt, name="self_attn_layer_norm")
    ln2 = L.layer_norm(c.layer_norm_eps, dt, pdt, name="final_layer_norm")
    x = ln1(h) if pre else h
    q, k, v = (
      proj((H, D), (L.EMBED, L.HEADS, L.HEAD_DIM), use_bias=b, name=n)(x) for n in ("q_proj", "k_proj", "v_proj")
    )
    a, cache = L.attend(q, k, v, kv_mask=kv_mask, layer=layer, cache=cache, cache_index=cache_index)
    h = h + proj(
      c.hidden_size,
      (L.HEADS, L.HEAD_DIM, L.EMBED),
      axis=(-2, -1),
      use_bias=b,
      name="out_proj",
      bias_names=(L.EMBED,),
    )(a)
    if not pre:
      h = ln1(h)
    x = ln2(h) if pre else h
    x = proj(c.intermediate_size, (L.EMBED, L.MLP), use_bias=b, name="fc1")(x)
    h = h + proj(c.hidden_size, (L.MLP, L.EMBED), use_bias=b, name="fc2")(L.activation(c.hidden_act)(x))
    if not pre:
      h = ln2(h)
    return (h, cache, layer + 1), None


class OPT(nn.Module):
  """OPT causal LM with the same call signature and `LMOutput` as `llama.Llama` (tied output embedding)."""

  config: OPTConfig
  lora: L.LoRA | None = None  # low-rank adapters on the projections (`layers.LoRA`); None: none
  unroll: bool = False  # layers as a Python loop over per-layer params (`layers.UnrolledLayers`)
  weights_major: bool = False  # projection kernels held [out, in] (`layers.Dense`; `for_decoding` on CPU)

  def setup(self):
    c = self.config
    dt, pdt = L.dtype_of(c.dtype), L.dtype_of(c.param_dtype)
    init = nn.initializers.normal(0.02)
    self.embed_tokens = L.Embed(
      c.vocab_size,
      c.word_embed_proj_dim,
      dtype=dt,
      param_dtype=pdt,
      embedding_init=L.partitioned(init, (L.VOCAB, L.EMBED)),
    )
    self.embed_positions = nn.Embed(
      c.max_position_embeddings + POSITION_OFFSET,
      c.hidden_size,
      dtype=dt,
      param_dtype=pdt,
      embedding_init=L.partitioned(init, (L.POSITIONS, L.EMBED)),
    )
    if c.projects:
      self.project_in = L.dense(c.hidden_size, (None, L.EMBED), dtype=dt, param_dtype=pdt)
      self.project_out = L.dense(c.word_embed_proj_dim, (L.EMBED, None), dtype=dt, param_dtype=pdt)
    self.layers = L.scan_layers(OPTBlock, c.num_layers, 2, c.remat, self.unroll)(c, self.lora, self.weights_major)
    if c.final_layer_norm:
      self.final_layer_norm = L.layer_norm(c.layer_norm_eps, dt, pdt)

  def __call__(self, tokens, positions=None, kv_mask=None, cache=None, cache_index=0, last_only=False):
    c = self.config
    if kv_mask is None:
      kv_mask = jnp.ones(tokens.shape, bool)
    if positions is None:
      if cache is not None:
        raise ValueError("with a KV cache, pass positions (the slots' masks alone do not give them)")
      positions = L.positions_from_mask(kv_mask)
    h = self.embed_tokens(tokens)
    if c.projects:
      h = self.project_in(h)
    h = h + self.embed_positions(positions + POSITION_OFFSET)
    (h, cache, _), _ = self.layers((h, cache, jnp.zeros((), jnp.int32)), kv_mask, jnp.asarray(cache_index, jnp.int32))
    if c.final_layer_norm:
      h = self.final_layer_norm(h)
    return L.LMOutput(self.logits(h[:, -1:] if last_only else h), h, cache)

  def logits(self, h):
    if self.config.projects:
      h = self.project_out(h)
    return self.embed_tokens.attend(h).astype(jnp.float32)


def params_from_hf(config: OPTConfig, get) -> dict:
  """Map a transformers OPT state dict ([out, in] Linear weights) onto `OPT`'s param tree."""
  c = config
  E, H, D = c.hidden_size, c.num_heads, c.head_dim
  pre = "model.decoder."

  def stack(fn):
    return np.stack([fn(f"{pre}layers.{i}.") for i in range(c.num_layers)])

  def lin(name):
    out = {"kernel": stack(lambda p: get(p + name + ".weight").T)}
    if c.enable_bias:
      out["bias"] = stack(lambda p: get(p + name + ".bias"))
    return out

  def heads_in(name):
    out = {"kernel": stack(lambda p: get(p + f"self_attn.{name}.weight").T.reshape(E, H, D))}
    if c.enable_bias:
      out["bias"] = stack(lambda p: get(p + f"self_attn.{name}.bias").reshape(H, D))
    return out

  ln = lambda n: {
    "scale": stack(lambda p: get(p + n + ".weight")),  # noqa: E731
    "bias": stack(lambda p: get(p + n + ".bias")),
  }
  out_proj = {"kernel": stack(lambda p: get(p + "self_attn.out_proj.weight").T.reshape(H, D, E))}
  if c.enable_bias:
    out_proj["bias"] = stack(lambda p: get(p + "self_attn.out_proj.bias"))
  layers = {
    "self_attn_layer_norm": ln("self_attn_layer_norm"),
    "final_layer_norm": ln("final_layer_norm"),
    "q_proj": heads_in("q_proj"),
    "k_proj": heads_in("k_proj"),
    "v_proj": heads_in("v_proj"),
    "out_proj": out_proj,
    "fc1": lin("fc1"),
    "fc2": lin("fc2"),
  }
  params = {
    "embed_tokens": {"embedding": get(pre + "embed_tokens.weight")},
    "embed_positions": {"embedding": get(pre + "embed_positions.weight")},
    "layers": layers,
  }
  if c.projects:
    params["project_in"] = {"kernel": get(pre + "project_in.weight").T}
    params["project_out"] = {"kernel": get(pre + "project_out.weight").T}
  if c.final_layer_norm:
    params["final_layer_norm"] = {
      "scale": get(pre + "final_layer_norm.weight"),
      "bias": get(pre + "final_layer_norm.bias"),
    }
  return params
