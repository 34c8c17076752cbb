"""Model-free values on the response text: `diversity` (distinct word n-grams) and `length` (tokens)."""

from __future__ import annotations

import re

import numpy as np

from map_jax.rewards.base import RewardFn

# Word tokenization close to NLTK's `word_tokenize` (Penn Treebank rules), which the MAP authors' code uses
# for diversity, without needing nltk: contractions split off ("don't" -> "do", "n't"; "it's" -> "it", "'s",
# straight or curly apostrophe), numbers keep their separators, hyphenated words and abbreviations stay one
# token, every other punctuation mark is its own token ("..." and "--" as one). On the authors' OPT pilot data
# it reproduces their diversity column exactly on ~3/4 of the rows and within 0.01 on ~94%; the rest differ
# in how punkt splits odd sentence boundaries ("day?.How").
_CONTRACTION = re.compile(r"(?i)(?<=\w)(n['’]t|['’](?:s|m|d|re|ve|ll))\b")
_TOKEN = re.compile(r"(?i)n['’]t|['’](?:s|m|d|re|ve|ll)\b|\d+(?:[.,]\d+)+|\w+(?:[-.'’]\w+)*|\.\.\.|--|[^\w\s]")


def word_tokenize(text: str) -> list[str]:
  """Treebank-style word tokens of `text` (see the module comment for how close to NLTK this is)."""
  return _TOKEN.findall(_CONTRACTION.sub(r" \1", text))


def ngram_diversity(text: str, orders: tuple[int, ...] = (2, 3, 4)) -> float:
  r"""Diversity of one text, as in the MAP authors' code.

  .. math:: \mathrm{div}(y) = \prod_{n \in \{2,3,4\}} \frac{|\text{distinct } n\text{-grams of } y|}
            {|n\text{-grams of } y| + 1}

  The +1 keeps short texts below 1 (k distinct tokens in a row score (k-3)/k) and makes an empty or one-word
  text score 0 rather than 0/0. A text that repeats itself scores low: "a b a b a b" has 2 distinct bigrams
  out of 5.
  """
  words = word_tokenize(text)
  score = 1.0
  for n in orders:
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    score *= len(set(grams)) / (len(grams) + 1)
  return score


class Diversity(RewardFn):
  """`diversity`: product over n = 2, 3, 4 of distinct / (total + 1) word n-grams of the response.

  Scores the response only (pass prompt + response as the response to score the whole generation, as the
  authors' pilot data does).
  """

  name = "diversity"
  description = "distinct word 2/3/4-grams of the response (MAP authors' definition), in [0, 1)"

  def _score(self, prompts, responses):
    return np.array([ngram_diversity(r) for r in responses])


class Length(RewardFn):
  """`length`: number of tokens of the response under a tokenizer (default: all-MiniLM-L6-v2's WordPiece).

  Any tokenizer directory or built-in model name works (`get_reward("length", tokenizer="smollm2-135m-instruct")`
  counts the base model's tokens). Special tokens are not counted; an empty response has length 0.
  """

  name = "length"
  description = "tokens in the response (WordPiece of all-MiniLM-L6-v2 unless tokenizer= is given)"

  def __init__(self, tokenizer: str = "all-minilm-l6-v2"):
    self.tokenizer_name = tokenizer
    self._tok = None

  def _score(self, prompts, responses):
    if self._tok is None:
      self._tok = _load_tokenizer(self.tokenizer_name)
    ids = self._tok(responses, add_special_tokens=False)["input_ids"]
    return np.array([len(i) for i in ids], np.float64)

  def close(self):
    self._tok = None


def _load_tokenizer(name: str):
  import os

  from map_jax.models import loading, tokenizer

  if name in loading.BUILTIN:
    path = loading.builtin_path(name)
    if path.endswith(".gguf"):
      return tokenizer.load_tokenizer(os.path.dirname(path), gguf_file=os.path.basename(path))
    return tokenizer.load_tokenizer(os.path.dirname(path))
  return tokenizer.load_tokenizer(name)
