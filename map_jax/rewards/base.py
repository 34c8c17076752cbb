"""The reward protocol: a named, directed function from a batch of (prompt, response) strings to float rewards.

In MAP a human value is a reward function r_i(x, y); the solver only ever sees the n × m matrix of those
rewards on pilot samples. Everything here is about producing that matrix honestly: one protocol
(`RewardFn`), one check of the inputs (`check_batch`), and one way to say "I truncated your text" (once).
"""

from __future__ import annotations

import abc
import os
from typing import Any, Sequence

from absl import logging
import numpy as np


class RewardError(ValueError):
  """Bad input to a reward value (wrong type, mismatched lengths, unknown value name); the message names it."""


def cache_dir(*parts: str) -> str:
  """Where trained reward heads and cached embeddings live: `$MAP_JAX_CACHE` or `~/.cache/map_jax`."""
  root = os.environ.get("MAP_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "map_jax")
  return os.path.join(root, *parts)


class RewardFn(abc.ABC):
  """A MAP value: `value(prompts, responses) -> float64 array [n]`, higher is better once `sign` is applied.

  Attributes:
    name: the value's name, used as the column name in pilot tables ("humor", "harmlessness", ...).
    higher_is_better: the direction of the raw score. MAP maximises rewards, so a value whose raw score is
      better when lower (none of the built-ins) should be negated by its author; the flag is informational
      and `score` tables always hold the raw score.
    description: one line on what the score is, shown by `available_rewards()`.

  Subclasses implement `_score(prompts, responses)` on validated lists of strings. `__call__` checks the
  batch first (same length, strings only; empty responses allowed) so every value fails the same way.
  Values that hold a model release it on `close()` (the scoring launcher loads one model at a time).
  """

  name: str = "reward"
  higher_is_better: bool = True
  description: str = ""

  def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    prompts, responses = check_batch(self.name, prompts, responses)
    if not responses:
      return np.zeros((0,), np.float64)
    out = np.asarray(self._score(prompts, responses), np.float64)
    if out.shape != (len(responses),):
      raise AssertionError(f"reward {self.name!r} returned shape {out.shape} for {len(responses)} rows")
    return out

  @abc.abstractmethod
  def _score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
    """Rewards [n] for validated prompts and responses (lists of str of equal length, n >= 1)."""

  def close(self) -> None:
    """Release models and compiled functions (no-op for model-free values)."""

  def __repr__(self) -> str:
    return f"<{type(self).__name__} {self.name!r}>"


def check_batch(name: str, prompts: Any, responses: Any) -> tuple[list[str], list[str]]:
  """Validate one batch for value `name`: equal-length sequences of `str` (a bare string is an error).

  Empty strings are allowed: every built-in value defines a score for an empty response, because pilot
  samples do end at once sometimes and MAP needs a finite reward for every row.
  """
  for what, seq in (("prompts", prompts), ("responses", responses)):
    if isinstance(seq, (str, bytes)):
      raise RewardError(f"reward {name!r}: {what} must be a sequence of strings, got a single {type(seq).__name__}")
  prompts, responses = list(prompts), list(responses)
  if len(prompts) != len(responses):
    raise RewardError(f"reward {name!r}: {len(prompts)} prompts but {len(responses)} responses")
  for what, seq in (("prompt", prompts), ("response", responses)):
    for i, s in enumerate(seq):
      if not isinstance(s, str):
        raise RewardError(f"reward {name!r}: {what} at row {i} is {type(s).__name__} {s!r:.60}, expected str")
  return prompts, responses


class TruncationNotice:
  """Logs (and warns) once per value that texts were cut to the model's context, with how many so far."""

  def __init__(self, name: str, limit: int, unit: str = "tokens"):
    self.name, self.limit, self.unit, self.count, self.said = name, limit, unit, 0, False

  def __call__(self, n_truncated: int) -> None:
    if n_truncated <= 0:
      return
    self.count += n_truncated
    if not self.said:
      self.said = True
      import warnings

      msg = (
        f"reward {self.name!r}: {n_truncated} text(s) longer than the model's context of {self.limit} "
        f"{self.unit} were truncated to it (said once per value; later truncations are counted in "
        "`.truncated`)"
      )
      logging.warning(msg)
      warnings.warn(msg, stacklevel=3)
