"""MAP-D selection against a NumPy softmax reference, and one real decode step with SmolLM2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from map_jax.align import decode as dec


def softmax_ref(R, lam):
  """Independent reference: the resampling probabilities in float64 NumPy."""
  z = R @ lam
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


@pytest.fixture
def rewards():
  rng = np.random.default_rng(0)
  return rng.normal(size=(3, 5, 2)).astype(np.float32), np.array([0.8, 1.5], np.float32)


def test_shapes_and_chosen_rewards(rewards):
  R, lam = rewards
  sel = dec.select(jax.random.key(0), R, lam)
  assert sel.index.shape == (3,) and sel.index.dtype == jnp.int32
  assert sel.rewards.shape == (3, 2) and sel.probs.shape == (3, 5)
  np.testing.assert_array_equal(sel.rewards, R[np.arange(3), np.asarray(sel.index)])
  np.testing.assert_allclose(sel.probs, softmax_ref(R.astype(np.float64), lam), rtol=1e-5)


def test_frequencies_match_softmax(rewards):
  """Over 20,000 keys each prompt's choice counts fit softmax(λᵀr) (chi-square, every prompt)."""
  R, lam = rewards
  n = 20_000
  idx = np.asarray(jax.vmap(lambda k: dec.select(k, R, lam).index)(jax.random.split(jax.random.key(1), n)))
  p = softmax_ref(R.astype(np.float64), lam)
  for row in range(R.shape[0]):
    counts = np.bincount(idx[:, row], minlength=R.shape[1])
    assert stats.chisquare(counts, n * p[row]).pvalue > 1e-3, (counts, n * p[row])
  # Prompts in one batch draw independently: rows with equal rewards are not chosen in lockstep.
  same = dec.select(jax.random.key(2), np.repeat(R[:1], 2000, 0), lam).index
  counts = np.bincount(np.asarray(same), minlength=R.shape[1])
  assert stats.chisquare(counts, 2000 * p[0]).pvalue > 1e-3


def test_zero_lambda_is_uniform(rewards):
  R, _ = rewards
  lam = np.zeros(2, np.float32)
  n = 10_000
  idx = np.asarray(jax.vmap(lambda k: dec.select(k, R, lam).index)(jax.random.split(jax.random.key(3), n)))
  np.testing.assert_allclose(dec.select(jax.random.key(0), R, lam).probs, 0.2, rtol=1e-6)
  for row in range(R.shape[0]):
    assert stats.chisquare(np.bincount(idx[:, row], minlength=5)).pvalue > 1e-3


def test_argmax_mode_is_best_of_k_and_ignores_the_key(rewards):
  R, lam = rewards
  want = np.argmax(R.astype(np.float64) @ lam, -1)
  for seed in range(3):
    np.testing.assert_array_equal(dec.select(jax.random.key(seed), R, lam, mode="argmax").index, want)
  with pytest.raises(ValueError, match="mode"):
    dec.select(jax.random.key(0), R, lam, mode="greedy")
  with pytest.raises(ValueError, match="mode"):  # checked before any model is touched
    dec.decode(None, ["hi"], [len], [1.0], key=jax.random.key(0), num_candidates=2, mode="greedy")


def test_deterministic_given_key_and_vmaps_over_palettes(rewards):
  R, lam = rewards
  a, b = (dec.select(jax.random.key(7), R, lam).index for _ in range(2))
  np.testing.assert_array_equal(dec.select(jax.random.key(7), R.tolist(), lam.tolist()).index, a)
  np.testing.assert_array_equal(a, b)
  lams = jnp.stack([lam, 0 * lam, 10 * lam])
  sel = jax.vmap(lambda l: dec.select(jax.random.key(7), R, l))(lams)
  assert sel.index.shape == (3, 3) and sel.probs.shape == (3, 3, 5)
  np.testing.assert_array_equal(sel.index[0], a)
  # A large λ concentrates the mass on the best candidate.
  np.testing.assert_array_equal(sel.index[2], np.argmax(R @ lam, -1))


def test_shape_mismatch_is_rejected(rewards):
  R, lam = rewards
  with pytest.raises(AssertionError):
    dec.select(jax.random.key(0), R, lam[:1])
  with pytest.raises(AssertionError):
    dec.select(jax.random.key(0), R[0], lam)


def test_score_candidates_layout_and_non_finite_rewards():
  prompts = ["a", "bb"]
  cands = [["x", "yy"], ["zzz", ""]]
  length = lambda ps, ys: np.array([len(p) * 10 + len(y) for p, y in zip(ps, ys)])  # noqa: E731
  R, names = dec.score_candidates(prompts, cands, [length])
  np.testing.assert_array_equal(R[..., 0], [[11, 12], [23, 20]])
  assert names == ["value_0"]
  bad = lambda ps, ys: np.array([np.nan if y == "" else 0.0 for y in ys])  # noqa: E731
  with pytest.raises(ValueError, match="prompt 1, candidate 1"):
    dec.score_candidates(prompts, cands, [bad])


def test_decode_with_smollm2():
  """The whole step on the real model: 2 prompts, k = 2, 8 tokens, diversity and positiveness."""
  import map_jax

  model = map_jax.load_model("smollm2-135m-instruct")
  prompts = ["Tell me about your weekend.", "What is your favorite food?"]
  kw = dict(key=jax.random.key(0), num_candidates=2, max_new_tokens=8, top_k=50)
  out = dec.decode(model, prompts, ["diversity", "positiveness"], [1.0, 2.0], **kw)
  assert out.value_names == ["diversity", "positiveness"]
  assert len(out.text) == 2 and [len(c) for c in out.candidates] == [2, 2]
  assert out.candidate_rewards.shape == (2, 2, 2) and out.rewards.shape == (2, 2)
  for p in range(2):
    assert out.text[p] == out.candidates[p][out.index[p]]
    np.testing.assert_array_equal(out.rewards[p], out.candidate_rewards[p, out.index[p]])
  np.testing.assert_allclose(out.probs, softmax_ref(out.candidate_rewards, np.array([1.0, 2.0])), rtol=1e-4)
  again = dec.decode(model, prompts, ["diversity", "positiveness"], [1.0, 2.0], **kw)
  assert again.candidates == out.candidates and list(again.index) == list(out.index)
  best = dec.decode(model, prompts, ["diversity", "positiveness"], [1.0, 2.0], mode="argmax", **kw)
  np.testing.assert_array_equal(best.index, np.argmax(best.candidate_rewards @ [1.0, 2.0], -1))
