"""Sampling and scoring on the real SmolLM2: greedy tokens and log-probs agree with transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from map_jax import sampling as G
from map_jax.models.loading import load_model
from map_jax.models.tokenizer import chat_prompt

torch = pytest.importorskip("torch")

QUESTIONS = ["What is 2+2?", "Name three colours of the rainbow and explain why the sky is blue.", "Hi!"]


@pytest.fixture(scope="module")
def chats(smollm2):
  return [chat_prompt(smollm2.tokenizer, q) for q in QUESTIONS]


def test_greedy_generation_matches_transformers(smollm2, hf_smollm2, chats):
  cfg, params, tok = smollm2
  prompts = chats[:2]  # mixed lengths; the first ends with EOS after 12 tokens, the second runs to the budget
  out = G.generate(cfg.module(), params, tok, prompts, key=jax.random.key(0), max_new_tokens=16, temperature=0.0)
  assert out.lengths[0] < 16 and out.lengths[1] == 16
  for row, prompt in enumerate(prompts):
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
      ref = hf_smollm2.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=16,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
      )
    ref = ref[0, ids.shape[1] :].tolist()
    n = out.lengths[row]
    assert out.tokens[row, :n].tolist() == ref
    assert out.text[row] == tok.decode(ref, skip_special_tokens=True)
    assert (out.tokens[row, n:] == tok.pad_token_id).all()


def test_sampled_logprobs_match_score_and_transformers(smollm2, hf_smollm2, chats):
  """generate's per-token log-probs == score() on the same ids == transformers' log-softmax on the full text."""
  cfg, params, tok = smollm2
  module = cfg.module()
  out = G.generate(
    module, params, tok, chats[:2], key=jax.random.key(3), max_new_tokens=12, top_k=50, num_return_sequences=2
  )
  assert out.tokens.shape == (4, 12) and out.prompt_index.tolist() == [0, 0, 1, 1]
  prompt_ids = [tok(chats[i])["input_ids"] for i in out.prompt_index]
  conts = [out.tokens[r, :n].tolist() for r, n in enumerate(out.lengths)]
  sc = G.score(module, params, tok, prompt_ids, conts)
  np.testing.assert_allclose(sc.total, out.logprobs.sum(-1), rtol=1e-4, atol=1e-3)
  for r in range(4):
    n = out.lengths[r]
    seq = torch.tensor([prompt_ids[r] + conts[r]])
    with torch.no_grad():
      lp = torch.log_softmax(hf_smollm2(seq).logits[0], -1).numpy()
    ref = lp[np.arange(len(prompt_ids[r]) - 1, seq.shape[1] - 1), conts[r]]
    np.testing.assert_allclose(out.logprobs[r, :n], ref, atol=2e-3)
    np.testing.assert_allclose(sc.per_token[r, :n], ref, atol=2e-3)
    assert (out.logprobs[r, n:] == 0).all()


def test_sampling_is_deterministic_given_key_and_eos_ends_rows(smollm2, chats):
  cfg, params, tok = smollm2
  kw = dict(max_new_tokens=12, top_k=50, num_return_sequences=2)
  a = G.generate(cfg.module(), params, tok, chats[:2], key=jax.random.key(3), **kw)
  b = G.generate(cfg.module(), params, tok, chats[:2], key=jax.random.key(3), **kw)
  c = G.generate(cfg.module(), params, tok, chats[:2], key=jax.random.key(4), **kw)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert (a.tokens != c.tokens).any()
  assert a.text == b.text
  for row, n in zip(a.tokens, a.lengths):
    finished = n < kw["max_new_tokens"]
    assert (row[n - 1] == tok.eos_token_id) == finished or n == kw["max_new_tokens"]
    assert tok.eos_token_id not in row[: n - 1].tolist()


def test_one_compile_per_length_bucket(tiny_smollm_dir):
  cfg, params, tok = load_model(tiny_smollm_dir)  # SmolLM2's tokenizer; compiles as SmolLM2's do, in seconds
  module = cfg.module()
  run = lambda prompts: G.generate(
    module,
    params,
    tok,
    prompts,
    key=jax.random.key(0),  # noqa: E731
    max_new_tokens=3,
    top_k=5,
  )
  run(["one two three", "a"])
  before = G.sample._cache_size()
  run(["four five six seven eight nine", "b c"])  # same batch size and length bucket (16)
  assert G.sample._cache_size() == before
  run(["word " * 20, "c"])  # next length bucket (24): one more compile
  assert G.sample._cache_size() == before + 1
  out = run(["x", "y", "z", "w", "v"])  # batch 5 is padded to the batch bucket 6 and sliced back
  assert out.tokens.shape == (5, 3) and len(out.text) == 5 and G.sample._cache_size() == before + 2
  run(["x", "y", "z", "w", "v", "u"])
  assert G.sample._cache_size() == before + 2


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 3, None), (1.0, None, 0.8), (1.5, 4, 0.9)])
def test_choose_samples_the_truncated_tempered_distribution(temperature, top_k, top_p):
  """Empirical frequencies over 40k draws match the distribution written out by hand in numpy."""
  logits = np.array([2.0, 1.5, 1.0, 0.2, -0.5, -3.0], np.float32)
  R = 40000
  tok, model_lp, sample_lp = jax.jit(G._choose, static_argnums=(3, 4))(
    jnp.tile(logits, (R, 1)), jax.random.key(7), jnp.float32(temperature), top_k, top_p
  )
  order = np.argsort(-logits)
  keep = np.zeros(6, bool)
  keep[order[: top_k or 6]] = True
  p = np.where(keep, np.exp(logits / temperature), 0)
  p /= p.sum()
  if top_p is not None:
    ps = p[order]
    kept = (np.cumsum(ps) - ps) < top_p
    p = np.zeros(6)
    p[order[kept]] = ps[kept]
    p /= p.sum()
  freq = np.bincount(np.asarray(tok), minlength=6) / R
  np.testing.assert_allclose(freq, p, atol=0.01)
  full = logits - np.log(np.exp(logits).sum())
  np.testing.assert_allclose(np.asarray(model_lp), full[np.asarray(tok)], atol=1e-5)
  np.testing.assert_allclose(np.asarray(sample_lp), np.log(p[np.asarray(tok)]), atol=1e-5)


def test_prompt_longer_than_context_is_rejected(smollm2):
  cfg, params, tok = smollm2
  with pytest.raises(ValueError, match="context of 8192"):
    G.generate(cfg.module(), params, tok, [[1] * 8190], key=jax.random.key(0), max_new_tokens=8)
  with pytest.raises(ValueError, match="row 1: prompt \\+ continuation of 8400 tokens, longer than the model's"):
    G.score(cfg.module(), params, tok, [[1] * 10, [1] * 8000], [[2] * 400, [2] * 400])


def test_token_logprob_is_the_log_softmax_at_the_token():
  """sampling.token_logprob against SciPy's float64 log_softmax: logits far from 0, -inf entries (top-p's masked
  tokens), float64 kept, bfloat16 widened to float32; its gradient is the token's indicator minus the softmax."""
  from scipy import special

  rng = np.random.default_rng(0)
  logits = 30 * rng.standard_normal((3, 4, 2_000))
  logits[1] += 1e4
  tokens = rng.integers(0, 2_000, (3, 4))
  logits[0, :, :500] = -np.inf
  tokens[0] = 600 + np.arange(4)
  expected = np.take_along_axis(special.log_softmax(logits, axis=-1), tokens[..., None], axis=-1)[..., 0]
  with jax.enable_x64(True):
    got64 = G.token_logprob(jnp.asarray(logits), jnp.asarray(tokens))
    assert got64.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got64), expected, rtol=1e-12, atol=1e-9)
    finite = jnp.asarray(logits[2])
    grad = jax.grad(lambda x: G.token_logprob(x, jnp.asarray(tokens[2])).sum())(finite)
    softmax = special.softmax(logits[2], axis=-1)
    np.testing.assert_allclose(np.asarray(grad), np.eye(2_000)[tokens[2]] - softmax, rtol=1e-9, atol=1e-12)
  got32 = G.token_logprob(jnp.asarray(logits, jnp.float32), jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(got32), expected, rtol=1e-5, atol=1e-3)
  assert G.token_logprob(jnp.asarray(logits[1:], jnp.bfloat16), jnp.asarray(tokens[1:])).dtype == jnp.float32
