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
what is DPO's own: the batch, the loss, one update and `DPOMethod`, which runs them on that loop.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from map_jax import parallel
from map_jax.align import lora as lora_lib
from map_jax.align import trainer
from map_jax.align.trainer import TrainState
from map_jax.models.layers import ATTENTION_AND_MLP, LoRA
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


def loss_fn(params, module, batch: PreferenceBatch, ref_logps: tuple[jax.Array, jax.Array], beta: float, base=None):
  """(loss, metrics) of the policy `params` on a batch, the reference's log-probs given; with LoRA `params` are
  the adapters and `base` the frozen weights they apply to."""
  chosen, rejected = sequence_logps(module, params if base is None else lora_lib.combine(base, params), batch)
  metrics = dpo_loss(chosen, rejected, ref_logps[0], ref_logps[1], beta)
  return metrics.loss, metrics


@dataclasses.dataclass(frozen=True)
class DPOConfig:
  """beta: the KL strength β of the loss; learning_rate, adam_eps, max_grad_norm: the optimiser (AdamW after
  global-norm clipping); max_response_tokens: responses are cut to (and padded to) this many tokens.
  lora_rank, lora_alpha, lora_targets: rank-r adapters on the named projections instead of every weight (0:
  every weight trains); the frozen base is then also the reference (see `map_jax.align.ppo.PPOConfig`)."""

  beta: float = 0.1
  learning_rate: float = 5e-6
  adam_eps: float = 1e-8
  max_grad_norm: float = 1.0
  max_response_tokens: int = 64
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ATTENTION_AND_MLP

  def __post_init__(self):
    object.__setattr__(self, "lora_targets", tuple(self.lora_targets))

  @property
  def lora(self) -> LoRA | None:
    return lora_lib.settings(self.lora_rank, self.lora_alpha, self.lora_targets)

  def validate(self) -> None:
    lora_lib.settings(self.lora_rank, self.lora_alpha, self.lora_targets)
    if not self.beta > 0:
      raise ValueError(f"beta must be > 0, got {self.beta}")
    if self.max_response_tokens < 1:
      raise ValueError(f"max_response_tokens must be >= 1, got {self.max_response_tokens}")


def make_optimizer(cfg: DPOConfig) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adamw(cfg.learning_rate, eps=cfg.adam_eps))


def update(
  state: TrainState, ref_params, batch: PreferenceBatch, *, module, optimizer, beta: float, adapters: bool = False
):
  """One DPO step: (new state, `DPOMetrics`). The reference's log-probs are computed under `stop_gradient`.
  adapters: the state holds LoRA adapters over the frozen `ref_params` (see `DPOConfig`)."""
  ref = jax.lax.stop_gradient(sequence_logps(module, ref_params, batch))
  base = ref_params if adapters else None
  grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, module, batch, ref, beta, base)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  return state.replace(
    step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
  ), metrics


class DPOMethod:
  """DPO as a `map_jax.align.trainer.Method`: the examples are (prompt, chosen, rejected) texts, a step is one
  `update` on `run.batch_size` of them; the reference is the model as given, held fixed.

  Args:
    model: a `LoadedModel` (tokenizer None: texts are space-separated token ids).
    pairs: (prompt, chosen response, rejected response) triples.
    cfg: `DPOConfig`; run: the loop's settings (batch size, prompt length, chat template, mesh).
  """

  name = "DPO"
  progress_keys = ("loss", "accuracy")

  def __init__(self, model, pairs: Sequence[tuple[str, str, str]], cfg: DPOConfig, run):
    from map_jax.models import tokenizer as tok_lib
    from map_jax.models.loading import abstract_params

    cfg.validate()
    self.cfg, self.run = cfg, run
    self.module = model.config.module(lora=cfg.lora)
    pairs = [tuple(p) for p in pairs]
    if not pairs or any(len(p) != 3 or not all(isinstance(t, str) for t in p) for p in pairs):
      raise ValueError("pairs must be a non-empty list of (prompt, chosen, rejected) texts")
    self.mesh = parallel.make_mesh(run.mesh_data, run.mesh_fsdp)
    parallel.check_batch_size(run.batch_size, self.mesh, "run.batch_size")
    tokenizer = model.tokenizer
    self.prompt_ids = trainer.encode_prompts(tokenizer, [p[0] for p in pairs], run.chat, run.max_prompt_tokens)
    responses = [p[1] for p in pairs] + [p[2] for p in pairs]
    if tokenizer is None:
      ids = [[int(t) for t in r.split()] for r in responses]
    else:
      ids = tok_lib.encode(tokenizer, responses, add_special_tokens=False)
    ids = [r[: cfg.max_response_tokens] for r in ids]
    self.chosen_ids, self.rejected_ids = ids[: len(pairs)], ids[len(pairs) :]
    self.pad_id = tok_lib.pad_id(tokenizer)
    self.pad_left, self.pad_right = tok_lib.pad_left, tok_lib.pad_right
    self.num_examples = len(pairs)
    self.record = {
      "dpo": dataclasses.asdict(cfg),
      "num_pairs": len(pairs),
      "pairs_hash": trainer.texts_hash([t for p in pairs for t in p]),
    }
    optimizer = make_optimizer(cfg)
    base = parallel.param_shardings(abstract_params(model.config), self.mesh)
    trained = base if cfg.lora is None else parallel.param_shardings(lora_lib.abstract_adapters(self.module), self.mesh)

    def fresh(p, key):  # p: the model's weights; with LoRA the state trains fresh adapters over them instead
      p = nn.meta.unbox(p) if cfg.lora is None else nn.meta.unbox(lora_lib.init_adapters(self.module, key))
      return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p), key=key)

    self._abstract = jax.eval_shape(fresh, abstract_params(model.config), jax.random.key(0))
    rep = parallel.replicated(self.mesh)
    opt = parallel.opt_state_shardings(optimizer, self._abstract.opt_state, trained, self.mesh)
    self.shardings = TrainState(step=rep, params=trained, opt_state=opt, key=rep)
    self.ref = parallel.shard(nn.meta.unbox(model.params), base)
    self._init = jax.jit(fresh, out_shardings=self.shardings)
    rows = parallel.batch_sharding(self.mesh)
    self._update = jax.jit(
      functools.partial(update, module=self.module, optimizer=optimizer, beta=cfg.beta, adapters=cfg.lora is not None),
      in_shardings=(self.shardings, base, rows),
      out_shardings=(self.shardings, rep),
      donate_argnums=(0,),
    )

  def abstract_state(self) -> TrainState:
    return self._abstract

  def state_shardings(self) -> TrainState:
    return self.shardings

  def init_state(self, key: jax.Array) -> TrainState:
    return self._init(self.ref, key)  # the key draws LoRA's A; without adapters DPO draws nothing at random

  def step(self, state: TrainState, indices: np.ndarray, step: int) -> tuple[TrainState, dict]:
    del step
    pt, pm = self.pad_left([self.prompt_ids[i] for i in indices], self.pad_id, length=self.run.max_prompt_tokens)
    C = self.cfg.max_response_tokens
    ct, cm = self.pad_right([self.chosen_ids[i] for i in indices], self.pad_id, length=C)
    rt, rm = self.pad_right([self.rejected_ids[i] for i in indices], self.pad_id, length=C)
    batch = jax.device_put(PreferenceBatch(pt, pm, ct, cm, rt, rm), parallel.batch_sharding(self.mesh))
    state, metrics = self._update(state, self.ref, batch)
    return state, {k: float(v) for k, v in metrics._asdict().items()}

  def policy_params(self, state: TrainState):
    """The policy's params; with LoRA the adapters merged into the base (`lora.merge`), a plain checkpoint."""
    if self.cfg.lora is None:
      return state.params
    return lora_lib.merge(lora_lib.combine(self.ref, state.params), self.cfg.lora)

  def close(self) -> None:
    pass


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


def mix_pairs(size_a: int, size_b: int, alpha: float, num: int, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """`num` pairs drawn without replacement from two sets of `size_a` and `size_b` pairs: round(α·num) from b.

  Returns:
    (source [num] 0 for a / 1 for b, index [num] into that source's pairs).
  """
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha}")
  from_b = int(round(alpha * num))
  from_a = num - from_b
  if from_a > size_a or from_b > size_b:
    raise ValueError(f"asked for {from_a} + {from_b} pairs; the sets hold {size_a} and {size_b}")
  ka, kb = jax.random.split(key)
  ia = np.asarray(jax.random.permutation(ka, size_a))[:from_a]
  ib = np.asarray(jax.random.permutation(kb, size_b))[:from_b]
  return np.r_[np.zeros(from_a, np.int64), np.ones(from_b, np.int64)], np.r_[ia, ib]


__all__ = [
  "DPOConfig",
  "DPOMethod",
  "DPOMetrics",
  "Pairs",
  "PreferenceBatch",
  "dpo_loss",
  "loss_fn",
  "make_optimizer",
  "mix_pairs",
  "preference_pairs",
  "sequence_logps",
  "update",
]
