"""Orbax checkpoints of a training run: the whole TrainState plus JSON metadata, saved every N steps, resumable.

A checkpoint at step s is a directory `DIR/s/` with two items:

  state/   the TrainState as a tree of arrays: step, params (policy and value head or value LM), the optimizer
           state (Adam moments and counts) and the run's PRNG key (as raw key data)
  meta/    JSON: the step, the data position (prompts consumed so far), the run's flattened config and any
           extra fields the caller adds

Because every random draw of the trainer is a function of (key, step) and the data order a function of
(seed, position), restoring these is all a resumed run needs to continue exactly where it stopped: on CPU a run
killed and resumed ends bitwise identical to one that ran straight through.

A resume under a different config would silently mix two experiments, so `Checkpointer.restore` compares the
saved config with the current one and raises `ConfigMismatchError` naming every differing field (fields listed
in `resumable`, such as the number of steps, may change).

Saves go through `orbax.checkpoint.CheckpointManager`: written to a temporary directory and renamed when
complete, so a process killed mid-save leaves the previous checkpoint as the latest.

    >>> ckpt = Checkpointer("/tmp/run/checkpoints", every=100, config={"lr": 1e-6})
    >>> ckpt.save(100, state, data_position=800)
    >>> state, meta = ckpt.restore(abstract_state_with_shardings)
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import jax
import numpy as np

from map_jax.store import plain


class ConfigMismatchError(ValueError):
  """A resume was asked for under a config that differs from the checkpoint's; the message names the fields."""


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
  """Nested dicts (and dataclass-like `asdict` output) -> {"a.b.c": value}, with JSON-comparable leaves.

  Tuples become lists and numpy scalars Python numbers, so a config compares equal to its own JSON round trip.
  """
  out: dict[str, Any] = {}
  if isinstance(config, dict):
    for k, v in config.items():
      out.update(flatten_config(v, f"{prefix}{k}."))
    return out
  out[prefix[:-1]] = plain(config)
  return out


def config_diff(saved: dict[str, Any], current: dict[str, Any], resumable: Iterable[str] = ()) -> list[str]:
  """Lines "field: checkpoint X, now Y" for every flattened field that differs (fields in `resumable` excepted)."""
  skip = set(resumable)
  lines = []
  for k in sorted(set(saved) | set(current)):
    if k in skip:
      continue
    a, b = saved.get(k, "<absent>"), current.get(k, "<absent>")
    if a != b:
      lines.append(f"{k}: checkpoint {a!r}, now {b!r}")
  return lines


def _state_tree(state) -> dict:
  """TrainState -> dict of arrays orbax can write (the typed PRNG key as its raw uint32 data)."""
  return {
    "step": state.step,
    "params": state.params,
    "opt_state": state.opt_state,
    "key": jax.random.key_data(state.key),
  }


class Checkpointer:
  """Periodic orbax checkpoints of a TrainState with metadata; refuses to resume under a different config.

  Args:
    directory: where the step directories go (created if needed).
    every: save when step % every == 0 (0: only when `save(..., force=True)`, i.e. at the end).
    config: the run's config, nested or flat; saved with every checkpoint and checked on restore.
    resumable: flattened config fields that may differ on resume (e.g. "run.num_steps").
    max_to_keep: how many of the newest checkpoints to keep.
  """

  def __init__(self, directory: str, *, every: int, config: dict, resumable: Iterable[str] = (), max_to_keep: int = 2):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    self.directory = os.path.abspath(directory)
    self.every = int(every)
    self.config = flatten_config(config)
    self.resumable = tuple(resumable)
    # Saves are synchronous: the trainer donates the state to the next update, and a fault must find the
    # last checkpoint complete on disk. At one save per `every` steps the wait is small next to the steps.
    self._mgr = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False),
    )

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._mgr.latest_step()

  def should_save(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state, *, data_position: int, force: bool = False, **extra: Any) -> bool:
    """Save `state` at `step` if the interval says so (or `force`); returns whether it saved.

    `extra` fields (JSON-serialisable) go into the metadata next to the step, data position and config.
    """
    if not (force or self.should_save(step)) or step in self._mgr.all_steps():
      return False
    meta = dict(extra, step=int(step), data_position=int(data_position), config=self.config)
    args = self._ocp.args
    self._mgr.save(
      step, args=args.Composite(state=args.StandardSave(_state_tree(state)), meta=args.JsonSave(meta)), force=True
    )
    self._mgr.wait_until_finished()
    return True

  def read_meta(self, step: int | None = None) -> dict:
    """The metadata of checkpoint `step` (default: the latest)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint")
    return self._mgr.restore(step, args=self._ocp.args.Composite(meta=self._ocp.args.JsonRestore())).meta

  def check_config(self, meta: dict) -> None:
    """Raise ConfigMismatchError naming the fields where `meta`'s config differs from this run's."""
    diff = config_diff(meta.get("config", {}), self.config, self.resumable)
    if diff:
      raise ConfigMismatchError(
        f"{self.directory}: checkpoint at step {meta.get('step')} was written under a different config; "
        "refusing to resume. Differing fields:\n  "
        + "\n  ".join(diff)
        + "\nUse a new workdir, or restore the config it was run with."
      )

  def restore(self, like, shardings=None, step: int | None = None):
    """Restore the TrainState at `step` (default: the latest) after checking the config.

    Args:
      like: a TrainState of arrays or `jax.ShapeDtypeStruct`s giving the tree, shapes and dtypes
        (e.g. `ppo.abstract_state(module, cfg)`).
      shardings: a matching TrainState of `NamedSharding`s to restore straight onto the mesh; None restores
        onto the default device.

    Returns:
      (state, meta): the TrainState and the checkpoint's metadata dict.

    Raises:
      FileNotFoundError: no checkpoint; ConfigMismatchError: the saved config differs.
    """
    step = self.latest_step() if step is None else step
    meta = self.read_meta(step)
    self.check_config(meta)
    key_like = jax.eval_shape(jax.random.key_data, like.key)
    target = {"step": like.step, "params": like.params, "opt_state": like.opt_state, "key": key_like}
    shard_tree = None if shardings is None else _state_tree_shardings(shardings)
    abstract = jax.tree.map(
      lambda x, s=None: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
      target,
      *(() if shard_tree is None else (shard_tree,)),
    )
    args = self._ocp.args
    got = self._mgr.restore(step, args=args.Composite(state=args.StandardRestore(abstract))).state
    # Orbax gives back plain containers (tuples for optax's named tuples): refill the target's tree.
    tree = jax.tree.unflatten(jax.tree.structure(target), jax.tree.leaves(got))
    state = like.replace(
      step=tree["step"], params=tree["params"], opt_state=tree["opt_state"], key=jax.random.wrap_key_data(tree["key"])
    )  # the default (threefry) key impl
    return state, meta

  def close(self) -> None:
    """Wait for pending writes and release the manager."""
    self._mgr.wait_until_finished()
    self._mgr.close()


def _state_tree_shardings(shardings) -> dict:
  return {"step": shardings.step, "params": shardings.params, "opt_state": shardings.opt_state, "key": shardings.key}
