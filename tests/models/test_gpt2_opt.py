"""GPT-2, OPT (and a Llama) parity with transformers on tiny random checkpoints saved as safetensors, and the
unrolled decoding layout against the scanned one."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from map_jax import sampling as G
from map_jax.align import lora
from map_jax.models import layers as L
from map_jax.models import loading
from map_jax.models.tokenizer import pack, pad_left, pad_right

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V = 113


def _gpt2():
  return transformers.GPT2LMHeadModel(
    transformers.GPT2Config(
      vocab_size=V,
      n_embd=48,
      n_layer=3,
      n_head=4,
      n_positions=96,
      initializer_range=0.3,
      bos_token_id=0,
      eos_token_id=0,
    )
  )


def _opt(**kw):
  return transformers.OPTForCausalLM(
    transformers.OPTConfig(
      vocab_size=V,
      hidden_size=48,
      num_hidden_layers=3,
      num_attention_heads=4,
      ffn_dim=80,
      max_position_embeddings=96,
      init_std=0.3,
      pad_token_id=1,
      bos_token_id=2,
      eos_token_id=2,
      **kw,
    )
  )


def _llama():
  return transformers.LlamaForCausalLM(
    transformers.LlamaConfig(
      vocab_size=V,
      hidden_size=48,
      intermediate_size=80,
      num_hidden_layers=3,
      num_attention_heads=4,
      num_key_value_heads=2,
      max_position_embeddings=96,
      initializer_range=0.3,
      pad_token_id=1,
      bos_token_id=2,
      eos_token_id=2,
    )
  )


MODELS = {
  "gpt2": _gpt2,
  "opt": lambda: _opt(word_embed_proj_dim=48),
  "opt_350m_style": lambda: _opt(word_embed_proj_dim=32, do_layer_norm_before=False),  # post-LN + projections
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def pair(request, tmp_path_factory):
  torch.manual_seed(0)
  hf = MODELS[request.param]().eval()
  d = tmp_path_factory.mktemp(request.param)
  hf.save_pretrained(d)
  return hf, loading.load_model(str(d), tokenizer=False)


def test_logits_match_transformers_on_a_left_padded_batch(pair):
  hf, (cfg, params, _) = pair
  rng = np.random.RandomState(0)
  seqs = [rng.randint(3, V, n).tolist() for n in (23, 9, 16)]
  tokens, mask = pad_left(seqs, 1)
  out = np.asarray(cfg.module().apply({"params": params}, jnp.asarray(tokens), kv_mask=jnp.asarray(mask)).logits)
  for row, s in enumerate(seqs):
    with torch.no_grad():
      ref = hf(torch.tensor([s])).logits[0].numpy()
    assert np.abs(ref).max() > 0.5
    np.testing.assert_allclose(out[row, -len(s) :], ref, atol=1e-4 * np.abs(ref).max())


def test_greedy_decoding_with_kv_cache_matches_transformers(pair):
  hf, (cfg, params, _) = pair
  rng = np.random.RandomState(1)
  seqs = [rng.randint(3, V, n).tolist() for n in (12, 5)]
  out = G.generate(
    cfg.module(), params, None, seqs, key=jax.random.key(0), max_new_tokens=10, temperature=0.0, eos_ids=()
  )
  for row, s in enumerate(seqs):
    with torch.no_grad():
      ref = hf.generate(
        torch.tensor([s]),
        attention_mask=torch.ones(1, len(s), dtype=torch.long),
        do_sample=False,
        max_new_tokens=10,
        min_new_tokens=10,
        pad_token_id=1,
      )
    assert out.tokens[row].tolist() == ref[0, len(s) :].tolist()
  # The returned log-probs are the model's own: compare with transformers on the full sequence.
  full = torch.tensor([seqs[0] + out.tokens[0].tolist()])
  with torch.no_grad():
    lp = torch.log_softmax(hf(full).logits[0], -1).numpy()
  n = len(seqs[0])
  np.testing.assert_allclose(out.logprobs[0], lp[np.arange(n - 1, n + 9), out.tokens[0]], atol=1e-4)


def test_unrolled_layers_compute_and_sample_what_the_scan_does(tmp_path):
  """`for_decoding`'s per-layer params and unrolled module (what `generate` uses on CPU, so the parity tests
  above run it for GPT-2 and OPT) against the scanned module on the stacked params, on a tiny Llama: the same
  logits, and the same tokens for the same key whether the params are split outside `sample` or inside it."""
  torch.manual_seed(0)
  _llama().save_pretrained(tmp_path)
  cfg, params, _ = loading.load_model(str(tmp_path), tokenizer=False)
  module = cfg.module()
  unrolled, split = G.for_decoding(module, params, unroll_layers=True)
  assert unrolled.unroll and sorted(split["layers"], key=int) == [str(i) for i in range(cfg.num_layers)]
  assert G.for_decoding(module, params, unroll_layers=False) == (module, params)
  rng = np.random.RandomState(2)
  tokens, mask = pad_left([rng.randint(3, V, n).tolist() for n in (14, 6, 9)], 1)
  scanned_logits = module.apply({"params": params}, jnp.asarray(tokens), kv_mask=jnp.asarray(mask)).logits
  unrolled_logits = unrolled.apply({"params": split}, jnp.asarray(tokens), kv_mask=jnp.asarray(mask)).logits
  np.testing.assert_allclose(unrolled_logits, scanned_logits, rtol=1e-5, atol=1e-5)
  kw = dict(max_new_tokens=9, top_k=6, num_return_sequences=2, eos_ids=(2,), pad_id=1)
  args = (jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(3), jnp.float32(1.0))
  outs = [
    G.sample(module, params, *args, unroll_layers=False, **kw),
    G.sample(module, params, *args, unroll_layers=True, **kw),  # split inside the call
    G.sample(unrolled, split, *args, **kw),
  ]
  for out in outs[1:]:
    np.testing.assert_array_equal(out.tokens, outs[0].tokens)
    np.testing.assert_array_equal(out.lengths, outs[0].lengths)
    np.testing.assert_allclose(out.logprobs, outs[0].logprobs, atol=1e-5)
  assert len(set(np.asarray(outs[0].tokens).ravel().tolist())) > 5  # sampled, not one repeated token


@pytest.mark.parametrize("name", ["gpt2", "opt_350m_style", "llama"])
def test_weights_major_layout_computes_what_the_kernels_do(name, tmp_path):
  """`for_decoding`'s weights-major projections (kernels copied to `kernel_t` [out, in]) give the logits of the
  kernels [in..., out...] at a decode step's shape (one position, rows in `FEW_ROWS`, the fast product) and at
  a prefill's, unrolled (and stacked), with LoRA adapters on: GPT-2 and OPT (tied heads, OPT's projections in and
  out), Llama (its own head)."""
  torch.manual_seed(0)
  (MODELS | {"llama": _llama})[name]().save_pretrained(tmp_path)
  cfg, base, _ = loading.load_model(str(tmp_path), tokenizer=False)
  module = cfg.module(lora=L.LoRA(rank=2))
  tokens = jnp.asarray(np.random.RandomState(0).randint(3, V, (8, 5)))
  adapters = lora.init_adapters(module, jax.random.key(0))
  keys = iter(jax.random.split(jax.random.key(1), 1000))
  adapters = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape), adapters)  # B != 0
  params = lora.combine(base, adapters)
  for unroll in (True, False) if name == "llama" else (True,):  # stacked layers: one family is enough
    plain = module.clone(unroll=unroll)
    p = L.unstack_layers(params, cfg.num_layers) if unroll else params
    major = plain.clone(weights_major=True)
    p_major = L.weights_major_params(major, p)
    leaves = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(p_major)}
    assert any(k.endswith("['kernel_t']") for k in leaves)
    assert not any("layers" in k and k.endswith("['kernel']") for k in leaves)
    for shape in [(8, 1), (3, 7)]:  # a decode step's rows (fast path), then many rows
      x = tokens[: shape[0], : shape[1]]
      want = plain.apply({"params": p}, x).logits
      got = major.apply({"params": p_major}, x).logits
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
  with pytest.raises(flax.errors.ScopeParamNotFoundError):  # the layouts do not mix silently
    major.apply({"params": p}, tokens[:2, :1])


@pytest.mark.parametrize("rows", [1, 2, 16, 64, 65, 200])
def test_weights_major_product_is_the_matmul(rows):
  """x @ w^T against float64 NumPy at rows on either side of `FEW_ROWS`; a bad rank is named."""
  rng = np.random.RandomState(rows)
  x, w = rng.randn(rows, 96).astype(np.float32), rng.randn(40, 96).astype(np.float32)
  got = L.weights_major_product(jnp.asarray(x), jnp.asarray(w))
  np.testing.assert_allclose(got, x.astype(np.float64) @ w.astype(np.float64).T, rtol=1e-5, atol=1e-4)
  with pytest.raises(AssertionError, match="rank"):
    L.weights_major_product(jnp.asarray(x[None]), jnp.asarray(w))


@pytest.mark.parametrize("name", ["gpt2", "opt_350m_style", "llama"])
def test_packed_sequences_score_as_if_alone(name, tmp_path):
  """`packed_logprobs` on rows packed several to a sequence (segment ids: attention within a row, positions
  restarting) gives each token the log-prob `token_logprobs` gives it on the row alone; positions from
  segment ids against a NumPy count; a `max_scored` bound that holds changes nothing."""
  torch.manual_seed(0)
  (MODELS | {"llama": _llama})[name]().save_pretrained(tmp_path)
  cfg, params, _ = loading.load_model(str(tmp_path), tokenizer=False)
  module = cfg.module()
  rng = np.random.RandomState(1)
  prompts = [rng.randint(3, V, n).tolist() for n in (5, 1, 9, 3, 12, 2)]
  conts = [rng.randint(3, V, n).tolist() for n in (4, 7, 1, 10, 6, 3)]
  rows = [p + c for p, c in zip(prompts, conts)]
  packed = pack(rows, 32, pad=1)
  assert len(packed.tokens) < len(rows)
  segments = packed.segments
  want_pos = np.zeros_like(segments)
  for r, seg in enumerate(segments):
    for t in range(1, seg.size):
      want_pos[r, t] = want_pos[r, t - 1] + 1 if seg[t] and seg[t] == seg[t - 1] else 0
  np.testing.assert_array_equal(L.positions_from_mask(jnp.asarray(segments)), want_pos)
  scored = np.zeros(packed.tokens.size, bool)
  for i, (p, c) in zip(packed.index, zip(prompts, conts)):
    scored[i + len(p) : i + len(p) + len(c)] = True
  scored = scored.reshape(packed.tokens.shape)
  args = (jnp.asarray(packed.tokens), jnp.asarray(segments), jnp.asarray(scored))
  got = np.asarray(G.packed_logprobs(module, params, *args))
  bounded = np.asarray(G.packed_logprobs(module, params, *args, max_scored=int(scored.sum()), chunk=8))
  np.testing.assert_allclose(bounded, got, rtol=1e-6, atol=1e-6)
  pt, pm = pad_left(prompts, 1)
  ct, cm = pad_right(conts, 1)
  _, want = G.token_logprobs(module, params, jnp.asarray(pt), jnp.asarray(pm), jnp.asarray(ct), jnp.asarray(cm))
  for j, (i, p, c) in enumerate(zip(packed.index, prompts, conts)):
    np.testing.assert_allclose(got.reshape(-1)[i + len(p) : i + len(p) + len(c)], want[j, : len(c)], atol=2e-5)
  assert (got[~scored] == 0).all()
  # `score` packs the same rows (here one sequence per pass: several passes, a row bucket) and an empty
  # continuation, which scores 0.
  sc = G.score(module, params, None, prompts + [[5, 6]], conts + [[]], pack_length=32, batch_size=1)
  np.testing.assert_allclose(sc.total[:-1], np.asarray(want).sum(-1), atol=1e-4)
  assert sc.total[-1] == 0 and not sc.mask[-1].any() and sc.mask.sum() == sum(map(len, conts))
