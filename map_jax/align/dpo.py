r"""DPO (direct preference optimisation): the loss, its update, and preference pairs from a scored pilot set.

For a prompt x with a chosen response y⁺ and a rejected one y⁻, the policy π and a frozen reference π_ref,

.. math::

   h = β\,[(\log π(y⁺|x) − \log π_{ref}(y⁺|x)) − (\log π(y⁻|x) − \log π_{ref}(y⁻|x))],
   \qquad \mathcal{L} = −\log σ(h),

averaged over the batch (Rafailov et al., 2023). Its gradient pushes the chosen log-ratio up and the rejected
one down, weighted by σ(−h): pairs the policy already orders well contribute little. The sequence log-probs
come from the jitted scorer `map_jax.sampling.token_logprobs` (one forward pass over chosen and rejected rows
together); the reference's are computed once per batch and held fixed.

Preference pairs come from a scored pilot set (`preference_pairs`: per value, two responses to the same prompt,
the one with the higher reward chosen, when the rewards differ by at least a gap), or from any table with
chosen/rejected columns; `mix_pairs` draws a share α from a second set (the paper's DPO(β) on mixtures of
value-specific preference data).

The shared fine-tuning loop (checkpoints, resume, sharding, logs) is `map_jax.align.trainer`'s; this file holds
what is DPO's own: the batch, the loss and one update.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from map_jax.sampling import token_logprobs


class PreferenceBatch(NamedTuple):
  """B pairs as tokens: prompts [B, T] left-padded, chosen and rejected responses [B, C] right-padded."""

  prompt_tokens: jax.Array
  prompt_mask: jax.Array
  chosen_tokens: jax.Array
  chosen_mask: jax.Array
  rejected_tokens: jax.Array
  rejected_mask: jax.Array


class DPOMetrics(NamedTuple):
  """loss; accuracy: share of pairs with h > 0; margin: mean h / β (the implicit reward margin)."""

  loss: jax.Array
  accuracy: jax.Array
  margin: jax.Array


def sequence_logps(module, params, batch: PreferenceBatch) -> tuple[jax.Array, jax.Array]:
  """(log π(y⁺|x), log π(y⁻|x)), each [B], from one forward pass over the 2B rows."""
  prompts = jnp.concatenate([batch.prompt_tokens, batch.prompt_tokens])
  prompt_mask = jnp.concatenate([batch.prompt_mask, batch.prompt_mask])
  responses = jnp.concatenate([batch.chosen_tokens, batch.rejected_tokens])
  response_mask = jnp.concatenate([batch.chosen_mask, batch.rejected_mask])
  total, _ = token_logprobs(module, params, prompts, prompt_mask, responses, response_mask)
  B = batch.prompt_tokens.shape[0]
  return total[:B], total[B:]


def dpo_loss(
  policy_chosen: jax.Array,
  policy_rejected: jax.Array,
  ref_chosen: jax.Array,
  ref_rejected: jax.Array,
  beta: float,
) -> DPOMetrics:
  """The sigmoid DPO loss from sequence log-probs (each [B]); see the module docstring."""
  h = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
  return DPOMetrics(
    loss=-jnp.mean(jax.nn.log_sigmoid(h)),
    accuracy=jnp.mean((h > 0).astype(h.dtype)),
    margin=jnp.mean(h) / beta,
  )


def loss_fn(params, module, batch: PreferenceBatch, ref_logps: tuple[jax.Array, jax.Array], beta: float):
  """(loss, metrics) of the policy `params` on a batch, the reference's log-probs given."""
  chosen, rejected = sequence_logps(module, params, batch)
  metrics = dpo_loss(chosen, rejected, ref_logps[0], ref_logps[1], beta)
  return metrics.loss, metrics


def make_update(module, optimizer: optax.GradientTransformation, beta: float):
  """A jitted `update(params, opt_state, ref_params, batch) -> (params, opt_state, metrics)`.

  The reference's log-probs are computed inside, under `stop_gradient`, so one call is one DPO step.
  """

  @jax.jit
  def update(params, opt_state, ref_params, batch: PreferenceBatch):
    ref = jax.lax.stop_gradient(sequence_logps(module, ref_params, batch))
    grads, metrics = jax.grad(loss_fn, has_aux=True)(params, module, batch, ref, beta)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  return update


# --------------------------------------------------------------------------------------------- preference data


class Pairs(NamedTuple):
  """Preference pairs over a table of responses: rows `chosen[i]` and `rejected[i]` answer the same prompt."""

  chosen: np.ndarray  # [P] row indices
  rejected: np.ndarray  # [P] row indices
  gap: np.ndarray  # [P] reward of chosen − reward of rejected (> 0)


def preference_pairs(prompt_index: Sequence[int], rewards: Sequence[float], *, min_gap: float = 0.0) -> Pairs:
  """Every pair of responses to the same prompt whose rewards differ by more than `min_gap`, higher chosen.

  Args:
    prompt_index: [n] the prompt each response answers (e.g. a pilot table's `prompt_index`).
    rewards: [n] one value's rewards of the same rows.
    min_gap: the smallest reward difference that makes a pair (ties never do).

  Returns:
    `Pairs`, ordered by prompt, then by the rows' order.
  """
  idx = np.asarray(prompt_index)
  r = np.asarray(rewards, np.float64)
  if idx.shape != r.shape or idx.ndim != 1:
    raise ValueError(f"prompt_index {idx.shape} and rewards {r.shape} must be two vectors of one length")
  if not np.all(np.isfinite(r)):
    raise ValueError(f"rewards hold non-finite values at rows {np.flatnonzero(~np.isfinite(r))[:5].tolist()}")
  if not min_gap >= 0:
    raise ValueError(f"min_gap must be >= 0, got {min_gap}")
  chosen, rejected = [], []
  for p in np.unique(idx):
    rows = np.flatnonzero(idx == p)
    a, b = np.triu_indices(len(rows), k=1)
    a, b = rows[a], rows[b]
    keep = np.abs(r[a] - r[b]) > min_gap
    a, b = a[keep], b[keep]
    better = r[a] > r[b]
    chosen.append(np.where(better, a, b))
    rejected.append(np.where(better, b, a))
  chosen = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
  rejected = np.concatenate(rejected) if rejected else np.zeros(0, np.int64)
  return Pairs(chosen, rejected, r[chosen] - r[rejected])


def mix_pairs(a: Pairs, b: Pairs, alpha: float, num: int, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """`num` pairs drawn without replacement, round(α·num) of them from `b` and the rest from `a`.

  Returns:
    (source [num] 0 for a / 1 for b, index [num] into that source's pairs).
  """
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha}")
  from_b = int(round(alpha * num))
  from_a = num - from_b
  if from_a > len(a.chosen) or from_b > len(b.chosen):
    raise ValueError(f"asked for {from_a} + {from_b} pairs; the sets hold {len(a.chosen)} and {len(b.chosen)}")
  ka, kb = jax.random.split(key)
  ia = np.asarray(jax.random.permutation(ka, len(a.chosen)))[:from_a]
  ib = np.asarray(jax.random.permutation(kb, len(b.chosen)))[:from_b]
  return np.r_[np.zeros(from_a, np.int64), np.ones(from_b, np.int64)], np.r_[ia, ib]


__all__ = [
  "DPOMetrics",
  "Pairs",
  "PreferenceBatch",
  "dpo_loss",
  "loss_fn",
  "make_update",
  "mix_pairs",
  "preference_pairs",
  "sequence_logps",
]
