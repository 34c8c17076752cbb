"""Device meshes and shardings: the one place that decides how params, optimizer state and batches are laid out.

The mesh has two axes, both of which split the batch:

  data   pure data parallelism: every device along it holds a full copy of whatever `fsdp` does not split.
  fsdp   fully sharded data parallelism (ZeRO-3): every weight, its gradient and its Adam moments are split
         along their embedding dimension over this axis; XLA all-gathers a layer's weights just before use
         and reduce-scatters its gradient, so memory per device falls with the axis size.

A batch of B rows is split over data × fsdp devices, so B must be a multiple of their product. On one CPU
device the mesh is (1, 1) and every sharding is trivial, so the same program runs on a laptop, on 8 simulated
CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`, set before JAX starts) and on a GPU node.

Params carry logical axis names (`nn.LogicallyPartitioned` boxes from `map_jax.models`); `RULES` maps those
names to mesh axes. A dimension whose size the mesh axis does not divide is replicated instead, so odd shapes
(norm scales, a vocabulary of 49152 over 7 devices) never stop a run; they only cost memory.

Multi-host (several processes, one per host or per GPU): call `initialize_distributed()` first thing in every
process, before any other JAX call. `jax.devices()` then lists the devices of all hosts and `make_mesh` spans
them; each process feeds its own slice of the global batch (`jax.make_array_from_process_local_data`) or, as
the PPO trainer does, builds the same global batch on every host and lets `jax.device_put` keep the local part
(results go back to the host through `multihost_utils.process_allgather`).

    >>> mesh = make_mesh()                                  # all devices on the fsdp axis
    >>> params = shard(plain_params, param_shardings(boxed_params, mesh))
    >>> batch = jax.device_put(batch, batch_sharding(mesh))
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

DATA, FSDP = "data", "fsdp"
BATCH_AXES = (DATA, FSDP)

# Logical axis (see map_jax/models/layers.py) -> mesh axis. FSDP splits each weight along its embedding
# dimension only: every decoder weight has one, and the gathered slices stay contiguous in memory.
RULES: tuple[tuple[str, str | None], ...] = (
  ("embed", FSDP),
  ("mlp", None),
  ("heads", None),
  ("kv_heads", None),
  ("head_dim", None),
  ("vocab", None),
  ("layers", None),
  ("norm", None),
  ("positions", None),
  ("lora", None),
)


def initialize_distributed(**kwargs: Any) -> None:
  """Join a multi-host run: `jax.distributed.initialize(**kwargs)`, once per process, before other JAX calls.

  On managed clusters (SLURM, Cloud TPU, Kubernetes with the usual env vars) no arguments are needed; else pass
  `coordinator_address="host0:1234", num_processes=N, process_id=i`. A single-process run needs no call.
  """
  jax.distributed.initialize(**kwargs)


def make_mesh(data: int = 1, fsdp: int = -1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp) mesh over `devices` (default: all), with Auto axes so XLA propagates shardings.

  Args:
    data: size of the data-parallel axis; -1 takes the devices that `fsdp` leaves.
    fsdp: size of the fully sharded axis; -1 (default) takes the devices that `data` leaves.
    devices: the devices to use; defaults to `jax.devices()` (every host's, after `initialize_distributed`).

  Returns:
    A `jax.sharding.Mesh` with axis names ("data", "fsdp").
  """
  devices = list(devices) if devices is not None else jax.devices()
  n = len(devices)
  if data == -1 and fsdp == -1:
    raise ValueError("at most one of data, fsdp may be -1")
  if data == -1:
    data = n // fsdp
  if fsdp == -1:
    fsdp = n // data
  if data < 1 or fsdp < 1 or data * fsdp != n:
    raise ValueError(f"mesh data={data} × fsdp={fsdp} does not cover the {n} devices")
  # Auto axes: the models' gathers and reshapes need no out_sharding annotations (Explicit axes would).
  return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device (scalars, PRNG keys, metrics, small heads)."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows (axis 0) split over data × fsdp; the other axes whole. Use as a pytree prefix for a whole batch."""
  return NamedSharding(mesh, P(BATCH_AXES))


def batch_devices(mesh: Mesh) -> int:
  """How many slices a batch is cut into: the product of the data and fsdp axis sizes."""
  return mesh.shape[DATA] * mesh.shape[FSDP]


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
  """Raise a clear error unless `batch_size` rows split evenly over the mesh's batch axes."""
  n = batch_devices(mesh)
  if batch_size % n:
    raise ValueError(
      f"{what} {batch_size} is not a multiple of the {n} devices that split the batch "
      f"(mesh data={mesh.shape[DATA]} × fsdp={mesh.shape[FSDP]})"
    )


def _divisible_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """`spec` with every mesh axis that does not divide its dimension replaced by None (replicated)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = axes if isinstance(axes, tuple) else (axes,) if axes is not None else ()
    size = math.prod(mesh.shape[a] for a in names)
    out.append(axes if size and dim % size == 0 else None)
  return P(*out)


def param_shardings(params: Any, mesh: Mesh, rules: Sequence[tuple[str, str | None]] = RULES) -> Any:
  """NamedShardings for the unboxed version of `params`, from their logical axis names.

  Args:
    params: a param tree with `nn.LogicallyPartitioned` boxes (concrete, or abstract from `jax.eval_shape`);
      leaves without a box are replicated.
    mesh: the mesh from `make_mesh`.
    rules: logical axis -> mesh axis pairs; defaults to `RULES` (FSDP along "embed").

  Returns:
    A tree shaped like `nn.meta.unbox(params)` with a `NamedSharding` at every leaf.
  """
  specs = nn.get_partition_spec(params)
  plain = nn.meta.unbox(params)

  def one(spec, leaf):
    mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules) if len(spec) else P()
    return NamedSharding(mesh, _divisible_spec(mesh_spec, tuple(np.shape(leaf)), mesh))

  return jax.tree.map(one, specs, plain, is_leaf=lambda x: isinstance(x, P))


def opt_state_shardings(tx: optax.GradientTransformation, abstract_opt_state: Any, shardings: Any, mesh: Mesh) -> Any:
  """Shardings for an optimizer state: every copy of the param tree in it (Adam's moments) is laid out as
  the params are (`shardings`); its other leaves (step counts) are replicated."""
  return optax.tree_map_params(
    tx, lambda _, s: s, abstract_opt_state, shardings, transform_non_params=lambda _: replicated(mesh)
  )


def shard(tree: Any, shardings: Any) -> Any:
  """Place (or move) a tree of arrays onto the mesh: `jax.device_put` with a matching tree (or prefix)."""
  return jax.device_put(tree, shardings)
