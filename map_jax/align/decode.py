r"""MAP-D, alignment by decoding: draw k candidates from the base model, keep one by importance resampling.

The MAP-aligned distribution is an exponential tilt of the base model,

.. math::  p_\lambda(y \mid x) \propto p_0(y \mid x) \exp(\lambda^\top r(x, y)),

so given k samples y_1..y_k ~ p_0(· | x), choosing y_i with probability softmax_i(λᵀr(x, y_i)) is
self-normalized importance resampling from p_λ; it becomes exact as k grows (the paper's MAP-D). The λ
comes from `map_jax.solve_dual` on pilot rewards. `mode="argmax"` keeps the best candidate instead
(best-of-k on λᵀr), the usual deterministic baseline.

Two layers:
  select   pure JAX on a reward array [P, k, m]: jit-able, vmap-able over keys or palettes, deterministic
           given the key. Cheap enough to resample thousands of palettes on one set of candidates.
  decode   the whole step for a list of prompts: `map_jax.sampling.generate` k candidates each, score them with the
           reward values, `select`. Host-side (tokenizers and reward models are not JAX).

    >>> lam = map_jax.solve_dual(R_pilot, c).lam
    >>> out = decode(map_jax.load_model("smollm2-135m-instruct"), prompts, ["humor", "harmlessness"], lam,
    ...              key=jax.random.key(0), num_candidates=16, max_new_tokens=64, top_k=50)
    >>> out.text, out.rewards.mean(0)        # chosen responses and their realized value levels
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

MODES = ("sample", "argmax")


class Selection(NamedTuple):
  """The result of `select`.

  index:   [P] int32, the chosen candidate of each prompt (0..k-1).
  rewards: [P, m] the chosen candidates' rewards, i.e. rewards[p, index[p]].
  probs:   [P, k] softmax(λᵀr) over each prompt's candidates: the resampling weights, whichever the mode
           (their spread, e.g. 1 / Σ probs², tells how many candidates effectively compete).
  """

  index: jax.Array
  rewards: jax.Array
  probs: jax.Array


@functools.partial(jax.jit, static_argnames=("mode",))
def select(key: jax.Array, rewards: jax.Array, lam: jax.Array, *, mode: str = "sample") -> Selection:
  """Choose one of k candidates per prompt with probability softmax(λᵀr) (or the argmax of λᵀr).

  Args:
    key: PRNG key; prompts draw independently from it (one categorical draw over the batch). Unused by
      "argmax", which is deterministic.
    rewards: [P, k, m] reward of candidate i of prompt p on value j.
    lam: [m] the dual solution λ (>= 0 from `solve_dual`, though any real vector tilts consistently).
    mode: "sample" for importance resampling (MAP-D), "argmax" for best-of-k on λᵀr (ties: lowest index).

  Returns:
    `Selection` (index [P], rewards [P, m], probs [P, k]).

  Example:
    >>> sel = select(jax.random.key(0), jnp.zeros((2, 4, 3)), jnp.ones(3))   # λᵀr equal: uniform
    >>> sel.probs                                                             # all 0.25
    >>> jax.vmap(lambda k: select(k, R, lam).index)(jax.random.split(key, 1000))   # [1000, P]
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  rewards = jnp.asarray(rewards)
  lam = jnp.asarray(lam, rewards.dtype)
  chex.assert_rank(rewards, 3)
  chex.assert_shape(lam, (rewards.shape[-1],))
  logits = jnp.einsum("pkm,m->pk", rewards, lam)
  probs = jax.nn.softmax(logits, axis=-1)
  if mode == "sample":
    index = jax.random.categorical(key, logits, axis=-1)
  else:
    index = jnp.argmax(logits, axis=-1)
  index = index.astype(jnp.int32)
  chosen = jnp.take_along_axis(rewards, index[:, None, None], axis=1)[:, 0]
  return Selection(index, chosen, probs)


class DecodeOutput(NamedTuple):
  """Host-side result of `decode` (numpy), one row per prompt unless named otherwise.

  text:              [P] the chosen continuations.
  rewards:           [P, m] their rewards (columns in the order of `values`).
  index:             [P] which candidate was chosen (0..k-1).
  candidates:        [P][k] every candidate continuation.
  candidate_rewards: [P, k, m] every candidate's rewards; resample them with `select` for other palettes
                     without generating again.
  probs:             [P, k] the resampling weights softmax(λᵀr).
  value_names:       [m] the values' names.
  """

  text: list[str]
  rewards: np.ndarray
  index: np.ndarray
  candidates: list[list[str]]
  candidate_rewards: np.ndarray
  probs: np.ndarray
  value_names: list[str]


def _as_values(values: Sequence[Any]) -> tuple[list[Callable], list[str]]:
  """Reward callables and their names: strings go through `get_reward`, callables are used as they are."""
  fns = []
  for v in values:
    if isinstance(v, str):
      from map_jax.rewards import get_reward  # loads the registry only when names are given

      v = get_reward(v)
    fns.append(v)
  return fns, [getattr(f, "name", f"value_{i}") for i, f in enumerate(fns)]


def score_candidates(
  prompts: Sequence[str], candidates: Sequence[Sequence[str]], values: Sequence[Any]
) -> tuple[np.ndarray, list[str]]:
  """Rewards [P, k, m] of k candidates per prompt under m values, each value called once on all P·k rows.

  Values see the raw prompt (not the chat-templated one), as the pilot tables of `experiments.score` do,
  so λ solved on pilot rewards applies to these unchanged. A non-finite reward is an error naming the
  value and the row: it would otherwise turn a whole prompt's resampling weights into NaN.
  """
  fns, names = _as_values(values)
  P = len(prompts)
  k = len(candidates[0]) if P else 0
  if len(candidates) != P or any(len(c) != k for c in candidates):
    raise ValueError(f"need the same number of candidates for each of the {P} prompts")
  flat_p = [p for p in prompts for _ in range(k)]
  flat_y = [y for c in candidates for y in c]
  R = np.empty((P * k, len(fns)), np.float64)
  for j, (f, name) in enumerate(zip(fns, names)):
    col = np.asarray(f(flat_p, flat_y), np.float64)
    if col.shape != (P * k,):
      raise ValueError(f"value {name!r} returned shape {col.shape} for {P * k} rows")
    bad = np.flatnonzero(~np.isfinite(col))
    if bad.size:
      r = int(bad[0])
      raise ValueError(
        f"value {name!r} gave a non-finite reward {col[r]} to prompt {r // k}, candidate {r % k}: {flat_y[r][:80]!r}"
      )
    R[:, j] = col
  return R.reshape(P, k, len(fns)), names


def decode(
  model,
  prompts: Sequence[str],
  values: Sequence[Any],
  lam,
  *,
  key: jax.Array,
  num_candidates: int,
  max_new_tokens: int = 64,
  temperature: float = 1.0,
  top_k: int | None = None,
  top_p: float | None = None,
  chat: bool = True,
  mode: str = "sample",
  batch_size: int = 16,
) -> DecodeOutput:
  """MAP-D for a list of prompts: generate k candidates each, score them, keep one per prompt.

  Args:
    model: a `LoadedModel` (config, params, tokenizer), e.g. from `map_jax.load_model`.
    prompts: raw prompt texts.
    values: the m reward values, in the order of λ: names for `get_reward` or callables
      `value(prompts, responses) -> array [n]`.
    lam: [m] the dual solution for the palette.
    key: PRNG key; split into one key for generation and one for selection, so the same key gives the
      same candidates and the same choice.
    num_candidates: k, candidates per prompt (the paper uses 16).
    max_new_tokens, temperature, top_k, top_p, chat: passed to `map_jax.sampling.generate` (chat=True applies the
      chat template, as for instruct models).
    mode: "sample" (MAP-D) or "argmax" (best-of-k on λᵀr).
    batch_size: prompts per `generate` call (B·k rows are decoded together); the last, smaller batch is
      padded by `generate` to a compiled shape.

  Returns:
    `DecodeOutput`.
  """
  from map_jax.sampling import for_decoding, generate  # Flax and transformers load on first use, as in map_jax/__init__

  if mode not in MODES:  # before minutes of generation, not after
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  prompts = list(prompts)
  if not prompts:
    raise ValueError("decode needs at least one prompt")
  if num_candidates < 1:
    raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
  lam = np.asarray(lam, np.float64)
  if lam.shape != (len(values),):
    raise ValueError(f"lam has shape {lam.shape} but {len(values)} values were given")
  gen_key, sel_key = jax.random.split(key)
  module, params = for_decoding(model.module, model.params)  # one module object: `sample` compiles once per shape
  k = num_candidates
  candidates: list[list[str]] = []
  for b, start in enumerate(range(0, len(prompts), batch_size)):
    out = generate(
      module,
      params,
      model.tokenizer,
      prompts[start : start + batch_size],
      key=jax.random.fold_in(gen_key, b),
      max_new_tokens=max_new_tokens,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      num_return_sequences=k,
      chat=chat,
    )
    candidates += [out.text[i : i + k] for i in range(0, len(out.text), k)]  # rows are prompt-major
  R, names = score_candidates(prompts, candidates, values)
  sel = select(sel_key, jnp.asarray(R, jnp.float32), jnp.asarray(lam, jnp.float32), mode=mode)
  index = np.asarray(sel.index)
  return DecodeOutput(
    text=[c[i] for c, i in zip(candidates, index)],
    rewards=R[np.arange(len(prompts)), index],
    index=index,
    candidates=candidates,
    candidate_rewards=R,
    probs=np.asarray(sel.probs),
    value_names=names,
  )


__all__ = ["DecodeOutput", "MODES", "Selection", "decode", "score_candidates", "select"]
