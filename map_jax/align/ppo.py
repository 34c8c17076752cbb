r"""MAP-F, alignment by fine-tuning: PPO toward the reward λᵀr with a per-token KL penalty to the base model.

The MAP-aligned model is the exponential tilt p_λ(y | x) ∝ p0(y | x) exp(λᵀr(x, y)). It is also the
maximiser of a KL-regularised expected reward,

.. math::

   \max_\pi \; E_{x, y \sim \pi}[λᵀr(x, y)] − β \, KL(\pi(\cdot \mid x) \,\|\, p_0(\cdot \mid x))
   \quad\Longrightarrow\quad \pi^*(y \mid x) \propto p_0(y \mid x) \exp(λᵀr(x, y) / β),

so with **β = 1 (the default)** the PPO optimum is exactly p_λ and the λ from `map_jax.solve_dual` means what
it says: the fine-tuned model realizes the palette. Another β fine-tunes toward the λ/β tilt instead (larger β:
closer to p0); change it knowingly.

PPO sees the sequence as an episode with one action per token. The per-token reward is

.. math::

   r_t = −β (\log π_{old}(y_t \mid x, y_{<t}) − \log p_0(y_t \mid x, y_{<t}))
         + [t = T_y − 1] \, λᵀr(x, y),

whose sum over t is λᵀr minus β times a single-sample estimate of the sequence KL (`kl_estimator="sample"`,
the default, as in Ziegler et al. 2019). With `kl_estimator="exact"` the log-ratio of the sampled token is
replaced by the whole per-token KL over the vocabulary, k_t = KL(π_old(· | x, y_{<t}) ‖ p_0(· | x, y_{<t})),
its expectation given the prefix. That removes the sampling noise of the KL term from every return. The
penalty on the sampled token also carried the gradient of k_t itself (the score-function term
E[∇log π(y_t) · (log π − log p_0)(y_t)] = ∇k_t). With k_t in the rewards that term is gone, so the loss adds it
back directly, β·k_t(θ) per token:

.. math::

   ∇_θ \Big(E_π[λᵀr] − β\,KL(π \,\|\, p_0)\Big)
   = E_π\Big[\sum_t ∇\log π(y_t) \big(λᵀr − β \sum_{s > t} k_s\big) − β \sum_t ∇k_t\Big].

Both estimators have this same expected gradient (`tests/align/test_ppo.py` checks it against the exact
objective on a model small enough to enumerate every response); the exact one has less variance, and
costs the reference's log-probs over the whole vocabulary in the batch (B·N·V floats). Advantages come from GAE
(γ = 1, λ_GAE = 0.95) on a value V(x, y_{<t}), predicted by a linear head on the policy's final hidden states
(`value_model="head"`, the shared trunk) or on a separate copy of the LM (`value_model="separate"`). The losses
are the clipped surrogate and the clipped value loss of Schulman et al. (2017), as in Ziegler et al. (2019):

.. math::

   L^{π} = E_t[\max(−A_t ρ_t, −A_t \operatorname{clip}(ρ_t, 1 − ε, 1 + ε))],
   \quad ρ_t = \exp(\log π − \log π_{old}),

   L^{V} = \tfrac12 E_t[\max((V − G_t)^2,
                             (V_{old} + \operatorname{clip}(V − V_{old}, −ε_V, ε_V) − G_t)^2)],

with G_t = A_t + V_old the returns. Each rollout is reused for `ppo_epochs` passes over `num_minibatches`
shuffled minibatches, each minibatch's gradient accumulated over `grad_accum` micro-batches (a `lax.scan`)
before one AdamW step with global-norm clipping.

One iteration, and where each piece lives:

    rollout        `rollout`: the jit'd KV-cache sampler on the current policy             (device)
    reward         `score_responses`: reward values on decoded text, λᵀr                   (host)
    make_batch     policy log-probs and values, reference log-probs, token rewards, GAE    (device, one jit)
    update         epochs × minibatches × micro-batches of clipped PPO, AdamW              (device, one jit,
                                                                                           sharded, donated)

`iteration` runs the four; `map_jax.align.trainer` adds data, logging, checkpoints and fault handling around it.
Everything on the device is a pure function of (state, batch, key); `compile_update` jits `update` with the
shardings of `map_jax.parallel` and donates the state.

References: Schulman et al., "Proximal Policy Optimization Algorithms" (2017); Ziegler et al., "Fine-Tuning
Language Models from Human Preferences" (2019); Wang et al., "MAP: Multi-Human-Value Alignment Palette" (2025).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, NamedTuple, Sequence

from absl import logging
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from map_jax import parallel
from map_jax.align import lora as lora_lib
from map_jax.align import trainer
from map_jax.align.trainer import TrainState
from map_jax.models.layers import ATTENTION_AND_MLP, LoRA, positions_from_mask
from map_jax.sampling import SampleOutput, sample, token_logprobs

VALUE_MODELS = ("head", "separate")
KL_ESTIMATORS = ("sample", "exact")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  """Hyperparameters of MAP-F's PPO; frozen and hashable, so it can be a static argument of `jax.jit`.

  Objective:
    beta: KL coefficient. 1.0 makes the optimum p0·exp(λᵀr), the MAP solution (see the module docstring).
    kl_estimator: "sample" (β times log π − log p0 of the sampled token, in the rewards) or "exact" (β times
      the per-token KL over the vocabulary, in the rewards and, for its own gradient, in the loss). Same
      expected gradient; "exact" has less variance and keeps p0's [B, N, vocab] log-probs in the batch.
  Rollout:
    max_new_tokens: response budget N (rollouts are padded to it: one compiled shape).
    temperature, top_k, top_p: the sampler's options. Keep temperature 1 without truncation: then responses
      are drawn from π itself, which the KL estimate and the PPO ratio assume.
  Advantages:
    gamma, gae_lambda: GAE discount and trace decay (1.0 and 0.95).
    whiten_rewards: divide token rewards by their batch std (no shift: a shift would pay every token and so
      favour length). It rescales λᵀr and the KL alike, so β keeps its meaning; only the step sizes change,
      batch by batch. Off by default.
    whiten_advantages: normalise advantages to zero mean, unit variance over the batch's tokens.
  Losses:
    clip_ratio: ε of the clipped surrogate; clip_value: ε_V of the clipped value loss.
    value_coef: weight of the value loss; entropy_coef: weight of an entropy bonus (0: none).
    value_model: "head" (a linear head on the policy's hidden states; the value loss trains the shared trunk
      too) or "separate" (a copy of the initial LM with its own head: twice the memory, no interference).
  Optimisation:
    learning_rate, weight_decay, adam_b1, adam_b2, adam_eps: AdamW (optax.adamw).
    max_grad_norm: global-norm gradient clipping (before Adam).
    warmup_steps: optimizer updates over which the learning rate rises linearly to `learning_rate` (0: none).
      Adam's first updates are sign-like, moving every weight by the full learning rate whatever the
      gradient's size; a warm-up keeps the first rollouts' noise from throwing the policy away from p0.
    ppo_epochs: passes over each rollout; num_minibatches: optimizer steps per pass;
    grad_accum: micro-batches per minibatch (rows per micro-batch = B / (num_minibatches · grad_accum)).
  Low-rank adapters (`map_jax.align.lora`):
    lora_rank: 0 trains every weight; r > 0 freezes the base model and trains rank-r adapters on the projections
      named in `lora_targets` (and the value head). The base is then also the reference p0 (no second copy),
      the state and its checkpoints hold only the adapters, and the exported params have them merged in.
      With value_model="separate" the value trunk is the same frozen base with adapters of its own.
    lora_alpha: the adapters' scale α (updates are (α / r)·B A).
  """

  beta: float = 1.0
  kl_estimator: str = "sample"
  max_new_tokens: int = 32
  temperature: float = 1.0
  top_k: int | None = None
  top_p: float | None = None
  gamma: float = 1.0
  gae_lambda: float = 0.95
  whiten_rewards: bool = False
  whiten_advantages: bool = True
  clip_ratio: float = 0.2
  clip_value: float = 0.2
  value_coef: float = 0.1
  entropy_coef: float = 0.0
  value_model: str = "head"
  learning_rate: float = 1e-6
  weight_decay: float = 0.0
  adam_b1: float = 0.9
  adam_b2: float = 0.95
  adam_eps: float = 1e-8
  max_grad_norm: float = 1.0
  warmup_steps: int = 0
  ppo_epochs: int = 4
  num_minibatches: int = 1
  grad_accum: int = 1
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ATTENTION_AND_MLP

  def __post_init__(self):
    object.__setattr__(self, "lora_targets", tuple(self.lora_targets))  # a config's list: keep it hashable

  @property
  def lora(self) -> LoRA | None:
    """The adapters' settings, or None when every weight trains."""
    return lora_lib.settings(self.lora_rank, self.lora_alpha, self.lora_targets)

  def validate(self, batch_size: int | None = None) -> "PPOConfig":
    """Raise a ValueError naming the field for an out-of-range setting; return self."""
    if self.value_model not in VALUE_MODELS:
      raise ValueError(f"value_model must be one of {VALUE_MODELS}, got {self.value_model!r}")
    if self.kl_estimator not in KL_ESTIMATORS:
      raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
    if self.beta < 0:
      raise ValueError(f"beta must be >= 0, got {self.beta}")
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.warmup_steps < 0:
      raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
    lora_lib.settings(self.lora_rank, self.lora_alpha, self.lora_targets)
    for name in ("ppo_epochs", "num_minibatches", "grad_accum"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if batch_size is not None and batch_size % (self.num_minibatches * self.grad_accum):
      raise ValueError(
        f"batch size {batch_size} is not a multiple of num_minibatches × grad_accum = "
        f"{self.num_minibatches} × {self.grad_accum}"
      )
    return self


class Batch(NamedTuple):
  """One rollout, ready for `update`: rows are sequences, N = max_new_tokens columns are response tokens.

  prompt_tokens, prompt_mask [B, T]: left-padded prompts; tokens, mask [B, N]: right-padded responses;
  logprobs [B, N] log π_old(y_t); values [B, N] V_old; advantages, returns [B, N]. All 0 where mask is False.
  With kl_estimator="exact" only: ref_logprobs [B, N, V] log p0(· | x, y_<t) over the vocabulary, and
  kl_weight [B] the coefficient of the loss's direct KL term (β, divided by whatever scale the whitening of
  rewards and advantages applied to the rest of the objective; the same in every row).
  """

  prompt_tokens: jax.Array
  prompt_mask: jax.Array
  tokens: jax.Array
  mask: jax.Array
  logprobs: jax.Array
  values: jax.Array
  advantages: jax.Array
  returns: jax.Array
  ref_logprobs: jax.Array | None = None
  kl_weight: jax.Array | None = None


class ValueHead(nn.Module):
  """V = w·h + b on final hidden states [..., E] -> [...]; zero-initialised, so values start at 0."""

  @nn.compact
  def __call__(self, hidden):
    return nn.Dense(1, kernel_init=nn.initializers.zeros_init())(hidden.astype(jnp.float32))[..., 0]


# ------------------------------------------------------------------------------------------- pure math


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of x over the positions where mask is True (0 if there are none)."""
  return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def masked_std(x: jax.Array, mask: jax.Array) -> jax.Array:
  """sqrt(var + 1e-8) over the masked positions: the scale `whiten` divides by."""
  return jnp.sqrt(masked_mean(jnp.square(x - masked_mean(x, mask)), mask) + 1e-8)


def whiten(x: jax.Array, mask: jax.Array) -> jax.Array:
  """(x − mean) / std over the masked positions; 0 off the mask."""
  return jnp.where(mask, (x - masked_mean(x, mask)) / masked_std(x, mask), 0.0)


def exact_kl(logprobs: jax.Array, ref_logprobs: jax.Array) -> jax.Array:
  """Σ_v π(v) (log π(v) − log p0(v)) over the last axis: [..., V] log-probs -> [...] per-token KL(π ‖ p0)."""
  return jnp.sum(jnp.exp(logprobs) * (logprobs - ref_logprobs), axis=-1)


def token_rewards(scores: jax.Array, kl: jax.Array, mask: jax.Array, beta: float) -> jax.Array:
  """Per-token rewards −β·kl_t plus the sequence score λᵀr on each response's last token.

  Args:
    scores: [B] λᵀr(x, y) per response.
    kl: [B, N] per-token KL terms: log π_old(y_t) − log p0(y_t) ("sample") or KL(π_old ‖ p0) at each prefix
      ("exact").
    mask: [B, N] response tokens (a prefix of each row, at least one token).

  Returns:
    rewards [B, N], 0 off the mask.
  """
  chex.assert_equal_shape([kl, mask])
  chex.assert_shape(scores, kl.shape[:1])
  last = jnp.sum(mask, axis=-1) - 1
  at_last = jnp.arange(mask.shape[1])[None, :] == last[:, None]
  return jnp.where(mask, -beta * kl + jnp.where(at_last, scores[:, None], 0.0), 0.0)


def gae(
  rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float = 1.0, lam: float = 0.95
) -> tuple[jax.Array, jax.Array]:
  r"""Generalised advantage estimates over right-padded episodes; the state after the last token is terminal.

  .. math::  δ_t = r_t + γ V_{t+1} − V_t, \quad A_t = δ_t + γ λ A_{t+1}, \quad G_t = A_t + V_t,

  with V_{T} = A_{T} = 0 past each row's last token (a truncated response is treated as finished: its
  sequence reward is already paid).

  Args:
    rewards, values: [B, N]; mask: [B, N] bool, a prefix of each row.
    gamma, lam: discount γ and GAE parameter λ.

  Returns:
    (advantages [B, N], returns [B, N]), 0 off the mask.
  """
  chex.assert_equal_shape([rewards, values, mask])
  live_next = jnp.pad(mask[:, 1:], ((0, 0), (0, 1)))
  values = jnp.where(mask, values, 0.0)
  next_values = jnp.where(live_next, jnp.pad(values[:, 1:], ((0, 0), (0, 1))), 0.0)
  deltas = jnp.where(mask, rewards, 0.0) + gamma * next_values - values

  def back(acc, x):  # from the last column to the first
    delta, live = x
    acc = delta + gamma * lam * jnp.where(live, acc, 0.0)
    return acc, acc

  _, adv = jax.lax.scan(back, jnp.zeros(rewards.shape[:1], rewards.dtype), (deltas.T, live_next.T), reverse=True)
  adv = jnp.where(mask, adv.T, 0.0)
  return adv, jnp.where(mask, adv + values, 0.0)


def policy_loss(logprobs, old_logprobs, advantages, mask, clip_ratio) -> tuple[jax.Array, dict]:
  """Clipped surrogate max(−Aρ, −A·clip(ρ, 1 ± ε)), averaged over response tokens; with diagnostics."""
  ratio = jnp.exp(logprobs - old_logprobs)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
  loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
  stats = {
    "clip_fraction": masked_mean((clipped > unclipped).astype(jnp.float32), mask),
    "approx_kl": masked_mean(0.5 * jnp.square(logprobs - old_logprobs), mask),
  }
  return loss, stats


def value_loss(values, old_values, returns, mask, clip_value) -> jax.Array:
  """Clipped value loss ½ max((V − G)², (V_old + clip(V − V_old, ±ε_V) − G)²) over response tokens."""
  clipped = old_values + jnp.clip(values - old_values, -clip_value, clip_value)
  return 0.5 * masked_mean(jnp.maximum(jnp.square(values - returns), jnp.square(clipped - returns)), mask)


# ------------------------------------------------------------------------------------------- the model


def _hidden(module, params, prompt_tokens, prompt_mask, tokens, mask):
  """Final hidden states at the positions that predict the response tokens: [B, N, E]."""
  T, N = prompt_tokens.shape[1], tokens.shape[1]
  seq_mask = jnp.concatenate([prompt_mask, mask], axis=1).astype(bool)
  out = module.apply(
    {"params": params}, jnp.concatenate([prompt_tokens, tokens], axis=1), positions_from_mask(seq_mask), seq_mask
  )
  return out.hidden[:, T - 1 : T + N - 1]


def vocab_logprobs(module: nn.Module, params, prompt_tokens, prompt_mask, tokens, mask) -> jax.Array:
  """log p(· | x, y_<t) over the whole vocabulary at each response position: [B, N, V]."""
  h = _hidden(module, params, prompt_tokens, prompt_mask, tokens, mask)
  return jax.nn.log_softmax(module.apply({"params": params}, h, method="logits"), axis=-1)


def forward(
  module: nn.Module,
  params,
  prompt_tokens,
  prompt_mask,
  tokens,
  mask,
  value_model: str = "head",
  ref_logprobs: jax.Array | None = None,
  base=None,
):
  """Policy log-probs, entropies and values of response tokens in one pass (two with a separate value LM).

  Args:
    ref_logprobs: optional [B, N, V] log p0 over the vocabulary; given, the per-token KL(π ‖ p0) comes back too.
    base: with LoRA, the frozen base weights that `params`' adapters (policy, value trunk) apply to.

  Returns:
    (logprobs [B, N] log π(y_t | x, y_<t), entropy [B, N] of π(· | x, y_<t), values [B, N] V(x, y_<t),
    kl [B, N] KL(π(· | x, y_<t) ‖ p0(· | x, y_<t)) or None), 0 off the mask. Differentiable in `params`.
  """
  policy = lm_params(params["policy"], base)
  h = _hidden(module, policy, prompt_tokens, prompt_mask, tokens, mask)
  logp_all = jax.nn.log_softmax(module.apply({"params": policy}, h, method="logits"), axis=-1)
  logp = jnp.take_along_axis(logp_all, tokens[..., None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  if value_model == "separate":
    h = _hidden(module, lm_params(params["value"]["trunk"], base), prompt_tokens, prompt_mask, tokens, mask)
  values = ValueHead().apply({"params": params["value"]["head"]}, h)
  zero = lambda x: jnp.where(mask, x, 0.0)  # noqa: E731
  kl = None if ref_logprobs is None else zero(exact_kl(logp_all, ref_logprobs))
  return zero(logp), zero(entropy), zero(values), kl


def make_optimizer(cfg: PPOConfig) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW (with a linear learning-rate warm-up over `warmup_steps` updates)."""
  lr = cfg.learning_rate
  if cfg.warmup_steps:
    lr = lambda count: cfg.learning_rate * jnp.minimum(1.0, (count + 1) / cfg.warmup_steps)  # noqa: E731
  return optax.chain(
    optax.clip_by_global_norm(cfg.max_grad_norm),
    optax.adamw(lr, b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps, weight_decay=cfg.weight_decay),
  )


def lm_params(trained, base=None):
  """The LM params a forward pass uses: `trained` itself, or with LoRA (`base` given) the base plus the trained
  adapters."""
  return trained if base is None else lora_lib.combine(base, trained)


# fold_in data of the adapters' initial draw: never a step index, so no iteration's keys repeat it.
_ADAPTER_KEY = 2**31 - 1


def init_state(module: nn.Module, params, key: jax.Array, cfg: PPOConfig) -> TrainState:
  """A fresh TrainState: the policy from `params` (boxed or plain), a zero value head, AdamW moments at 0.

  With value_model="separate" the value trunk starts as a copy of the policy. `key` seeds the whole run. With
  LoRA (`cfg.lora_rank` > 0, `module` built with `cfg.lora`) `params` are the frozen base and the state holds
  fresh adapters instead (B = 0: the policy starts as the base), one set per trunk.
  """
  base = nn.meta.unbox(params)
  width = jax.eval_shape(lambda p: module.apply({"params": p}, jnp.zeros((1, 1), jnp.int32)).hidden, base).shape[-1]
  value = {"head": ValueHead().init(jax.random.key(0), jnp.zeros((1, width)))["params"]}
  if cfg.lora is not None:
    keys = jax.random.split(jax.random.fold_in(key, _ADAPTER_KEY))
    policy = nn.meta.unbox(lora_lib.init_adapters(module, keys[0]))
    if cfg.value_model == "separate":
      value["trunk"] = nn.meta.unbox(lora_lib.init_adapters(module, keys[1]))
  else:
    policy = base
    if cfg.value_model == "separate":
      value["trunk"] = jax.tree.map(jnp.copy, policy)
  all_params = {"policy": policy, "value": value}
  return TrainState(
    step=jnp.zeros((), jnp.int32), params=all_params, opt_state=make_optimizer(cfg).init(all_params), key=key
  )


# ------------------------------------------------------------------------------------------- rollout and batch


def rollout(
  module: nn.Module,
  state: TrainState,
  prompt_tokens,
  prompt_mask,
  key,
  cfg: PPOConfig,
  *,
  eos_ids: tuple[int, ...] = (),
  pad_id: int = 0,
  base=None,
) -> SampleOutput:
  """Sample one response per prompt from the current policy (`map_jax.sampling.sample`); `base`: see `forward`."""
  return sample(
    module,
    lm_params(state.params["policy"], base),
    prompt_tokens,
    prompt_mask,
    key,
    jnp.float32(cfg.temperature),
    max_new_tokens=cfg.max_new_tokens,
    top_k=cfg.top_k,
    top_p=cfg.top_p,
    eos_ids=tuple(eos_ids),
    pad_id=int(pad_id),
  )


def response_mask(lengths: jax.Array, n: int) -> jax.Array:
  """[B, n] bool: True on each response's first `lengths[b]` tokens."""
  return jnp.arange(n)[None, :] < jnp.asarray(lengths)[:, None]


def score_responses(
  prompts: Sequence[str], responses: Sequence[str], values: Sequence[Any], lam
) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Host side: reward values on (prompt, response) text and the sequence score λᵀr.

  Each value re-tokenizes the text its own way (reward models have their own tokenizers). A non-finite
  reward raises a ValueError naming the value and the row (`map_jax.align.decode.score_candidates`).

  Returns:
    (rewards [B, m] float64, scores [B] = rewards @ λ, value names).
  """
  from map_jax.align.decode import score_candidates

  R, names = score_candidates(prompts, [[y] for y in responses], values)
  R = R[:, 0]
  return R, R @ np.asarray(lam, np.float64), names


def make_batch(
  params, ref_params, prompt_tokens, prompt_mask, tokens, mask, scores, *, module: nn.Module, cfg: PPOConfig
) -> tuple[Batch, dict]:
  """Everything PPO needs from a scored rollout: π_old and p0 log-probs, V_old, token rewards, GAE.

  Args:
    params: TrainState.params (policy and value); ref_params: the frozen reference LM p0 (plain arrays), with
      LoRA also the base that the adapters in `params` apply to.
    prompt_tokens, prompt_mask [B, T]; tokens, mask [B, N]: the rollout.
    scores: [B] λᵀr of each response.

  Returns:
    (Batch, stats) with stats the batch means of kl (per sequence: Σ_t log π − log p0), entropy (per token),
    value, return, advantage (before whitening) and score.
  """
  logging.info("compiling PPO make_batch: batch=%d prompt_len=%d new=%d", *prompt_tokens.shape, tokens.shape[1])
  mask = mask.astype(bool)
  base = ref_params if cfg.lora is not None else None
  ref_all = None
  if cfg.kl_estimator == "exact":
    ref_all = vocab_logprobs(module, ref_params, prompt_tokens, prompt_mask, tokens, mask)
    logp, entropy, values, kl = forward(
      module, params, prompt_tokens, prompt_mask, tokens, mask, cfg.value_model, ref_all, base
    )
  else:
    logp, entropy, values, _ = forward(
      module, params, prompt_tokens, prompt_mask, tokens, mask, cfg.value_model, base=base
    )
    _, ref_logp = token_logprobs(module, ref_params, prompt_tokens, prompt_mask, tokens, mask)
    kl = jnp.where(mask, logp - ref_logp, 0.0)
  rewards = token_rewards(scores.astype(jnp.float32), kl, mask, cfg.beta)
  kl_weight = jnp.float32(cfg.beta)
  if cfg.whiten_rewards:  # a pure rescale: a shift would pay every token, and so favour length
    reward_std = masked_std(rewards, mask)
    rewards, kl_weight = rewards / reward_std, kl_weight / reward_std
  advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.gae_lambda)
  stats = {
    "kl": jnp.mean(jnp.sum(kl, -1)),
    "entropy": masked_mean(entropy, mask),
    "value": masked_mean(values, mask),
    "return": masked_mean(returns, mask),
    "advantage": masked_mean(advantages, mask),
    "score": jnp.mean(scores),
  }
  if cfg.whiten_advantages:
    kl_weight /= masked_std(advantages, mask)
    advantages = whiten(advantages, mask)
  if ref_all is None:
    return Batch(prompt_tokens, prompt_mask, tokens, mask, logp, values, advantages, returns), stats
  return Batch(
    prompt_tokens,
    prompt_mask,
    tokens,
    mask,
    logp,
    values,
    advantages,
    returns,
    ref_all,
    jnp.full(tokens.shape[:1], kl_weight),
  ), stats


# ------------------------------------------------------------------------------------------- the update


def loss_fn(params, mb: Batch, base=None, *, module: nn.Module, cfg: PPOConfig) -> tuple[jax.Array, dict]:
  """PPO loss of one micro-batch: clipped policy loss + value_coef · clipped value loss − entropy bonus
  (+ the direct KL term kl_weight · KL(π ‖ p0) per token with kl_estimator="exact"). `base`: see `forward`."""
  logp, entropy, values, kl = forward(
    module, params, mb.prompt_tokens, mb.prompt_mask, mb.tokens, mb.mask, cfg.value_model, mb.ref_logprobs, base
  )
  pg, stats = policy_loss(logp, mb.logprobs, mb.advantages, mb.mask, cfg.clip_ratio)
  vf = value_loss(values, mb.values, mb.returns, mb.mask, cfg.clip_value)
  ent = masked_mean(entropy, mb.mask)
  loss = pg + cfg.value_coef * vf - cfg.entropy_coef * ent
  if kl is not None:  # kl_estimator="exact": the KL's own gradient, which the rewards no longer carry
    kl_loss = masked_mean(mb.kl_weight[:, None] * kl, mb.mask)
    loss += kl_loss
    stats = dict(stats, kl_loss=kl_loss)
  return loss, dict(stats, loss=loss, policy_loss=pg, value_loss=vf)


def update(
  state: TrainState, batch: Batch, key: jax.Array, base=None, *, module: nn.Module, cfg: PPOConfig
) -> tuple[TrainState, dict]:
  """PPO on one rollout: `ppo_epochs` shuffled passes, `num_minibatches` AdamW steps each.

  Each minibatch's gradient is the mean over `grad_accum` micro-batches, accumulated in a `lax.scan` so only
  one micro-batch's activations live at a time. Pure: the same (state, batch, key) gives the same result.
  With LoRA, `base` is the frozen base (not differentiated, not updated) and the state holds the adapters.

  Returns:
    (new state with step + 1, metrics averaged over all minibatches: loss, policy_loss, value_loss,
    clip_fraction, approx_kl, grad_norm).
  """
  B = batch.tokens.shape[0]
  nm, ga = cfg.num_minibatches, cfg.grad_accum
  micro = B // (nm * ga)
  logging.info(
    "compiling PPO update: batch=%d = %d minibatches × %d micro-batches × %d rows, %d epochs",
    B,
    nm,
    ga,
    micro,
    cfg.ppo_epochs,
  )  # runs at trace time only: a second line means a recompile
  tx = make_optimizer(cfg)
  grad_fn = jax.grad(functools.partial(loss_fn, module=module, cfg=cfg), has_aux=True)

  def minibatch(carry, mb):  # mb leaves: [grad_accum, micro, ...]
    params, opt_state = carry

    def accumulate(acc, x):
      g, metrics = grad_fn(params, x, base)
      return jax.tree.map(jnp.add, acc, g), metrics

    grads, metrics = jax.lax.scan(accumulate, jax.tree.map(jnp.zeros_like, params), mb)
    grads = jax.tree.map(lambda g: g / ga, grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    metrics = dict(jax.tree.map(jnp.mean, metrics), grad_norm=optax.tree.norm(grads))
    return (optax.apply_updates(params, updates), opt_state), metrics

  def epoch(carry, k):
    perm = jax.random.permutation(k, B)
    mbs = jax.tree.map(lambda x: x[perm].reshape((nm, ga, micro) + x.shape[1:]), batch)
    return jax.lax.scan(minibatch, carry, mbs)

  (params, opt_state), metrics = jax.lax.scan(
    epoch, (state.params, state.opt_state), jax.random.split(key, cfg.ppo_epochs)
  )
  return (state.replace(step=state.step + 1, params=params, opt_state=opt_state), jax.tree.map(jnp.mean, metrics))


# ------------------------------------------------------------------------------------------- sharding and jit


@functools.lru_cache(maxsize=None)
def abstract_state(module: nn.Module, cfg: PPOConfig) -> TrainState:
  """Shapes and dtypes of the TrainState, without allocating it (cached: tracing the model is not free)."""
  from map_jax.models.loading import abstract_params

  return jax.eval_shape(lambda p: init_state(module, p, jax.random.key(0), cfg), abstract_params(module.config))


@functools.lru_cache(maxsize=None)
def state_shardings(module: nn.Module, cfg: PPOConfig, mesh) -> TrainState:
  """NamedShardings of the TrainState: LM weights (policy, value trunk; with LoRA their adapters) and their Adam
  moments FSDP-sharded by their logical axes; the value head, step and key replicated."""
  from map_jax.models.loading import abstract_params

  lm = parallel.param_shardings(
    abstract_params(module.config) if cfg.lora is None else lora_lib.abstract_adapters(module), mesh
  )
  abstract = abstract_state(module, cfg)
  value = {"head": jax.tree.map(lambda _: parallel.replicated(mesh), abstract.params["value"]["head"])}
  if cfg.value_model == "separate":
    value["trunk"] = lm
  params = {"policy": lm, "value": value}
  opt = parallel.opt_state_shardings(make_optimizer(cfg), abstract.opt_state, params, mesh)
  rep = parallel.replicated(mesh)
  return TrainState(step=rep, params=params, opt_state=opt, key=rep)


@functools.lru_cache(maxsize=None)
def base_shardings(module: nn.Module, mesh) -> Any:
  """NamedShardings of the model's own (base, reference) weights, FSDP-sharded by their logical axes."""
  from map_jax.models.loading import abstract_params

  return parallel.param_shardings(abstract_params(module.config), mesh)


@functools.lru_cache(maxsize=None)
def compile_update(
  module: nn.Module, cfg: PPOConfig, mesh
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict]]:
  """`update` as one `jax.jit` with the state's shardings in and out, the batch split over the mesh's batch
  axes, and the input state donated (its buffers are reused for the new state); with LoRA it also takes the
  base weights (sharded, not donated). Cached per (module, cfg, mesh), so trainers in one process share the
  compiled program."""
  shardings = state_shardings(module, cfg, mesh)
  rep = parallel.replicated(mesh)
  base = (base_shardings(module, mesh),) if cfg.lora is not None else ()
  return jax.jit(
    functools.partial(update, module=module, cfg=cfg),
    in_shardings=(shardings, parallel.batch_sharding(mesh), rep) + base,
    out_shardings=(shardings, rep),
    donate_argnums=(0,),
  )


@functools.lru_cache(maxsize=None)
def compile_make_batch(module: nn.Module, cfg: PPOConfig, mesh) -> Callable:
  """`make_batch` jitted with the params' shardings in and the batch split over the mesh on the way out."""
  shardings = state_shardings(module, cfg, mesh)
  rows, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  return jax.jit(
    functools.partial(make_batch, module=module, cfg=cfg),
    in_shardings=(shardings.params, base_shardings(module, mesh), rows, rows, rows, rows, rows),
    out_shardings=(rows, rep),
  )


@functools.lru_cache(maxsize=None)
def compile_init(module: nn.Module, cfg: PPOConfig, mesh) -> Callable[[Any, jax.Array], TrainState]:
  """`init_state` jitted to write the new state straight into its shardings (no full copy on one device)."""
  return jax.jit(lambda p, k: init_state(module, p, k, cfg), out_shardings=state_shardings(module, cfg, mesh))


def iteration_keys(state_key: jax.Array, step: int) -> tuple[jax.Array, jax.Array]:
  """(rollout key, update key) of iteration `step`: a function of the run key and the step alone."""
  k = jax.random.fold_in(state_key, step)
  return jax.random.fold_in(k, 0), jax.random.fold_in(k, 1)


class IterationResult(NamedTuple):
  """One PPO iteration's outcome: the new state, host-side metrics, decoded responses and their rewards."""

  state: TrainState
  metrics: dict
  responses: list[str]
  rewards: np.ndarray


def iteration(
  module: nn.Module,
  state: TrainState,
  ref_params,
  prompts: Sequence[str],
  prompt_tokens,
  prompt_mask,
  values: Sequence[Any],
  lam,
  cfg: PPOConfig,
  *,
  mesh,
  step: int,
  detokenize: Callable[[list[list[int]]], list[str]],
  eos_ids: tuple[int, ...] = (),
  pad_id: int = 0,
) -> IterationResult:
  """Rollout, reward, make_batch and update for one batch of prompts; times each phase.

  Args:
    module, state, ref_params: the LM module, the sharded TrainState (donated: do not reuse it) and p0's
      sharded params (with LoRA also the base the state's adapters apply to).
    prompts: the B raw prompt texts (what the reward values see); prompt_tokens, prompt_mask: [B, T] their
      left-padded token ids (chat template applied or not), B a multiple of the mesh's batch devices.
    values, lam: the m reward values (callables `value(prompts, responses)` or names) and λ [m].
    mesh: from `map_jax.parallel.make_mesh`; step: the iteration index (picks the PRNG keys).
    detokenize: token-id lists -> response texts.
    eos_ids, pad_id: end-of-response tokens and the padding id.

  Returns:
    `IterationResult`; metrics hold reward/<value> means, score, kl, entropy, the losses, tokens, tokens_per_s
    and time_generate / time_reward / time_score / time_update (seconds). The update's metrics are fetched,
    so a non-finite loss is visible to the caller before anything is saved.

  Raises:
    ValueError: a reward value returned a non-finite reward (named with its row); the state is unchanged.
  """
  rows = parallel.batch_sharding(mesh)
  prompt_tokens, prompt_mask = jax.device_put((jnp.asarray(prompt_tokens), jnp.asarray(prompt_mask)), rows)
  roll_key, update_key = iteration_keys(state.key, step)
  base = (ref_params,) if cfg.lora is not None else ()
  t0 = time.perf_counter()
  out = rollout(
    module,
    state,
    prompt_tokens,
    prompt_mask,
    roll_key,
    cfg,
    eos_ids=eos_ids,
    pad_id=pad_id,
    base=base[0] if base else None,
  )
  tokens, lengths = parallel.to_host(out.tokens), parallel.to_host(out.lengths)
  t1 = time.perf_counter()
  responses = detokenize([t[:n].tolist() for t, n in zip(tokens, lengths)])
  R, scores, names = score_responses(prompts, responses, values, lam)
  t2 = time.perf_counter()
  mask = np.asarray(response_mask(lengths, tokens.shape[1]))
  batch, stats = compile_make_batch(module, cfg, mesh)(
    state.params,
    ref_params,
    prompt_tokens,
    prompt_mask,
    *jax.device_put((tokens, mask, scores.astype(np.float32)), rows),
  )
  stats = jax.tree.map(parallel.to_host, stats)
  t3 = time.perf_counter()
  state, metrics = compile_update(module, cfg, mesh)(state, batch, update_key, *base)
  metrics = {k: float(parallel.to_host(v)) for k, v in metrics.items()}
  t4 = time.perf_counter()
  n_tokens = int(lengths.sum())
  metrics.update({k: float(v) for k, v in stats.items()})
  metrics.update({f"reward/{n}": float(R[:, j].mean()) for j, n in enumerate(names)})
  metrics.update(
    tokens=n_tokens,
    response_length=float(lengths.mean()),
    tokens_per_s=n_tokens / (t4 - t0),
    time_generate=t1 - t0,
    time_reward=t2 - t1,
    time_score=t3 - t2,
    time_update=t4 - t3,
  )
  return IterationResult(state, metrics, responses, R)


def value_names(values: Sequence[Any]) -> list[str]:
  """The names of reward values given as names or as callables (their `name`, else value_i)."""
  return [v if isinstance(v, str) else getattr(v, "name", f"value_{i}") for i, v in enumerate(values)]


class PPOMethod:
  """PPO toward λᵀr as a `map_jax.align.trainer.Method`: the examples are prompts, a step is one `iteration`.

  Args:
    model: a `LoadedModel` (config, params, tokenizer); its params are both the starting policy and the frozen
      reference p0. Tokenizer None: prompts and responses are space-separated token ids.
    prompts: raw prompt texts.
    values: the m reward values: callables `value(prompts, responses)`, or names for `get_reward`, which are
      loaded here and closed by `close`.
    lam: λ [m], e.g. `solve_dual(R_pilot, palette).lam`.
    cfg: PPO hyperparameters; run: the loop's settings (batch size, prompt length, chat, mesh).
  """

  name = "PPO"
  progress_keys = ("score", "kl")

  def __init__(self, model, prompts: Sequence[str], values: Sequence[Any], lam, cfg: PPOConfig, run):
    from map_jax.models import tokenizer as tok_lib
    from map_jax.rewards import get_reward
    from map_jax.sampling import _eos_ids

    self.module, tokenizer = model.config.module(lora=cfg.lora), model.tokenizer
    self.lam = [float(x) for x in np.asarray(lam, np.float64).reshape(-1)]
    if len(self.lam) != len(values):
      raise ValueError(f"lam has {len(self.lam)} entries but {len(values)} values were given")
    self.mesh = parallel.make_mesh(run.mesh_data, run.mesh_fsdp)
    parallel.check_batch_size(run.batch_size, self.mesh, "run.batch_size")
    cfg.validate(run.batch_size)
    context = self.module.config.max_position_embeddings
    if run.max_prompt_tokens + cfg.max_new_tokens > context:
      raise ValueError(
        f"max_prompt_tokens={run.max_prompt_tokens} + max_new_tokens={cfg.max_new_tokens} exceeds "
        f"the model's context of {context}"
      )
    self.cfg, self.run, self.prompts = cfg, run, list(prompts)
    self.ids = trainer.encode_prompts(tokenizer, self.prompts, run.chat, run.max_prompt_tokens)
    self.decode = trainer.text_codec(tokenizer, run.chat)[1]
    self.eos = _eos_ids(self.module, tokenizer, None)
    self.pad_id = tok_lib.pad_id(tokenizer)
    self.pad_left = tok_lib.pad_left
    self.num_examples = len(self.prompts)
    self.value_names = value_names(values)
    self.record = {
      "ppo": dataclasses.asdict(cfg),
      "lam": self.lam,
      "values": self.value_names,
      "num_prompts": len(self.prompts),
      "prompts_hash": trainer.texts_hash(self.prompts),
    }
    self.shardings = state_shardings(self.module, cfg, self.mesh)
    self.model_params = nn.meta.unbox(model.params)
    self.ref = parallel.shard(self.model_params, base_shardings(self.module, self.mesh))
    self._loaded = [isinstance(v, str) for v in values]
    self.fns = [get_reward(v) if isinstance(v, str) else v for v in values]

  def abstract_state(self) -> TrainState:
    return abstract_state(self.module, self.cfg)

  def state_shardings(self) -> TrainState:
    return self.shardings

  def init_state(self, key: jax.Array) -> TrainState:
    return compile_init(self.module, self.cfg, self.mesh)(self.model_params, key)

  def step(self, state: TrainState, indices: np.ndarray, step: int) -> tuple[TrainState, dict]:
    tokens, mask = self.pad_left([self.ids[i] for i in indices], self.pad_id, length=self.run.max_prompt_tokens)
    try:
      res = iteration(
        self.module,
        state,
        self.ref,
        [self.prompts[i] for i in indices],
        tokens,
        mask,
        self.fns,
        self.lam,
        self.cfg,
        mesh=self.mesh,
        step=step,
        detokenize=self.decode,
        eos_ids=self.eos,
        pad_id=self.pad_id,
      )
    except ValueError as e:
      if "non-finite" not in str(e):
        raise
      raise trainer.NonFiniteStep(str(e)) from e
    return res.state, res.metrics

  def policy_params(self, state: TrainState):
    """The policy's params; with LoRA the adapters merged into the base (`lora.merge`), a plain checkpoint."""
    if self.cfg.lora is None:
      return state.params["policy"]
    return lora_lib.merge(lm_params(state.params["policy"], self.ref), self.cfg.lora)

  def close(self) -> None:
    for loaded, fn in zip(self._loaded, self.fns):
      if loaded:
        fn.close()  # a reward model this run loaded
