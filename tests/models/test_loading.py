"""Checkpoint loading: bad inputs fail naming the file and problem; sharded safetensors; orbax round trip."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from map_jax.models import loading
from map_jax.models.loading import CheckpointError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _tiny_llama():
  torch.manual_seed(0)
  return transformers.LlamaForCausalLM(
    transformers.LlamaConfig(
      vocab_size=64,
      hidden_size=32,
      intermediate_size=48,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      max_position_embeddings=64,
      initializer_range=0.2,
    )
  ).eval()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tiny_llama")
  _tiny_llama().save_pretrained(d)
  return str(d)


def _copy(src, dst):
  import shutil

  shutil.copytree(src, dst)
  return str(dst)


def test_missing_path_and_missing_config(tmp_path):
  with pytest.raises(CheckpointError, match="no such file, directory or built-in model"):
    loading.load_model(str(tmp_path / "nope"))
  with pytest.raises(CheckpointError, match=r"config.json: missing"):
    loading.load_model(str(tmp_path))


def test_unknown_hub_id_fails_clearly():
  """Offline (DNS failure) or online (404), an unknown repo id is a CheckpointError naming it."""
  with pytest.raises(CheckpointError, match=r"map-jax-test/does-not-exist: could not download"):
    loading.load_model("map-jax-test/does-not-exist")


def test_corrupt_config_and_unsupported_architecture(tiny_dir, tmp_path):
  d = _copy(tiny_dir, tmp_path / "m")
  cfg_path = os.path.join(d, "config.json")
  hf = json.load(open(cfg_path))
  open(cfg_path, "w").write("{not json")
  with pytest.raises(CheckpointError, match=r"config.json: corrupt config.json"):
    loading.load_model(d, tokenizer=False)
  json.dump(dict(hf, model_type="t5"), open(cfg_path, "w"))
  with pytest.raises(CheckpointError, match=r"config.json: unsupported architecture model_type='t5'"):
    loading.load_model(d, tokenizer=False)


def test_corrupt_or_incomplete_safetensors(tiny_dir, tmp_path):
  from safetensors.numpy import load_file, save_file

  d = _copy(tiny_dir, tmp_path / "m")
  st = os.path.join(d, "model.safetensors")
  tensors = load_file(st)
  tensors.pop("model.layers.1.mlp.up_proj.weight")
  save_file(tensors, st)
  with pytest.raises(CheckpointError, match=r"tensor 'model.layers.1.mlp.up_proj.weight' missing"):
    loading.load_model(d, tokenizer=False)
  open(st, "wb").write(b"\x00garbage" * 10)
  with pytest.raises(CheckpointError, match=r"model.safetensors: corrupt safetensors file"):
    loading.load_model(d, tokenizer=False)
  os.remove(st)
  open(os.path.join(d, "pytorch_model.bin"), "wb").write(b"x")
  with pytest.raises(CheckpointError, match=r"only safetensors are supported"):
    loading.load_model(d, tokenizer=False)


def test_non_finite_weights_are_named(tiny_dir, tmp_path):
  """A file that parses but holds NaN/inf weights fails at load, naming the file and the tensor."""
  from safetensors.numpy import load_file, save_file

  d = _copy(tiny_dir, tmp_path / "m")
  st = os.path.join(d, "model.safetensors")
  tensors = load_file(st)
  tensors["model.layers.0.self_attn.v_proj.weight"][3, 5] = np.nan
  tensors["model.layers.0.self_attn.v_proj.weight"][0, 0] = np.inf
  save_file(tensors, st)
  with pytest.raises(
    CheckpointError,
    match=r"model.safetensors: tensor 'model.layers.0.self_attn.v_proj.weight' "
    r"has 2 non-finite weight\(s\)",
  ):
    loading.load_model(d, tokenizer=False)
  import gguf  # a complete one-block GGUF whose attn_v weights are damaged

  nan_gguf = tmp_path / "nan.gguf"
  w = gguf.GGUFWriter(str(nan_gguf), "llama")
  for add, v in [
    (w.add_block_count, 1),
    (w.add_embedding_length, 32),
    (w.add_feed_forward_length, 32),
    (w.add_head_count, 2),
    (w.add_context_length, 64),
    (w.add_vocab_size, 32),
  ]:
    add(v)
  names = ["token_embd.weight", "output_norm.weight"] + [f"blk.0.{n}" for n in loading.GGUF_NAMES.values()]
  for name in names:
    shape = (32,) if name.endswith("norm.weight") else (32, 32)
    t = np.full(shape, 0.01, np.float32)
    if name == "blk.0.attn_v.weight":
      t[1, 2] = np.nan
    w.add_tensor(name, t)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(CheckpointError, match=r"nan.gguf: tensor 'blk.0.attn_v.weight' has 1 non-finite weight"):
    loading.load_model(str(nan_gguf), tokenizer=False)


def test_config_that_disagrees_with_weights(tiny_dir, tmp_path):
  d = _copy(tiny_dir, tmp_path / "m")
  cfg_path = os.path.join(d, "config.json")
  json.dump(dict(json.load(open(cfg_path)), intermediate_size=40), open(cfg_path, "w"))
  shape_error = r"m: param \['layers'\]\['\w+_proj'\]\['kernel'\] has shape \(2, \d+, \d+\), expected"
  with pytest.raises(CheckpointError, match=shape_error):
    loading.load_model(d, tokenizer=False)


def test_sharded_safetensors_load_like_a_single_file(tiny_dir, tmp_path):
  _tiny_llama().save_pretrained(tmp_path, max_shard_size="20KB")
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 1
  sharded = loading.load_model(str(tmp_path), tokenizer=False).params
  single = loading.load_model(tiny_dir, tokenizer=False).params
  jax.tree.map(np.testing.assert_array_equal, nn.meta.unbox(sharded), nn.meta.unbox(single))


def test_orbax_round_trip_keeps_values_and_logical_axes(tiny_dir, tmp_path):
  cfg, params, _ = loading.load_model(tiny_dir, tokenizer=False)
  loading.save_params(str(tmp_path / "ckpt"), params)
  restored = loading.restore_params(str(tmp_path / "ckpt"), cfg)
  jax.tree.map(np.testing.assert_array_equal, nn.meta.unbox(restored), nn.meta.unbox(params))
  assert nn.get_partition_spec(restored) == nn.get_partition_spec(params)
  with pytest.raises(CheckpointError, match="no such orbax checkpoint"):
    loading.restore_params(str(tmp_path / "missing"), cfg)


def test_bfloat16_params_and_compute(tiny_dir):
  cfg32, p32, _ = loading.load_model(tiny_dir, tokenizer=False)
  cfg16, p16, _ = loading.load_model(tiny_dir, dtype="bfloat16", tokenizer=False)
  assert {x.dtype for x in jax.tree.leaves(nn.meta.unbox(p16))} == {jnp.dtype(jnp.bfloat16)}
  ids = jnp.asarray(np.random.RandomState(0).randint(0, 64, (2, 12)), jnp.int32)
  a = cfg32.module().apply({"params": p32}, ids).logits
  b = cfg16.module().apply({"params": p16}, ids).logits
  assert b.dtype == jnp.float32 and a.shape == b.shape
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=0.05 * float(jnp.abs(a).max()))
  from map_jax.sampling import generate  # the bf16 KV cache and sampler path

  out = generate(
    cfg16.module(), p16, None, [[1, 2, 3], [4]], key=jax.random.key(0), max_new_tokens=4, top_k=8, eos_ids=()
  )
  assert out.tokens.shape == (2, 4) and np.isfinite(out.logprobs).all() and (out.logprobs < 0).all()


def _write_gguf(path, arch="llama", qtype=None):
  import gguf

  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(1)
  w.add_embedding_length(32)
  w.add_feed_forward_length(32)
  w.add_head_count(2)
  w.add_context_length(64)
  w.add_vocab_size(32)
  for name, shape in [("token_embd.weight", (32, 32)), ("output_norm.weight", (32,))]:
    if qtype is not None and len(shape) == 2:
      nbytes = gguf.GGML_QUANT_SIZES[qtype][1] * shape[1] // gguf.GGML_QUANT_SIZES[qtype][0]
      w.add_tensor(name, np.zeros((shape[0], nbytes), np.uint8), raw_dtype=qtype)
    else:
      w.add_tensor(name, np.ones(shape, np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def test_gguf_errors_name_the_file_and_problem(tmp_path):
  import gguf

  bad = tmp_path / "corrupt.gguf"
  bad.write_bytes(b"GGUF" + b"\xff" * 64)
  with pytest.raises(CheckpointError, match=r"corrupt.gguf: corrupt or unreadable GGUF"):
    loading.load_model(str(bad), tokenizer=False)
  other = tmp_path / "falcon.gguf"
  _write_gguf(other, arch="falcon")
  with pytest.raises(CheckpointError, match=r"falcon.gguf: unsupported GGUF architecture 'falcon'"):
    loading.load_model(str(other), tokenizer=False)
  quant = tmp_path / "q81.gguf"
  _write_gguf(quant, qtype=gguf.GGMLQuantizationType.Q8_1)
  with pytest.raises(CheckpointError, match=r"q81.gguf: unsupported GGUF quantisation Q8_1"):
    loading.load_model(str(quant), tokenizer=False)
  incomplete = tmp_path / "incomplete.gguf"
  _write_gguf(incomplete)
  with pytest.raises(CheckpointError, match=r"incomplete.gguf: tensor 'blk.0.\w+.weight' missing"):
    loading.load_model(str(incomplete), tokenizer=False)


def test_logical_axes_map_to_mesh_shardings_and_sharded_params_run(tiny_dir):
  """The boxes' logical names turn into NamedShardings over a mesh; sampling runs on the sharded params."""
  from map_jax.sampling import sample

  cfg, params, _ = loading.load_model(tiny_dir, tokenizer=False)
  # Auto axes: XLA propagates shardings through the model (Explicit axes would need out_sharding on gathers).
  mesh = jax.make_mesh((1, 1), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  rules = (
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("head_dim", None),
    ("norm", None),
  )
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(params), mesh, rules)
  assert shardings["layers"]["q_proj"]["kernel"].spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  sharded = jax.device_put(nn.meta.unbox(params), shardings)
  tokens, mask = np.ones((2, 8), np.int32), np.ones((2, 8), bool)
  a = sample(cfg.module(), sharded, tokens, mask, jax.random.key(0), 0.0, max_new_tokens=3)
  b = sample(cfg.module(), params, tokens, mask, jax.random.key(0), 0.0, max_new_tokens=3)
  np.testing.assert_array_equal(a.tokens, b.tokens)
