"""Reward functions r_i(x, y) as MAP values: the protocol, a registry, built-in values, learned reward heads.

    >>> from map_jax.rewards import get_reward, available_rewards
    >>> r = get_reward("positiveness")
    >>> r(["How was the trip?"], ["Wonderful, thank you!"])          # float64 array [1]
    >>> get_reward("classifier:/ckpt/humor-distilbert:humor")       # any HF sequence classifier
    >>> get_reward("gpt2-harmless=reward_model:/ckpt/gpt2-large-harmless")

Built-in values (all offline): humor, upbeat, interesting (heads trained on chitchat ratings), positiveness
(VADER), harmlessness (log P(not offensive), alt-profanity-check), coherence (MiniLM cosine), diversity
(distinct n-grams), perplexity (−mean NLL under SmolLM2-135M), length (tokens). Model-backed values load
their model when built, not when registered.
"""

from map_jax.rewards.base import RewardError, RewardFn, cache_dir, check_batch
from map_jax.rewards.registry import available_rewards, get_reward, register, register_spec

__all__ = [
  "RewardError",
  "RewardFn",
  "available_rewards",
  "cache_dir",
  "check_batch",
  "get_reward",
  "register",
  "register_spec",
]
