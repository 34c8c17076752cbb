"""Llama parity with transformers: the real SmolLM2 GGUF, and tiny random variants (GQA, tying, RoPE scaling)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from map_jax.models import layers, loading
from map_jax.models.tokenizer import pad_left

torch = pytest.importorskip("torch")

PROMPTS = [
  "The capital of France is",
  "def fibonacci(n):\n    ",
  "<|im_start|>user\nWhat is the boiling point of water at sea level?<|im_end|>\n<|im_start|>assistant\n",
]


def _hf_logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor([ids], dtype=torch.long)).logits[0].numpy()


def test_smollm2_gguf_logits_match_transformers(smollm2, hf_smollm2):
  """One left-padded batch of mixed-length prompts vs transformers on each prompt alone."""
  cfg, params, tok = smollm2
  ids = [tok(p)["input_ids"] for p in PROMPTS]
  tokens, mask = pad_left(ids, tok.pad_token_id)
  out = cfg.module().apply({"params": params}, jnp.asarray(tokens), kv_mask=jnp.asarray(mask))
  logits = np.asarray(out.logits)
  for row, seq in enumerate(ids):
    ref = _hf_logits(hf_smollm2, seq)
    got = logits[row, -len(seq) :]
    scale = np.abs(ref).max()
    assert scale > 5.0  # real logits, not a degenerate model
    np.testing.assert_array_less(np.abs(got - ref).max(), 1e-4 * scale)
    np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))


def test_kv_cache_prefill_then_steps_matches_full_forward(smollm2):
  """Prefill half a padded batch into the cache, feed the rest one token at a time: same logits as one pass."""
  cfg, params, tok = smollm2
  module = cfg.module()
  ids = [tok(p)["input_ids"] for p in PROMPTS[:2]]
  tokens, mask = pad_left(ids, tok.pad_token_id)
  full = np.asarray(module.apply({"params": params}, tokens, kv_mask=mask).logits)
  T, split = tokens.shape[1], tokens.shape[1] - 4
  cache = layers.KVCache.zeros(cfg.num_layers, 2, T, cfg.num_kv_heads, cfg.head_dim)
  kv_mask = np.zeros((2, T), bool)
  kv_mask[:, :split] = mask[:, :split]
  pos = np.asarray(layers.positions_from_mask(mask))
  step = jax.jit(lambda p, t, q, m, c, i: module.apply({"params": p}, t, q, m, c, i))
  out = step(params, tokens[:, :split], pos[:, :split], kv_mask, cache, 0)
  got = [np.asarray(out.logits)]
  for i in range(split, T):
    kv_mask[:, i] = mask[:, i]
    out = step(params, tokens[:, i : i + 1], pos[:, i : i + 1], kv_mask, out.cache, i)
    got.append(np.asarray(out.logits))
  got = np.concatenate(got, axis=1)
  np.testing.assert_allclose(got[mask], full[mask], atol=2e-4 * np.abs(full).max())


VARIANTS = {
  "gqa_untied": dict(num_key_value_heads=2, tie_word_embeddings=False),
  "mha_tied_bias": dict(num_key_value_heads=4, tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
  "rope_linear": dict(
    num_key_value_heads=2, rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 500.0}
  ),
  "rope_llama3": dict(
    num_key_value_heads=1,
    rope_parameters={
      "rope_type": "llama3",
      "factor": 8.0,
      "low_freq_factor": 1.0,
      "high_freq_factor": 4.0,
      "original_max_position_embeddings": 16,
      "rope_theta": 10000.0,
    },
  ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tiny_llama_variants_match_transformers(variant, tmp_path):
  from transformers import LlamaConfig, LlamaForCausalLM

  torch.manual_seed(0)
  hf_cfg = LlamaConfig(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    head_dim=16,
    max_position_embeddings=128,
    initializer_range=0.2,
    **VARIANTS[variant],
  )
  model = LlamaForCausalLM(hf_cfg).eval()
  model.save_pretrained(tmp_path)
  cfg, params, _ = loading.load_model(str(tmp_path), tokenizer=False)
  assert (cfg.num_kv_heads, cfg.tie_word_embeddings) == (hf_cfg.num_key_value_heads, hf_cfg.tie_word_embeddings)
  ids = np.random.RandomState(1).randint(0, 97, (2, 40))
  out = cfg.module().apply({"params": params}, jnp.asarray(ids, jnp.int32))
  with torch.no_grad():
    ref = model(torch.tensor(ids)).logits.numpy()
  assert np.abs(ref).max() > 1.0
  np.testing.assert_allclose(np.asarray(out.logits), ref, atol=1e-4 * np.abs(ref).max())


def test_params_carry_logical_axes(smollm2):
  """Every param is boxed with one logical name per dimension, layers stacked on a leading "layers" axis."""
  import flax.linen as nn

  _, params, _ = smollm2
  boxes = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert boxes and all(isinstance(b, nn.LogicallyPartitioned) and len(b.names) == b.value.ndim for b in boxes)
  specs = nn.get_partition_spec(params)
  assert tuple(specs["layers"]["q_proj"]["kernel"]) == ("layers", "embed", "heads", "head_dim")
  assert tuple(specs["embed_tokens"]["embedding"]) == ("vocab", "embed")
  assert params["layers"]["q_proj"]["kernel"].value.shape == (30, 576, 9, 64)


def test_token_logprob_gradients_match_torch_autograd_with_remat(tmp_path):
  """d/dparams of sum log p(continuation | prompt), with rematerialised layers, equals PyTorch's autograd."""
  import flax.linen as nn
  from transformers import LlamaConfig, LlamaForCausalLM

  from map_jax.sampling import token_logprobs

  torch.manual_seed(0)
  model = LlamaForCausalLM(
    LlamaConfig(
      vocab_size=61,
      hidden_size=32,
      intermediate_size=48,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      initializer_range=0.2,
      tie_word_embeddings=False,
    )
  ).eval()
  model.save_pretrained(tmp_path)
  cfg, params, _ = loading.load_model(str(tmp_path), tokenizer=False, remat=True)
  prompt, cont = [3, 17, 5, 40], [8, 9, 33]
  pt, pm = pad_left([prompt], 0, length=6)
  ct, cm = np.array([cont], np.int32), np.ones((1, 3), bool)
  loss = lambda p: token_logprobs(cfg.module(), p, pt, pm, ct, cm)[0].sum()  # noqa: E731
  grads = nn.meta.unbox(jax.grad(loss)(nn.meta.unbox(params)))

  ids = torch.tensor([prompt + cont])
  lp = torch.log_softmax(model(ids).logits[0], -1)
  total = lp[torch.arange(3, 6), torch.tensor(cont)].sum()
  total.backward()
  np.testing.assert_allclose(float(loss(params)), total.item(), rtol=1e-5)
  g_q = model.model.layers[1].self_attn.q_proj.weight.grad.numpy().T.reshape(32, 4, 8)
  np.testing.assert_allclose(grads["layers"]["q_proj"]["kernel"][1], g_q, atol=1e-5 * np.abs(g_q).max() + 1e-7)
  g_emb = model.model.embed_tokens.weight.grad.numpy()
  np.testing.assert_allclose(grads["embed_tokens"]["embedding"], g_emb, atol=1e-5 * np.abs(g_emb).max())
  g_head = model.lm_head.weight.grad.numpy().T
  np.testing.assert_allclose(grads["lm_head"]["kernel"], g_head, atol=1e-5 * np.abs(g_head).max())
