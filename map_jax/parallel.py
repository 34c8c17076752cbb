"""Device meshes and shardings: the one place that decides how params, optimizer state and batches are laid out.

The mesh has three axes; the first two split the batch:

  data    pure data parallelism: every device along it holds a full copy of whatever `fsdp` does not split.
  fsdp    fully sharded data parallelism (ZeRO-3): every weight, its gradient and its Adam moments are split
          along their embedding dimension over this axis; XLA all-gathers a layer's weights just before use
          and reduce-scatters its gradient, so memory per device falls with the axis size.
  tensor  tensor (model) parallelism: attention heads, MLP features and the vocabulary are split over this
          axis (Megatron-style), so each device computes its slice of every layer; the batch is not split.
          Size 1 unless asked for.

A batch of B rows is split over data × fsdp devices, so B must be a multiple of their product. On one CPU
device the mesh is (1, 1, 1) and every sharding is trivial, so the same program runs on a laptop, on 8 simulated
CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`, set before JAX starts) and on a GPU node.

Params carry logical axis names (`nn.LogicallyPartitioned` boxes from `map_jax.models`); `RULES` maps those
names to mesh axes. A dimension whose size the mesh axis does not divide is replicated instead, so odd shapes
(norm scales, a vocabulary of 49152 over 7 devices) never stop a run; they only cost memory.

Multi-host (several processes, one per host or per GPU): call `initialize_distributed()` first thing in every
process, before any other JAX call. `jax.devices()` then lists the devices of all hosts and `make_mesh` spans
them; every process builds the same global batch and `shard`/`place_rows` keep its local part (results go back
to the host through `to_host`, which all-gathers). Every process runs the same program; process 0 alone writes
files (`is_writer`), `barrier` lets the others see them, `agree` takes process 0's branch everywhere,
`failed_processes` stops all of them when one fails, and `open_store` shares a resumable store.

    >>> mesh = make_mesh()                                  # all devices on the fsdp axis
    >>> params = shard(plain_params, param_shardings(boxed_params, mesh))
    >>> batch = jax.device_put(batch, batch_sharding(mesh))
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

DATA, FSDP, TENSOR = "data", "fsdp", "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)
BATCH_AXES = (DATA, FSDP)

# Logical axis (see map_jax/models/layers.py) -> mesh axis. FSDP splits each weight along its embedding
# dimension only: every decoder weight has one, and the gathered slices stay contiguous in memory. The tensor
# axis splits heads, MLP features and the vocabulary (a no-op at its default size 1).
RULES: tuple[tuple[str, str | None], ...] = (
  ("embed", FSDP),
  ("mlp", TENSOR),
  ("heads", TENSOR),
  ("kv_heads", TENSOR),
  ("head_dim", None),
  ("vocab", TENSOR),
  ("layers", None),
  ("norm", None),
  ("positions", None),
  ("lora", None),
)


def initialize_distributed(**kwargs: Any) -> None:
  """Join a multi-host run: `jax.distributed.initialize(**kwargs)`, once per process, before other JAX calls.

  On managed clusters (SLURM, Cloud TPU, Kubernetes with the usual env vars) no arguments are needed; else pass
  `coordinator_address="host0:1234", num_processes=N, process_id=i`. A single-process run needs no call.
  Processes of CPU devices exchange data over gloo (set here; GPUs and TPUs use their own collectives).
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)


def is_writer() -> bool:
  """Whether this process writes a run's files: process 0 of a multi-host run, or the only process."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Wait until every process of a multi-host run gets here (a no-op in a single-process run). After a
  barrier, every process sees the files process 0 wrote before it (on a filesystem all hosts share)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def agree(flag: bool) -> bool:
  """Process 0's `flag` on every process (a multi-host run takes each branch on all processes or on none)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils

  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))


def failed_processes(ok: bool) -> list[int]:
  """The processes whose `ok` is False, the same list on every process (a collective, so also a barrier; [] or
  [0] in a single-process run). A stage that failed on one process then stops every process, with the error
  named, instead of leaving the others waiting at their next collective."""
  if jax.process_count() == 1:
    return [] if ok else [0]
  from jax.experimental import multihost_utils

  flags = np.asarray(multihost_utils.process_allgather(np.asarray([ok], np.int32))).reshape(-1)
  return [int(i) for i in np.flatnonzero(flags == 0)]


def open_store(path: str, key: str, meta: Any = None):
  """The `map_jax.store.ChunkStore` of a computation every process of a run takes part in.

  Process 0 opens it (writing the header, cutting a torn line) and alone appends to it; the others read the
  chunks it holds after a barrier and keep theirs in memory (`readonly`). A second barrier before returning
  makes every process start from the same chunks. One process: a plain ChunkStore."""
  from map_jax.store import ChunkStore

  if jax.process_count() == 1:
    return ChunkStore(path, key, meta)
  name = f"{os.path.basename(path)} {key}"  # the same on every host, wherever each mounts the workdir
  store = ChunkStore(path, key, meta) if is_writer() else None
  barrier(f"open {name}")
  store = store or ChunkStore(path, key, meta, readonly=True)
  barrier(f"opened {name}")
  return store


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all), with Auto axes so XLA propagates shardings.

  Args:
    data: size of the data-parallel axis; -1 takes the devices that the other axes leave.
    fsdp: size of the fully sharded axis; -1 (default) takes the devices that the other axes leave.
    tensor: size of the tensor-parallel axis (default 1); -1 takes the devices that the others leave.
    devices: the devices to use; defaults to `jax.devices()` (every host's, after `initialize_distributed`).

  Returns:
    A `jax.sharding.Mesh` with axis names ("data", "fsdp", "tensor").
  """
  devices = list(devices) if devices is not None else jax.devices()
  n = len(devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one of data, fsdp, tensor may be -1 (got data={data}, fsdp={fsdp}, tensor={tensor})")
  if -1 in sizes:
    rest = math.prod(s for s in sizes if s != -1)
    sizes[sizes.index(-1)] = n // rest if rest > 0 else 0
  data, fsdp, tensor = sizes
  if min(sizes) < 1 or data * fsdp * tensor != n:
    raise ValueError(f"mesh data={data} × fsdp={fsdp} × tensor={tensor} does not cover the {n} devices")
  # Auto axes: the models' gathers and reshapes need no out_sharding annotations (Explicit axes would).
  return jax.make_mesh((data, fsdp, tensor), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


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
  table = dict(rules)

  def one(spec, leaf):
    # Each logical name to its mesh axis; a mesh axis already used by an earlier dimension (a square
    # [embed, embed] weight) leaves the later one whole.
    axes, used = [], set()
    for name in tuple(spec):
      axis = table.get(name) if isinstance(name, str) else None
      axes.append(None if axis in used else axis)
      used.add(axis)
    return NamedSharding(mesh, _divisible_spec(P(*axes), tuple(np.shape(leaf)), mesh))

  return jax.tree.map(one, specs, plain, is_leaf=lambda x: isinstance(x, P))


def opt_state_shardings(tx: optax.GradientTransformation, abstract_opt_state: Any, shardings: Any, mesh: Mesh) -> Any:
  """Shardings for an optimizer state: every copy of the param tree in it (Adam's moments) is laid out as
  the params are (`shardings`); its other leaves (step counts) are replicated."""
  return optax.tree_map_params(
    tx, lambda _, s: s, abstract_opt_state, shardings, transform_non_params=lambda _: replicated(mesh)
  )


def shard(tree: Any, shardings: Any) -> Any:
  """Place (or move) a tree of arrays onto the mesh: `jax.device_put` with a matching tree (or one sharding).

  On a mesh that spans several processes, an array that every process holds whole (numpy, or a jax array on
  a local device, PRNG keys too) becomes the global array, each process keeping its part (`jax.device_put`
  itself only takes host data there)."""

  def one(x, s):
    if s.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
      return jax.device_put(x, s)
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(one(jax.random.key_data(x), s), impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, s, lambda index: host[index])

  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x: one(x, shardings), tree)
  return jax.tree.map(one, tree, shardings)


@functools.lru_cache(maxsize=64)
def module_shardings(module: nn.Module, mesh: Mesh, rules: tuple[tuple[str, str | None], ...] = RULES) -> Any:
  """NamedShardings of `module`'s (plain) params, from the logical axes its `init` boxes them with.

  Works for every model family here (decoders, unrolled decoders, encoders, classifiers: each takes token ids
  [B, T] first). Cached per (module, mesh)."""
  import jax.numpy as jnp

  abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]
  return param_shardings(abstract, mesh, rules)


def place_model(module: nn.Module, params: Any, mesh: Mesh | None) -> Any:
  """`params` (plain or boxed) laid out on `mesh` by their logical axes: split over fsdp and tensor, copied
  over data. Params already placed so come back as they are (no copy), so calling this per batch is cheap;
  with no mesh (one device) they come back untouched."""
  if mesh is None:
    return params
  return shard(nn.meta.unbox(params), module_shardings(module, mesh))


def padded_rows(rows: int, mesh: Mesh) -> int:
  """The smallest multiple of the mesh's batch devices that holds `rows` rows."""
  n = batch_devices(mesh)
  return -(-rows // n) * n


def place_rows(mesh: Mesh, *arrays: Any) -> tuple:
  """Arrays whose rows (axis 0) are split over the mesh's batch axes (their row count a multiple of
  `batch_devices(mesh)`). On several hosts every process passes the same global arrays and keeps its part."""
  for a in arrays:
    check_batch_size(np.shape(a)[0], mesh, "rows")
  return tuple(shard(arrays, batch_sharding(mesh)))


def to_host(x: jax.Array) -> np.ndarray:
  """The whole of a (possibly multi-host) array as numpy: rows held by other processes are all-gathered."""
  if x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def pad_rows(arrays: Sequence[np.ndarray], rows: int) -> list[np.ndarray]:
  """Pad each array's first axis up to `rows` with copies of row 0 (copies, not zeros: a fully masked row
  could make attention produce NaN, and extra rows are dropped anyway)."""
  out = []
  for a in arrays:
    extra = rows - a.shape[0]
    out.append(a if extra <= 0 else np.concatenate([a, np.repeat(a[:1], extra, 0)]))
  return out


def forward_rows(fn, module, params, arrays: Sequence[np.ndarray], rows: int, mesh=None):
  """`fn(module, params, *arrays)` on a batch padded to `rows` rows, as numpy of the real rows (the tree `fn`
  returns). With a mesh the batch is padded to a multiple of its batch devices and split over them (`params`
  placed by `place_model`); on several hosts every process passes the same rows and gets them all."""
  n = len(arrays[0])
  if mesh is None:
    out = fn(module, params, *pad_rows(arrays, rows))
  else:
    out = fn(module, params, *place_rows(mesh, *pad_rows(arrays, padded_rows(rows, mesh))))
  return jax.tree.map(lambda x: to_host(x)[:n], out)
