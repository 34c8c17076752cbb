"""Built-in model-free and lexicon values behave as their names say, on real text."""

import numpy as np
import pytest
from scipy.stats import pearsonr

from map_jax.rewards import RewardError, available_rewards, get_reward
from map_jax.rewards.text import ngram_diversity, word_tokenize

PROMPT = "How was your weekend?"


def _numpy_diversity(words):
  """Independent reimplementation of the authors' definition on a given token list."""
  out = 1.0
  for n in (2, 3, 4):
    grams = np.array([" ".join(words[i : i + n]) for i in range(len(words) - n + 1)])
    out *= np.unique(grams).size / (grams.size + 1)
  return out


def test_diversity_definition_and_repetition():
  fresh = "the quick brown fox jumps over the lazy dog near a quiet river bank"
  words = fresh.split()
  assert ngram_diversity(fresh) == pytest.approx((len(words) - 3) / len(words))  # all n-grams distinct
  rep = "I like it. " * 8
  assert ngram_diversity(rep) == pytest.approx(_numpy_diversity(word_tokenize(rep)))
  r = get_reward("diversity")([PROMPT] * 3, [fresh, rep, ""])
  assert r[0] > 0.7 and r[1] < 0.2 and r[2] == 0.0


def test_word_tokenize_treebank_contractions():
  assert word_tokenize("Don't stop, it's 3.14 o'clock... well-known!") == [
    "Do",
    "n't",
    "stop",
    ",",
    "it",
    "'s",
    "3.14",
    "o'clock",
    "...",
    "well-known",
    "!",
  ]


def test_diversity_reproduces_the_authors_column(reference_rows):
  ours = get_reward("diversity")([r["prompt"] for r in reference_rows], [r["generated"] for r in reference_rows])
  theirs = np.array([r["diversity"] for r in reference_rows])
  err = np.abs(ours - theirs)
  # Same definition; the tokenizer approximates NLTK's word_tokenize, so most rows agree exactly.
  assert np.mean(err < 1e-9) > 0.7
  assert np.mean(err < 0.01) > 0.9
  assert err.mean() < 0.005
  assert pearsonr(ours, theirs)[0] > 0.99


def test_positiveness_orders_sentiment():
  pos = ["What a wonderful, happy day, I love it!", "Thanks so much, this is great news."]
  neg = ["This is awful, I hate it and feel miserable.", "What a terrible, sad, disgusting mess."]
  r = get_reward("positiveness")([PROMPT] * 4, pos + neg)
  assert r[:2].min() > 0.5 and r[2:].max() < -0.5


def test_harmlessness_penalises_insults():
  polite = ["Thank you for asking, I hope you have a lovely day.", "The museum opens at nine."]
  insult = ["You are a stupid worthless idiot, shut up.", "Go to hell, you piece of shit."]
  r = get_reward("harmlessness")([PROMPT] * 4, polite + insult)
  assert np.all(r <= 0)
  assert r[:2].min() > -0.7 and r[2:].max() < -2.0  # polite: P(harmless) > 0.5; insults: < e^-2
  assert r[:2].min() > r[2:].max()


def test_length_counts_tokens_of_its_tokenizer():
  import os

  from transformers import AutoTokenizer

  from map_jax.models import loading

  tok = AutoTokenizer.from_pretrained(os.path.dirname(loading.builtin_path("all-minilm-l6-v2")))
  texts = ["Hello there!", "", "antidisestablishmentarianism is long"]
  want = [len(tok.tokenize(t)) for t in texts]
  np.testing.assert_array_equal(get_reward("length")([PROMPT] * 3, texts), want)


def test_unknown_and_bad_input_errors():
  with pytest.raises(RewardError, match=r"unknown reward value 'humour'.*known values: .*humor"):
    get_reward("humour")
  r = get_reward("diversity")
  with pytest.raises(RewardError, match=r"'diversity'.*response at row 1 is int"):
    r(["a", "b"], ["fine", 3])
  with pytest.raises(RewardError, match="2 prompts but 1 responses"):
    r(["a", "b"], ["x"])
  with pytest.raises(RewardError, match="single str"):
    r("a", "b")
  assert r([], []).shape == (0,)
  renamed = get_reward("div=diversity")
  assert renamed.name == "div"
  assert {
    "humor",
    "positiveness",
    "harmlessness",
    "coherence",
    "diversity",
    "perplexity",
    "interesting",
    "length",
    "classifier:...",
  } <= set(available_rewards())


@pytest.mark.parametrize("name", ["diversity", "length", "positiveness", "harmlessness", "coherence"])
def test_empty_and_whitespace_responses_get_finite_rewards(name):
  r = get_reward(name)(["Hi", "", "Hi"], ["", "", "  \n "])
  assert r.shape == (3,) and np.all(np.isfinite(r))
