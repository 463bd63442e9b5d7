"""One code path for 1 CPU, N GPUs and multi-host TPU pods: a 1-D device mesh with a 'data' axis.

Users (the batch's leading axis) are sharded over 'data'; parameters and optimizer state are
replicated. Programs run per device under `jax.shard_map(..., check_vma=False)`, where a
shard's gradient is its local gradient only: every mean divides a shard-local sum by the
*global* count (`global_mean`), so `lax.psum` of the shards' gradients is exactly the
single-device gradient of the whole batch (docs/method.md, "Data parallelism").
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def initialize_distributed(enabled: bool) -> None:
  """jax.distributed.initialize() for multi-host launches (a no-op when disabled or done)."""
  if enabled and not jax.distributed.is_initialized():
    jax.distributed.initialize()


def make_mesh(devices=None) -> Mesh:
  """1-D mesh with a 'data' axis over `devices` (default: all devices of all hosts)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Assembles each host's rows of the batch into global arrays sharded on the leading axis.

  With one process this is a device_put (device-resident rollouts stay on device).
  """
  return jax.make_array_from_process_local_data(NamedSharding(mesh, P(DATA_AXIS)), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Copies a pytree (e.g. a training state) to every device of the mesh.

  Always a copy, so donating the result to a step never deletes the caller's arrays (e.g. the
  SFT parameters RL started from). The explicit `jnp.copy` is needed: in jax 0.10.2
  `device_put(..., may_alias=False)` onto several devices still reuses the source buffer as
  the shard on its own device.
  """
  return jax.device_put(jax.tree.map(jnp.copy, tree), NamedSharding(mesh, P()))


def global_mean(x: jnp.ndarray, mask: jnp.ndarray, axis_name: Optional[str]) -> jnp.ndarray:
  """Mean of x over mask across the whole batch; under `axis_name` this shard's share."""
  mask = mask.astype(jnp.float32)
  count = jnp.sum(mask)
  if axis_name is not None:
    count = lax.psum(count, axis_name)
  return jnp.sum(x * mask) / jnp.maximum(lax.stop_gradient(count), 1.0)
