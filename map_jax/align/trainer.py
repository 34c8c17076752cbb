"""The one fine-tuning loop, method-agnostic: data order, checkpoints and bitwise resume, sharding, logs, NaN stop.

A method (`Method`: PPO in `map_jax.align.ppo`, DPO next) supplies its state, its shardings and one step on a
batch of example indices; `train` runs `num_steps` such steps of `batch_size` examples each:

    workdir/
      metrics.jsonl    one line per step: the method's metrics (for PPO: reward/<value>, score, kl, losses, ...)
      tb/              the same scalars for TensorBoard
      checkpoints/S/   orbax state + metadata every `checkpoint_every` steps and at the end
      params/          the fine-tuned policy (orbax; `map_jax.models.loading.restore_params(path, config)`)

Run it again with the same workdir and it resumes from the newest checkpoint (bitwise identically on CPU, see
`map_jax.checkpoint`); a different config (the method's record or the loop's) is refused with the differing
fields named. A non-finite reward, loss or metric stops the run with a `TrainingError` before anything is
saved, so the newest checkpoint is the last good state. Nothing here knows which method it runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import chex
import jax
import numpy as np

from map_jax import store
from map_jax.checkpoint import Checkpointer

# Fields that may change when resuming a run: how long it runs, how often it saves and on how many devices
# (orbax reshards the state onto the new mesh), not what it learns.
RESUMABLE = (
  "run.num_steps",
  "run.checkpoint_every",
  "run.keep_checkpoints",
  "run.progress",
  "run.tensorboard",
  "run.mesh_data",
  "run.mesh_fsdp",
)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """The loop around a method.

  num_steps: steps (for PPO, one rollout of `batch_size` prompts and its update each).
  batch_size: examples per step; a multiple of the mesh's batch devices (and of PPO's
    num_minibatches × grad_accum).
  seed: seeds the run's PRNG key and the prompt order.
  max_prompt_tokens: prompts are left-padded (or cut from the left) to this many tokens: one compiled shape.
  chat: wrap prompts in the tokenizer's chat template (instruct models).
  checkpoint_every: save every N steps (0: only at the end); keep_checkpoints: how many to keep.
  mesh_data, mesh_fsdp: mesh axis sizes for `parallel.make_mesh` (-1: the remaining devices).
  progress: show a progress bar; tensorboard: also write TensorBoard events (tensorboardX imports PyTorch
    when it is installed, seconds of start-up that tests skip).
  """

  num_steps: int = 10
  batch_size: int = 8
  seed: int = 0
  max_prompt_tokens: int = 64
  chat: bool = True
  checkpoint_every: int = 0
  keep_checkpoints: int = 2
  mesh_data: int = 1
  mesh_fsdp: int = -1
  progress: bool = False
  tensorboard: bool = True


@chex.dataclass(frozen=True)
class TrainState:
  """Everything a method's update changes, and what the loop checkpoints (PPO: params = {"policy": LM params,
  "value": {...}}; DPO: the policy's params)."""

  step: jax.Array  # int32 scalar: updates applied so far
  params: Any  # plain (unboxed) arrays
  opt_state: Any  # optax state of the AdamW chain over `params`
  key: jax.Array  # the run's PRNG key; iteration i uses fold_in(key, i), so resuming needs only (key, i)


class TrainingError(RuntimeError):
  """A step gave a non-finite reward or loss; the run stopped and its newest checkpoint is the last good one."""


class TrainResult(NamedTuple):
  """state: the method's final state; params: the policy's plain params; history: per-step metrics (this
  process's steps only); params_dir: where the policy was saved (None without a workdir)."""

  state: Any
  params: Any
  history: list[dict]
  params_dir: str | None


def prompt_order(num_prompts: int, seed: int, position: int, count: int) -> np.ndarray:
  """Indices of the `count` prompts after the first `position` of an endless stream of seeded shuffles.

  Epoch e is `default_rng((seed, e)).permutation(num_prompts)`; the stream is a function of (seed, position)
  alone, which is what a resumed run restores.
  """
  out = []
  while len(out) < count:
    epoch, offset = divmod(position, num_prompts)
    perm = np.random.default_rng((seed, epoch)).permutation(num_prompts)
    take = perm[offset : offset + count - len(out)]
    out.extend(take.tolist())
    position += len(take)
  return np.asarray(out, np.int64)


class MetricWriter:
  """Per-step scalars to `workdir/metrics.jsonl` and TensorBoard (`workdir/tb`); resuming at step s drops
  the lines of later steps that the crashed run wrote, so the log reads as one run."""

  def __init__(self, workdir: str, start_step: int = 0, tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(self.path):  # a line torn by the kill is dropped with the later steps
      kept = [rec for rec in store.read_jsonl(self.path) if rec["step"] <= start_step]
      store.write_jsonl(self.path, kept)
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start_step + 1 if start_step else None)

  def write(self, step: int, metrics: dict) -> None:
    store.append_jsonl(self.path, {"step": step, **metrics})
    for k, v in metrics.items():
      if self._tb is not None and isinstance(v, (int, float)):
        self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def text_codec(tokenizer, chat: bool):
  """(encode prompts -> id lists, decode id lists -> texts). Without a tokenizer, text is space-separated ids
  ("3 17 5"): tiny random models and synthetic rewards in tests use that."""
  if tokenizer is None:
    return (lambda ps: [[int(t) for t in p.split()] for p in ps], lambda ids: [" ".join(map(str, t)) for t in ids])
  from map_jax.sampling import _prompt_ids

  return (
    lambda ps: _prompt_ids(tokenizer, list(ps), chat),
    lambda ids: tokenizer.batch_decode(ids, skip_special_tokens=True),
  )


def encode_prompts(tokenizer, prompts: Sequence[str], chat: bool, max_tokens: int) -> list[list[int]]:
  """Token ids of each prompt (chat template applied if `chat`), cut to its last `max_tokens` tokens: the end
  holds the template's assistant-turn marker, which the response must follow."""
  ids = [p[-max_tokens:] for p in text_codec(tokenizer, chat)[0](prompts)]
  if any(len(p) == 0 for p in ids):
    raise ValueError("every prompt needs at least one token")
  return ids


class NonFiniteStep(ValueError):
  """Raised by a method's step when a reward or loss is not finite; `train` turns it into a `TrainingError`."""


class Method(Protocol):
  """What a fine-tuning method gives the loop.

  name: shown in progress bars and errors ("PPO"). record: the method's settings and the identity of its data
  (JSON-able), saved with every checkpoint and compared on resume. num_examples: how many examples (prompts,
  preference pairs) the steps draw batches from, in the loop's seeded order. progress_keys: metrics shown on the
  progress bar.
  """

  name: str
  record: dict
  num_examples: int
  progress_keys: tuple[str, ...]

  def abstract_state(self) -> Any:
    """The state's shapes and dtypes (`jax.eval_shape`), for restoring a checkpoint."""

  def state_shardings(self) -> Any:
    """The state's shardings over the method's mesh."""

  def init_state(self, key: jax.Array) -> Any:
    """A fresh state (sharded), from the model the method was built with."""

  def step(self, state: Any, indices: np.ndarray, step: int) -> tuple[Any, dict]:
    """One step on the examples `indices`: (new state, host-side float metrics). The state is donated.
    Raises `NonFiniteStep` when a reward or loss is not finite."""

  def policy_params(self, state: Any) -> Any:
    """The policy's params in `state`."""

  def close(self) -> None:
    """Release what the method loaded for the run (reward models, ...)."""


def train(
  method: Method,
  run: RunConfig,
  workdir: str | None = None,
  *,
  config_record: dict | None = None,
  on_step: Callable[[int, dict], None] | None = None,
) -> TrainResult:
  """Run `method` for `run.num_steps` steps, resuming from `workdir` if it holds a run (see the module docstring).

  Args:
    method: the method, built for one model and one data set.
    run: the loop's settings.
    workdir: where metrics, checkpoints and the final params go (None: nothing is written, no resume).
    config_record: extra fields (e.g. the model name) saved with checkpoints and checked on resume.
    on_step: called as on_step(step, metrics) after each step's checkpoint.

  Returns:
    `TrainResult`. The method is closed when the loop ends, whatever the outcome.

  Raises:
    TrainingError: a non-finite reward, loss or metric (message: step, cause, newest checkpoint).
    map_jax.checkpoint.ConfigMismatchError: workdir holds a run with a different config.
  """
  record = {**method.record, "run": dataclasses.asdict(run), **(config_record or {})}
  ckpt = (
    Checkpointer(
      os.path.join(workdir, "checkpoints"),
      every=run.checkpoint_every,
      config=record,
      resumable=RESUMABLE,
      max_to_keep=run.keep_checkpoints,
    )
    if workdir
    else None
  )
  writer = None
  history: list[dict] = []
  try:
    step, position = 0, 0
    if ckpt is not None and ckpt.latest_step() is not None:
      state, meta = ckpt.restore(method.abstract_state(), method.state_shardings())
      step, position = int(meta["step"]), int(meta["data_position"])
    else:
      state = method.init_state(jax.random.key(run.seed))
    writer = MetricWriter(workdir, step, run.tensorboard) if workdir else None
    steps = range(step, run.num_steps)
    if run.progress:
      from tqdm.auto import tqdm

      steps = tqdm(steps, desc=method.name, unit="step", initial=step, total=run.num_steps)
    for step in steps:
      idx = prompt_order(method.num_examples, run.seed, position, run.batch_size)
      try:
        state, metrics = method.step(state, idx, step)
      except NonFiniteStep as e:
        raise TrainingError(_stopped(method.name, step + 1, str(e), ckpt)) from e
      bad = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
      if bad:
        cause = f"non-finite {', '.join(bad)} (loss {metrics.get('loss')})"
        raise TrainingError(_stopped(method.name, step + 1, cause, ckpt))
      position += run.batch_size
      history.append(metrics)
      if writer:
        writer.write(step + 1, metrics)
      if ckpt:
        ckpt.save(step + 1, state, data_position=position)
      if run.progress:
        steps.set_postfix({k: f"{metrics[k]:.3f}" for k in method.progress_keys if k in metrics})
      if on_step:
        on_step(step + 1, metrics)
    if ckpt:
      ckpt.save(run.num_steps, state, data_position=position, force=True)
  finally:
    if ckpt:
      ckpt.close()
    if writer:
      writer.close()
    method.close()
  params = method.policy_params(state)
  params_dir = None
  if workdir:
    from map_jax.models.loading import save_params

    params_dir = os.path.join(os.path.abspath(workdir), "params")
    if os.path.isdir(params_dir):
      shutil.rmtree(params_dir)
    save_params(params_dir, params)
  return TrainResult(state, params, history, params_dir)


def texts_hash(texts: Sequence[str]) -> str:
  """A short hash of a list of texts (the identity of a run's data in its checkpoint record)."""
  h = hashlib.sha1()
  for t in texts:
    h.update(t.encode() + b"\x00")
  return h.hexdigest()[:16]


def _stopped(name: str, step: int, cause: str, ckpt: Checkpointer | None) -> str:
  last = ckpt.latest_step() if ckpt is not None else None
  where = (
    f"the newest checkpoint, step {last} in {ckpt.directory}, is the last good state"
    if last is not None
    else "no checkpoint was written before it"
  )
  return f"{name} step {step} stopped: {cause}. Nothing of this step was saved; {where}."


__all__ = [
  "Method",
  "MetricWriter",
  "NonFiniteStep",
  "RunConfig",
  "TrainResult",
  "TrainState",
  "TrainingError",
  "encode_prompts",
  "prompt_order",
  "text_codec",
  "texts_hash",
  "train",
]
