"""One code path for 1 CPU, N GPUs and multi-host TPU pods: a 1-D device mesh with a 'data' axis.

Users (the batch's leading axis) are sharded over 'data'; parameters and optimizer state are
replicated. Every stage that trains or decodes runs on this mesh, over all devices of all
processes (design §6): each process holds the whole dataset on the host and feeds its own
slice of every global batch (`process_rows`, `shard_batch`); results come back to every host
whole (`to_host`).

The RL and value programs run per device under `jax.shard_map(..., check_vma=False)`, where a
shard's gradient is its local gradient only: every mean divides a shard-local sum by the
*global* count (`global_mean`), so `lax.psum` of the shards' gradients is exactly the
single-device gradient of the whole batch (docs/method.md, "Data parallelism"). SFT is a
`jit` with the same shardings, partitioned by XLA (its random draws do not depend on the
sharding: jax_threefry_partitionable).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices=None) -> Mesh:
  """1-D mesh with a 'data' axis over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def sharded(mesh: Mesh) -> NamedSharding:
  """Leading axis split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def process_rows(num_rows: int) -> slice:
  """This process's rows of a global batch of `num_rows` (equal contiguous slices)."""
  per_process = num_rows // jax.process_count()
  return slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Assembles each process's rows of a batch (a pytree of host arrays) into global arrays
  sharded on the leading axis. With one process this is a device_put."""
  return jax.make_array_from_process_local_data(sharded(mesh), batch)


def _is_global(x) -> bool:
  return isinstance(x, jax.Array) and not x.is_fully_addressable


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Copies a pytree (a training state, host or device arrays) onto every device of the mesh.

  Always a copy, so donating the result to a step never deletes the caller's arrays (e.g. the
  SFT parameters RL started from). Host-local leaves go through the host (in jax 0.10.2
  `device_put(..., may_alias=False)` onto several devices still reuses the source buffer, and
  onto a multi-process mesh it makes arrays whose remote shards are unusable); leaves that
  already span several processes are copied on device.
  """
  sharding = replicated(mesh)
  copy = jax.jit(jnp.copy, out_shardings=sharding)

  def put(x):
    if _is_global(x):
      return copy(x)
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  return jax.tree.map(put, tree)


def on_mesh(tree: Any, mesh: Mesh) -> Any:
  """`tree` replicated on the mesh: as it is where every leaf already is, else a copy."""
  sharding = replicated(mesh)
  leaves = jax.tree.leaves(tree)
  if all(isinstance(x, jax.Array) and x.sharding == sharding for x in leaves):
    return tree
  return replicate(tree, mesh)


def to_host(tree: Any) -> Any:
  """Numpy copies of a pytree's arrays on every process (global sharded arrays are gathered)."""
  def get(x):
    if _is_global(x) and not x.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(get, tree)


def global_mean(x: jnp.ndarray, mask: jnp.ndarray, axis_name: Optional[str]) -> jnp.ndarray:
  """Mean of x over mask across the whole batch; under `axis_name` this shard's share."""
  mask = mask.astype(jnp.float32)
  count = jnp.sum(mask)
  if axis_name is not None:
    count = lax.psum(count, axis_name)
  return jnp.sum(x * mask) / jnp.maximum(lax.stop_gradient(count), 1.0)
