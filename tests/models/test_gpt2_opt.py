"""GPT-2 and OPT parity with transformers on tiny random checkpoints saved as safetensors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from map_jax import sampling as G
from map_jax.models import loading
from map_jax.models.tokenizer import pad_left

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
