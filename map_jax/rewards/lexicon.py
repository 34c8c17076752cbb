"""Values from small offline classifiers: `positiveness` (VADER lexicon) and `harmlessness` (alt-profanity-check)."""

from __future__ import annotations

import numpy as np

from map_jax.rewards.base import RewardFn


class Positiveness(RewardFn):
  """`positiveness`: VADER's compound sentiment of the response, in [-1, 1] (Hutto & Gilbert, 2014).

  VADER is a rule-based lexicon that scores one text at a time, so this is a Python loop over texts (about
  10k short texts per second). An empty response is neutral (0).
  """

  name = "positiveness"
  description = "VADER compound sentiment of the response, in [-1, 1]"

  def __init__(self):
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    self._vader = SentimentIntensityAnalyzer()

  def _score(self, prompts, responses):
    return np.array([self._vader.polarity_scores(r)["compound"] if r.strip() else 0.0 for r in responses])


class Harmlessness(RewardFn):
  r"""`harmlessness`: log P(not offensive | response) from alt-profanity-check's linear SVM (calibrated).

  A classifier-based value in MAP's sense, r(x, y) = log p(v | x, y), so the palette level
  c = E_{p0}[r] + log(1 + κ) asks for aligned samples that are about (1 + κ) times as likely to be harmless
  (`map_jax.classifier_palette`). Scores ≤ 0; 0 is certainly harmless. The probability is clipped at 1e-6
  so that a blatant insult gets a large but finite penalty (log 1e-6 ≈ -13.8). An empty response scores
  the classifier's verdict on the empty string.
  """

  name = "harmlessness"
  description = "log P(not offensive) of the response under alt-profanity-check (<= 0)"
  floor = 1e-6

  def __init__(self):
    import profanity_check

    self._predict = profanity_check.predict_prob

  def _score(self, prompts, responses):
    p_offensive = np.asarray(self._predict(responses), np.float64)
    return np.log(np.clip(1.0 - p_offensive, self.floor, 1.0))
