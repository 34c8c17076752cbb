"""Building blocks shared by the Flax decoders and encoders: norms, RoPE, masked attention, KV cache, layer scan."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Logical axis names used in every param's partitioning metadata. `parallel.py` maps these onto mesh axes
# (e.g. "embed" -> "fsdp", "mlp"/"heads"/"vocab" -> "tensor"); "layers" is the stacked axis added by the scan.
EMBED, MLP, HEADS, KV_HEADS, HEAD_DIM, VOCAB, LAYERS, POSITIONS, NORM = (
  "embed",
  "mlp",
  "heads",
  "kv_heads",
  "head_dim",
  "vocab",
  "layers",
  "positions",
  "norm",
)

Dtype = Any


def dtype_of(name: Any) -> Any:
  """Turn "float32" / "bfloat16" / a numpy dtype into a jnp dtype (configs store strings so they stay hashable)."""
  return jnp.dtype(name)


def token_ids(value) -> tuple[int, ...]:
  """A config's token id field (an int, a list of ints or None) as a tuple."""
  if value is None:
    return ()
  return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def partitioned(init: Callable, names: tuple[str | None, ...]) -> Callable:
  """An initializer whose params are boxed with logical axis names (`nn.LogicallyPartitioned`)."""
  return nn.with_logical_partitioning(init, names)


def dense(
  features, names, *, axis=-1, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32, name=None, bias_names=None
) -> nn.DenseGeneral:
  """`nn.DenseGeneral` whose kernel (and bias) carry logical axis names for sharding."""
  features_t = features if isinstance(features, tuple) else (features,)
  bias_names = bias_names if bias_names is not None else names[-len(features_t) :]
  return nn.DenseGeneral(
    features=features,
    axis=axis,
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
    kernel_init=partitioned(nn.initializers.normal(0.02), names),
    bias_init=partitioned(nn.initializers.zeros_init(), bias_names),
  )


class RMSNorm(nn.Module):
  """Root-mean-square norm (Llama): x / sqrt(mean(x^2) + eps) * w, computed in float32 as transformers does."""

  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    w = self.param("scale", partitioned(nn.initializers.ones_init(), (NORM,)), (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    # transformers casts back to the input dtype before the weight multiply; do the same for bf16 parity.
    return (w.astype(self.dtype) * y.astype(self.dtype)).astype(self.dtype)


def layer_norm(eps: float, dtype, param_dtype, name=None, use_scale=True, use_bias=True) -> nn.LayerNorm:
  """`nn.LayerNorm` with logical names on scale and bias; statistics always in float32."""
  return nn.LayerNorm(
    epsilon=eps,
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
    use_scale=use_scale,
    use_bias=use_bias,
    use_fast_variance=False,
    scale_init=partitioned(nn.initializers.ones_init(), (NORM,)),
    bias_init=partitioned(nn.initializers.zeros_init(), (NORM,)),
  )


# ----------------------------------------------------------------------------------------------------------- RoPE


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> tuple[np.ndarray, float]:
  """Inverse frequencies of rotary embeddings and the cos/sin scale, for HF's `rope_type` variants.

  Supported: "default", "linear" (positions divided by `factor`), and "llama3" (Llama 3.1's
  frequency-dependent interpolation between `low_freq_factor` and `high_freq_factor` wavelengths).
  Computed in numpy float64->float32 once per config, like transformers' `ROPE_INIT_FUNCTIONS`.
  """
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
  rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default")) or "default"
  if rope_type == "default":
    return inv_freq.astype(np.float32), 1.0
  if rope_type == "linear":
    return (inv_freq / scaling["factor"]).astype(np.float32), 1.0
  if rope_type == "llama3":
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
  raise NotImplementedError(f"RoPE scaling type {rope_type!r} is not supported (supported: default, linear, llama3).")


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray, scale: float = 1.0):
  """cos/sin tables [B, T, head_dim] for integer positions [B, T], in float32 (HF's half-split layout)."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb) * scale, jnp.sin(emb) * scale


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotate x [B, T, H, D] by position: x*cos + rotate_half(x)*sin, with rotate_half(x) = [-x2, x1]."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
  return x * cos + rotated * sin


# ------------------------------------------------------------------------------------------------------ KV cache


class KVCache(NamedTuple):
  """Preallocated keys/values for all layers: k, v [layers, batch, kv_heads, max_len, head_dim].

  Heads come before slots so each layer's [B, Hkv, S, D] block feeds the attention matmuls without a
  transpose (on CPU, transposing the whole cache every layer and step cost ~10% of decode time).

  Slots are absolute positions in the padded sequence (prompt bucket, then generated tokens); which slots hold
  real tokens is the caller's `kv_mask` [batch, max_len], so left padding never shifts anything.
  """

  k: jax.Array
  v: jax.Array

  @classmethod
  def zeros(cls, num_layers, batch, max_len, kv_heads, head_dim, dtype=jnp.float32) -> "KVCache":
    shape = (num_layers, batch, kv_heads, max_len, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """Position ids from a (left-)padding mask [B, T]: 0 at each row's first real token, clipped to 0 on pads."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def attend(q, k, v, *, kv_mask, layer=None, cache: KVCache | None = None, cache_index=0, scale=None, causal=True):
  """Masked causal multi-head attention with grouped-query heads and an optional KV cache.

  Args:
    q: queries [B, T, H, D]; k, v: this step's keys/values [B, T, Hkv, D] (H a multiple of Hkv).
    kv_mask: [B, S] bool, which key slots are real tokens (S = T without a cache, else the cache length).
    layer: int32 scalar, this layer's index into the stacked cache (inside the layer scan).
    cache: the stacked cache; k/v are written at slots [cache_index, cache_index + T) of `layer`.
    cache_index: int32 scalar, the slot of q's first token.
    scale: logit scale, default 1/sqrt(D).
    causal: False for encoders (BERT): every query sees every real key.

  Returns:
    (out [B, T, H, D], updated cache or None). Query t attends to slots s <= cache_index + t with kv_mask.
  """
  B, T, H, D = q.shape
  Hkv = k.shape[2]
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, Hkv, T, D], the cache layout
  if cache is not None:
    idx = (layer, 0, 0, cache_index, 0)
    ck = jax.lax.dynamic_update_slice(cache.k, k[None].astype(cache.k.dtype), idx)
    cv = jax.lax.dynamic_update_slice(cache.v, v[None].astype(cache.v.dtype), idx)
    cache = KVCache(ck, cv)
    k = jax.lax.dynamic_index_in_dim(ck, layer, 0, keepdims=False).astype(q.dtype)
    v = jax.lax.dynamic_index_in_dim(cv, layer, 0, keepdims=False).astype(q.dtype)
  S = k.shape[2]
  scale = D**-0.5 if scale is None else scale
  qg = q.reshape(B, T, Hkv, H // Hkv, D)
  logits = jnp.einsum("btkgd,bksd->bkgts", qg * jnp.asarray(scale, q.dtype), k).astype(jnp.float32)
  q_slot = cache_index + jnp.arange(T)
  mask = jnp.broadcast_to(kv_mask[:, None, :].astype(bool), (B, T, S))
  if causal:
    mask = mask & (jnp.arange(S)[None, :] <= q_slot[:, None])[None]
  # A finite floor (not -inf) keeps fully masked rows (queries on left padding) finite instead of NaN.
  logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bksd->btkgd", probs, v).reshape(B, T, H, D)
  return out, cache


# ---------------------------------------------------------------------------------------------------- layer scan


class LMOutput(NamedTuple):
  """What a decoder returns: logits [B, T or 1, V] (float32), final hidden states [B, T, E], the cache."""

  logits: jax.Array
  hidden: jax.Array
  cache: KVCache | None


def scan_layers(block: type[nn.Module], num_layers: int, num_broadcast: int, remat: bool = False):
  """Stack `num_layers` copies of `block` with `nn.scan` (one compiled body; params get a leading "layers" axis).

  The block is called as block(carry, *broadcast_args) with carry = (hidden, cache, layer_index) and
  returns (carry, None); the cache rides in the carry so XLA updates it in place inside decode loops.
  """
  if remat:
    block = nn.remat(block, prevent_cse=False)
  return nn.scan(
    block,
    variable_axes={"params": 0},
    split_rngs={"params": True, "dropout": True},
    in_axes=(nn.broadcast,) * num_broadcast,
    length=num_layers,
    metadata_params={nn.PARTITION_NAME: LAYERS},
  )


def gelu_tanh(x):
  """GPT-2's "gelu_new": the tanh approximation."""
  return jax.nn.gelu(x, approximate=True)


def gelu_exact(x):
  """BERT's "gelu": the erf form."""
  return jax.nn.gelu(x, approximate=False)


ACTIVATIONS = {
  "gelu": gelu_exact,
  "gelu_new": gelu_tanh,
  "gelu_pytorch_tanh": gelu_tanh,
  "gelu_fast": gelu_tanh,
  "relu": jax.nn.relu,
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
}


def activation(name: str):
  """Look up an HF activation name; unknown names fail with the list of known ones."""
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise NotImplementedError(f"activation {name!r} is not supported (known: {sorted(ACTIVATIONS)})") from None
