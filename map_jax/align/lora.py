"""Low-rank adapters for fine-tuning: the frozen base shared by the policy and the reference, adapters trained.

A decoder built with `config.module(lora=LoRA(rank, alpha))` (`map_jax.models.layers.LoRA`) adds `lora_a` and
`lora_b` beside the kernel of each targeted projection. Its params split in two trees of one nesting:

    base      the checkpoint's weights, frozen; applied alone (no adapter leaves) they are exactly p0
    adapters  only the `lora_a`/`lora_b` leaves: what the optimizer updates, what checkpoints hold

`combine(base, adapters)` is the policy. For a 7B model with rank 16 on every projection the adapters are
40M parameters (0.6%): their Adam moments and checkpoints cost megabytes, and the reference model costs
nothing beyond the base the policy already holds. `merge` folds the adapters into the kernels
(W + (α / r)·A B) for export: a plain checkpoint of the base architecture that loads and samples anywhere.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from map_jax.models.layers import LoRA

ADAPTER_LEAVES = ("lora_a", "lora_b")


def settings(rank: int, alpha: float, targets) -> LoRA | None:
  """A method config's adapter fields as a `LoRA` (None for rank 0: every weight trains)."""
  if rank < 0:
    raise ValueError(f"lora_rank must be >= 0 (0: no adapters), got {rank}")
  return LoRA(int(rank), float(alpha), tuple(targets)) if rank else None


def _is_adapter(path) -> bool:
  return bool(path) and getattr(path[-1], "key", None) in ADAPTER_LEAVES


def _prune(tree: Any, keep) -> Any:
  """The nested dict `tree` with only the leaves where keep(path) holds; emptied dicts dropped."""

  def walk(node, path):
    if not isinstance(node, dict):
      return node if keep(path) else None
    out = {}
    for k, v in node.items():
      sub = walk(v, path + (jax.tree_util.DictKey(k),))
      if sub is not None and not (isinstance(sub, dict) and not sub):
        out[k] = sub
    return out

  return walk(tree, ())


def split(params: Any) -> tuple[Any, Any]:
  """(base, adapters): the params without and with only their `lora_a`/`lora_b` leaves (same nesting)."""
  return _prune(params, lambda p: not _is_adapter(p)), _prune(params, _is_adapter)


def combine(base: Any, adapters: Any) -> Any:
  """The full params of the adapted model: `adapters`' leaves added into `base`'s nesting (no copy of base)."""
  if not isinstance(adapters, dict):
    raise ValueError("adapters must be a nested dict of lora_a/lora_b leaves")
  out = dict(base)
  for k, v in adapters.items():
    if isinstance(v, dict):
      if k not in base or not isinstance(base[k], dict):
        raise ValueError(f"adapter path {k!r} is not in the base model's params")
      out[k] = combine(base[k], v)
    elif k in ADAPTER_LEAVES:
      out[k] = v
    else:
      raise ValueError(f"{k!r} is not an adapter leaf ({', '.join(ADAPTER_LEAVES)})")
  return out


def init_adapters(module: nn.Module, key: jax.Array) -> Any:
  """Fresh adapters of a LoRA module (`module.lora` set): A random, B zero, so the model starts as its base.

  Boxed with logical axis names (unbox with `nn.meta.unbox`). Traced under `jit`, the base weights that `init`
  also draws are dead code and never allocated.
  """
  if getattr(module, "lora", None) is None:
    raise ValueError("the module has no LoRA: build it with config.module(lora=LoRA(...))")
  return split(module.init(key, jnp.zeros((1, 1), jnp.int32))["params"])[1]


def abstract_adapters(module: nn.Module) -> Any:
  """Shapes, dtypes and logical-axis boxes of the module's adapters, without allocating anything."""
  return jax.eval_shape(lambda: init_adapters(module, jax.random.key(0)))


def num_params(tree: Any) -> int:
  """How many numbers a (possibly abstract or boxed) param tree holds."""
  return sum(int(x.size) for x in jax.tree.leaves(nn.meta.unbox(tree)))


def merge(params: Any, lora: LoRA) -> Any:
  """Fold the adapters into the kernels: kernel + (α / r)·A B, in the kernel's dtype; adapter leaves dropped.

  `params` are the combined (plain) params of a module built with `lora`. Leading axes shared by the kernel
  and its adapters (the scanned "layers" axis) are batch axes of the product.
  """

  def walk(node):
    if not isinstance(node, dict):
      return node
    if "lora_a" in node:
      kernel, a, b = node["kernel"], node["lora_a"], node["lora_b"]
      lead = a.ndim + b.ndim - 2 - kernel.ndim
      n_in = a.ndim - 1 - lead
      am = a.reshape(a.shape[:lead] + (-1, a.shape[-1])).astype(jnp.float32)
      bm = b.reshape(b.shape[: lead + 1] + (-1,)).astype(jnp.float32)
      delta = (am @ bm).reshape(a.shape[: lead + n_in] + b.shape[lead + 1 :])
      merged = (kernel.astype(jnp.float32) + lora.scale * delta).astype(kernel.dtype)
      return {k: v for k, v in node.items() if k not in ADAPTER_LEAVES} | {"kernel": merged}
    return {k: walk(v) for k, v in node.items()}

  return walk(params)


__all__ = [
  "ADAPTER_LEAVES",
  "LoRA",
  "abstract_adapters",
  "combine",
  "init_adapters",
  "merge",
  "num_params",
  "settings",
  "split",
]
