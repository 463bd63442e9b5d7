"""Host-side batching: deterministic epoch orders, the rows of a split, fixed-size sharded batches.

Everything here is a function of (seed, epoch, index), so a resumed run draws exactly the
batches the uninterrupted run would have (the position lives in the checkpointed state and
is advanced on the host, never inside a device program).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.struct
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vstar_jax import parallel
from vstar_jax.data import types


def epoch_order(num_rows: int, seed: int, epoch: int) -> np.ndarray:
  """Deterministic shuffle of rows for one epoch (a function of seed and epoch only)."""
  return np.random.default_rng([seed, epoch]).permutation(num_rows)


def batch_rows(num_rows: int, batch_size: int, seed: int, epoch: int, index: int) -> np.ndarray:
  """Row ids of batch `index` of `epoch` (a slice of that epoch's permutation)."""
  order = epoch_order(num_rows, seed, epoch)
  return order[index * batch_size:(index + 1) * batch_size]


def next_position(epoch: int, index: int, steps_per_epoch: int) -> tuple[int, int]:
  """The (epoch, batch index) after batch `index` of `epoch`: the data cursor's one step."""
  index += 1
  return (epoch + 1, 0) if index >= steps_per_epoch else (epoch, index)


def training_rows(dataset: types.Dataset, splits) -> tuple[np.ndarray, np.ndarray]:
  """Histories [N, T, L] and targets [N, L] of the listed splits, concatenated."""
  history = np.concatenate([dataset.history_codes(s) for s in splits])
  target = np.concatenate([dataset.target_codes(s) for s in splits])
  return history, target


def validation_rows(num_rows: int, max_rows: int) -> np.ndarray:
  """Evenly spaced row indices (all rows if max_rows is 0 or large).

  Split files are sorted by target time, so the first rows would be the ones
  closest to the training period and overstate validation quality.
  """
  if not max_rows or max_rows >= num_rows:
    return np.arange(num_rows)
  return np.unique(np.linspace(0, num_rows - 1, max_rows).round().astype(np.int64))


@flax.struct.dataclass
class UserBatch:
  """A batch of users, the input of an RL iteration and of value pretraining (sharded on B).

  Attributes:
    history: [B, T, L] int32, the model input rows (for another backbone, e.g. prompt
      tokens [B, P]).
    target: [B, L] int32, each row's logged target SID.
    target_item: [B] int32, the target's item id.
    user_index: [B] int32, the row's position in the global batch (what seeds its random
      draws, so they do not depend on how users are sharded).
    user_features: [B, F] float32, or None: only the known-reward simulator's splits carry
      them (its hidden user vectors, read by rl.simulator_reward).
  """
  history: jnp.ndarray
  target: jnp.ndarray
  target_item: jnp.ndarray
  user_index: jnp.ndarray
  user_features: Optional[jnp.ndarray] = None


@dataclasses.dataclass
class UserRows:
  """Users a stage draws batches from: history [N, T, L], target [N, L], target_item [N] and,
  when the splits carry them, user_features [N, F]."""
  history: np.ndarray
  target: np.ndarray
  target_item: np.ndarray
  user_features: np.ndarray | None = None

  @classmethod
  def from_dataset(cls, dataset: types.Dataset, splits) -> UserRows:
    history, target = training_rows(dataset, splits)
    items = np.concatenate([dataset.splits[s].target_item for s in splits]).astype(np.int32)
    features = [dataset.splits[s].user_features for s in splits]
    features = None if any(f is None for f in features) else np.concatenate(features)
    return cls(history, target, items, features)

  def __len__(self) -> int:
    return int(self.history.shape[0])

  def batch(self, rows: np.ndarray, mesh: Mesh) -> UserBatch:
    """This process's share of the global batch `rows`, assembled into sharded global arrays
    (a UserBatch; user_index is each row's position in `rows`)."""
    local = parallel.process_rows(len(rows))
    rows_here = rows[local]
    features = self.user_features
    host = UserBatch(history=self.history[rows_here], target=self.target[rows_here],
                     target_item=self.target_item[rows_here],
                     user_index=np.arange(len(rows), dtype=np.int32)[local],
                     user_features=None if features is None
                     else features[rows_here].astype(np.float32))
    return parallel.shard_batch(host, mesh)
