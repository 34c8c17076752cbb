"""Building blocks shared by the Flax decoders and encoders: norms, RoPE, masked attention, KV cache, layer scan."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import chex
import flax.linen as nn
from flax.linen.dtypes import promote_dtype
import jax
import jax.numpy as jnp
import numpy as np

# Logical axis names used in every param's partitioning metadata. `parallel.py` maps these onto mesh axes
# (e.g. "embed" -> "fsdp", "mlp"/"heads"/"vocab" -> "tensor"); "layers" is the stacked axis added by the scan.
# "lora" is the rank axis of low-rank adapters (`LoRA`).
EMBED, MLP, HEADS, KV_HEADS, HEAD_DIM, VOCAB, LAYERS, POSITIONS, NORM, LORA_RANK = (
  "embed",
  "mlp",
  "heads",
  "kv_heads",
  "head_dim",
  "vocab",
  "layers",
  "positions",
  "norm",
  "lora",
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


# The projections every decoder family names the same way (attention in, attention out, MLP in, MLP out); a
# family whose names differ lists its own in `LoRA.targets`.
ATTENTION_AND_MLP = (
  "q_proj",
  "k_proj",
  "v_proj",
  "o_proj",
  "out_proj",
  "gate_proj",
  "up_proj",
  "down_proj",
  "fc",
  "fc1",
  "fc2",
  "proj",
)


@dataclasses.dataclass(frozen=True)
class LoRA:
  """Low-rank adapters (Hu et al., 2021) on a decoder's projections: W x becomes W x + (α / r) · B A x.

  A decoder built with `config.module(lora=LoRA(...))` adds `lora_a` [in..., r] (uniform ±1/sqrt(fan-in), as
  PEFT) and `lora_b` [r, out...] (zeros) beside the kernel of every projection named in `targets`. Adapters
  count only when they are in the params: the same module applied to params without them (the frozen base)
  computes the base model exactly, so a reference model p0 costs no second copy of the weights, and a fresh
  adapter (B = 0) changes nothing. `map_jax.align.lora` splits, combines and merges such params.

  rank: r; alpha: α (the update's scale is α / r); targets: projection names (the default covers the
  attention and MLP projections of every built-in decoder family); param_dtype: the adapters' storage dtype,
  float32 whatever the base's (a bf16 adapter would round small Adam updates away); they compute in the
  module's dtype.
  """

  rank: int = 8
  alpha: float = 16.0
  targets: tuple[str, ...] = ATTENTION_AND_MLP
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
    if not self.targets:
      raise ValueError("LoRA targets name no projection")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def on(self, name: str) -> "LoRA | None":
    """This LoRA if it targets the projection `name`, else None."""
    return self if name in self.targets else None


# Rows (one position each, as in a decode step) that XLA:CPU multiplies faster weights-major.
FEW_ROWS = (2, 64)


def weights_major_product(x: jax.Array, w: jax.Array, precision=None) -> jax.Array:
  """x [rows, in] times a weights-major matrix w [out, in]: x @ w^T, [rows, out].

  XLA:CPU multiplies a few rows by a matrix (x [rows, in] @ W [in, out]) at about half its speed at many
  rows; the same product computed as w [out, in] @ x^T [in, rows] runs at nearly full speed (SmolLM2's
  decode at 16 rows on one core: 32 against 50 GFLOP/s in `benchmarks/generate.py`, whose same-shape
  matmul times both forms). So on CPU, for `FEW_ROWS`, this is w @ x^T, its transposes fenced by
  optimization barriers so that XLA does not fold them back into the slow form; the weights must be
  stored [out, in] for it (a transpose of them inside the product would be a copy per call). Otherwise,
  and on other backends, a plain dot. The same sums of the same products in another order: the result
  may differ in the last bits.
  """
  chex.assert_rank([x, w], 2)
  if jax.default_backend() == "cpu" and FEW_ROWS[0] <= x.shape[0] <= FEW_ROWS[1]:
    x_t = jax.lax.optimization_barrier(x.T)
    return jax.lax.optimization_barrier(jax.lax.dot_general(w, x_t, (((1,), (0,)), ((), ())), precision)).T
  return jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())), precision)


class Dense(nn.DenseGeneral):
  """`nn.DenseGeneral` whose kernel can be held weights-major.

  weights_major: the kernel is the param `kernel_t` [out, in] (outputs by inputs, flattened; what
    `weights_major_params` makes of `kernel` [in..., out...]) and products run as `weights_major_product`:
    the layout `map_jax.sampling.for_decoding` gives decoders on CPU, where a decode step multiplies few
    rows. The contracted axes must then be the input's last ones, in order. The bias is unchanged.
  """

  weights_major: bool = False

  @nn.compact
  def __call__(self, inputs):
    if not self.weights_major:
      return super().__call__(inputs)
    features = self.features if isinstance(self.features, tuple) else (self.features,)
    axis = self.axis if isinstance(self.axis, tuple) else (self.axis,)
    n = len(axis)
    if tuple(a % inputs.ndim for a in axis) != tuple(range(inputs.ndim - n, inputs.ndim)) or self.batch_dims:
      raise ValueError(f"a weights-major Dense contracts the input's last axes in order, got axis={self.axis}")
    k = math.prod(inputs.shape[inputs.ndim - n :])
    kernel = self.param("kernel_t", nn.initializers.normal(0.02), (math.prod(features), k), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), features, self.param_dtype) if self.use_bias else None
    x, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    y = weights_major_product(x.reshape(-1, k), kernel, self.precision)
    y = y.reshape(inputs.shape[: inputs.ndim - n] + features)
    return y if bias is None else y + bias


class Embed(nn.Embed):
  """`nn.Embed` whose `attend` (tied vocabulary logits) is a `weights_major_product`: the embedding
  [vocab, embed] is weights-major already, so a decode step's head runs at the fast form with no copy."""

  def attend(self, query):
    query, embedding = self.promote_dtype(query, self.embedding, dtype=self.dtype)
    y = weights_major_product(query.reshape(-1, query.shape[-1]), embedding)
    return y.reshape(query.shape[:-1] + embedding.shape[:1])


@functools.lru_cache(maxsize=16)
def _param_shapes(module: nn.Module):
  """The shapes of a decoder's params as its init makes them (`jax.eval_shape`: nothing is computed; tracing
  a large model's init takes about a second, so once per module)."""
  return nn.meta.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"])


def weights_major_params(module: nn.Module, params):
  """`params` (plain or boxed) laid out for `module`, a decoder built with `weights_major=True`: each of its
  weights-major projections' `kernel` [in..., out...] becomes `kernel_t` [out, in] (a copy; stacked
  layers keep their leading axis); every other leaf is shared, not copied. The layout comes from the
  module's own init, abstract and once per module (`_param_shapes`)."""
  target = _param_shapes(module)

  def convert(src, tgt):
    out = {}
    for name, value in src.items():
      if hasattr(value, "items"):  # a subtree (dict or FrozenDict)
        out[name] = convert(value, tgt.get(name, {}))
      elif name == "kernel" and "kernel_t" in tgt:
        lead = tgt["kernel_t"].shape[:-2]  # a scan's stacked layers
        rows, cols = tgt["kernel_t"].shape[-2:]
        out["kernel_t"] = jnp.swapaxes(jnp.reshape(value, lead + (cols, rows)), -1, -2)
      else:
        out[name] = value
    return out

  return convert(nn.meta.unbox(params), target)


class LoRADenseGeneral(Dense):
  """`Dense` plus a low-rank update (see `LoRA`) when its `lora_a`/`lora_b` params are present.

  `kernel_names` are the kernel's logical axes (inputs, then features): the adapters take the input names (A)
  and the feature names (B) with `LORA_RANK` between. The contracted axes must be the input's last ones.
  """

  lora: LoRA | None = None
  kernel_names: tuple[str | None, ...] = ()

  @nn.compact
  def __call__(self, inputs):
    y = super().__call__(inputs)
    if self.lora is None or not (self.is_initializing() or self.has_variable("params", "lora_a")):
      return y
    axis = tuple(sorted(a % inputs.ndim for a in (self.axis if isinstance(self.axis, tuple) else (self.axis,))))
    if axis != tuple(range(inputs.ndim - len(axis), inputs.ndim)):
      raise ValueError(f"LoRA needs the contracted axes last, got axis={self.axis} for input rank {inputs.ndim}")
    features = self.features if isinstance(self.features, tuple) else (self.features,)
    n_in, r = len(axis), self.lora.rank
    in_shape = inputs.shape[-n_in:]
    init_a = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=tuple(range(n_in)), out_axis=-1)
    a = self.param(
      "lora_a",
      partitioned(init_a, self.kernel_names[:n_in] + (LORA_RANK,)),
      in_shape + (r,),
      dtype_of(self.lora.param_dtype),
    )
    b = self.param(
      "lora_b",
      partitioned(nn.initializers.zeros_init(), (LORA_RANK,) + self.kernel_names[n_in:]),
      (r,) + features,
      dtype_of(self.lora.param_dtype),
    )
    x, a, b = promote_dtype(inputs, a, b, dtype=self.dtype)
    low = jnp.tensordot(x, a, axes=n_in)  # [..., r]
    return y + jnp.tensordot(low, b, axes=1) * jnp.asarray(self.lora.scale, y.dtype)


def dense(
  features,
  names,
  *,
  axis=-1,
  use_bias=False,
  dtype=jnp.float32,
  param_dtype=jnp.float32,
  name=None,
  bias_names=None,
  lora: LoRA | None = None,
  weights_major: bool = False,
) -> Dense:
  """`Dense` whose kernel (and bias) carry logical axis names for sharding; with `lora` targeting
  `name`, a `LoRADenseGeneral` with the same kernel and bias (so checkpoints load unchanged);
  `weights_major` as `Dense`'s."""
  features_t = features if isinstance(features, tuple) else (features,)
  bias_names = bias_names if bias_names is not None else names[-len(features_t) :]
  kw = dict(
    features=features,
    axis=axis,
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
    kernel_init=partitioned(nn.initializers.normal(0.02), names),
    bias_init=partitioned(nn.initializers.zeros_init(), bias_names),
    weights_major=weights_major,
  )
  lora = lora.on(name) if lora is not None and name is not None else None
  if lora is None:
    return Dense(**kw)
  return LoRADenseGeneral(**kw, lora=lora, kernel_names=tuple(names))


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

  With unrolled layers (`scan_layers(..., unroll=True)`) k and v are instead tuples of one [batch, kv_heads,
  max_len, head_dim] buffer per layer, so a layer reads its keys and values without slicing (copying) them out
  of the stack.
  """

  k: jax.Array | tuple[jax.Array, ...]
  v: jax.Array | tuple[jax.Array, ...]

  @classmethod
  def zeros(cls, num_layers, batch, max_len, kv_heads, head_dim, dtype=jnp.float32, per_layer=False) -> "KVCache":
    if per_layer:
      shape = (batch, kv_heads, max_len, head_dim)
      return cls(*(tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)) for _ in "kv"))
    shape = (num_layers, batch, kv_heads, max_len, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """Position ids from a (left-)padding mask [B, T]: 0 at each row's first real token, clipped to 0 on pads.

  With integer segment ids (packed sequences, see `attend`) instead of a bool mask: the index of each token
  within its segment (each segment a contiguous run of one id), 0 on padding."""
  if not jnp.issubdtype(mask.dtype, jnp.integer):
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
  t = jnp.arange(mask.shape[-1], dtype=jnp.int32)
  new = jnp.concatenate([jnp.ones_like(mask[..., :1], bool), mask[..., 1:] != mask[..., :-1]], axis=-1)
  start = jax.lax.cummax(jnp.where(new, t, 0), axis=mask.ndim - 1)
  return jnp.where(mask > 0, t - start, 0)


def attend(q, k, v, *, kv_mask, layer=None, cache: KVCache | None = None, cache_index=0, scale=None, causal=True):
  """Masked causal multi-head attention with grouped-query heads and an optional KV cache.

  Args:
    q: queries [B, T, H, D]; k, v: this step's keys/values [B, T, Hkv, D] (H a multiple of Hkv).
    kv_mask: [B, S] bool, which key slots are real tokens (S = T without a cache, else the cache length); or
      int segment ids of packed sequences, 0 on padding: a query then sees only the keys of its own
      segment (the query at slot s has the id kv_mask[:, s]).
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
  if cache is not None and isinstance(cache.k, tuple):  # one buffer per layer; `layer` is a Python int
    ck = jax.lax.dynamic_update_slice(cache.k[layer], k.astype(cache.k[layer].dtype), (0, 0, cache_index, 0))
    cv = jax.lax.dynamic_update_slice(cache.v[layer], v.astype(cache.v[layer].dtype), (0, 0, cache_index, 0))
    cache = KVCache(*(c[:layer] + (x,) + c[layer + 1 :] for c, x in ((cache.k, ck), (cache.v, cv))))
    k, v = ck.astype(q.dtype), cv.astype(q.dtype)
  elif cache is not None:
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
  if jnp.issubdtype(kv_mask.dtype, jnp.integer):
    q_segment = jax.lax.dynamic_slice_in_dim(kv_mask, cache_index, T, axis=1)
    mask = (q_segment[:, :, None] == kv_mask[:, None, :]) & (kv_mask[:, None, :] > 0)
  else:
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


class UnrolledLayers(nn.Module):
  """`num_layers` copies of `block` applied in a Python loop, with params "0", "1", ... (one subtree per layer).

  What `scan_layers(..., unroll=True)` builds: the same computation as the scan over stacked params, but each
  layer's weights are their own buffers. On CPU a scanned layer copies its slice of every stacked weight (and
  of the stacked KV cache) on each call, most of the weight traffic of a decode step; unrolled, it reads
  them in place. `unstack_layers` turns scanned params into these. The layer index in the carry is a Python
  int here, so a per-layer `KVCache` is indexed statically.
  """

  block: Any
  num_layers: int
  args: tuple = ()

  @nn.compact
  def __call__(self, carry, *broadcast):
    h, cache, _ = carry
    for i in range(self.num_layers):
      (h, cache, _), _ = self.block(*self.args, name=str(i))((h, cache, i), *broadcast)
    return (h, cache, self.num_layers), None


def unstack_layers(params, num_layers: int):
  """A decoder's params with the stacked "layers" subtree ([layers, ...] leaves) split into one subtree per
  layer ("0", "1", ...), as `UnrolledLayers` takes them; the other params are shared, not copied."""
  params = nn.meta.unbox(params)
  stacked = params["layers"]
  return {**params, "layers": {str(i): jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(num_layers)}}


def scan_layers(block: type[nn.Module], num_layers: int, num_broadcast: int, remat: bool = False, unroll=False):
  """Stack `num_layers` copies of `block` with `nn.scan` (one compiled body; params get a leading "layers" axis),
  or with `unroll` in a Python loop over per-layer params (`UnrolledLayers`).

  The block is called as block(carry, *broadcast_args) with carry = (hidden, cache, layer_index) and
  returns (carry, None); the cache rides in the carry so XLA updates it in place inside decode loops.
  Returns a constructor called with the block's own arguments (config, lora).
  """
  if remat:
    block = nn.remat(block, prevent_cse=False)
  if unroll:
    return lambda *args, **kw: UnrolledLayers(block, num_layers, args, **kw)
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
