"""Tests for vstar_jax.data.batching: deterministic epoch orders, batches, cursor, validation rows."""

import dataclasses

import jax
import numpy as np

from vstar_jax import parallel
from vstar_jax.data import batching
from vstar_jax.data import synthetic


def test_validation_rows_span_the_split():
  rows = batching.validation_rows(4532, 1000)
  assert len(rows) == 1000 and rows[0] == 0 and rows[-1] == 4531
  assert (np.diff(rows) > 0).all()
  np.testing.assert_array_equal(batching.validation_rows(50, 0), np.arange(50))
  np.testing.assert_array_equal(batching.validation_rows(50, 80), np.arange(50))


def test_batches_of_an_epoch_partition_its_permutation():
  order = batching.epoch_order(103, seed=5, epoch=2)
  np.testing.assert_array_equal(np.sort(order), np.arange(103))
  assert not np.array_equal(order, batching.epoch_order(103, seed=5, epoch=3))
  batches = [batching.batch_rows(103, 10, 5, 2, i) for i in range(10)]
  np.testing.assert_array_equal(np.concatenate(batches), order[:100])


def test_next_position_wraps_at_the_epoch_end():
  assert batching.next_position(0, 0, 3) == (0, 1)
  assert batching.next_position(0, 2, 3) == (1, 0)
  assert batching.next_position(4, 1, 2) == (5, 0)


def test_user_rows_concatenate_splits_in_order():
  data = synthetic.make_dataset(num_items=60, num_users=20, num_codes=8, seq_len=6)
  users = batching.UserRows.from_dataset(data, ('train', 'valid'))
  n_train = len(data.splits['train'])
  assert len(users) == n_train + len(data.splits['valid'])
  np.testing.assert_array_equal(users.target_item[n_train:], data.splits['valid'].target_item)
  np.testing.assert_array_equal(users.history[:n_train], data.history_codes('train'))


def test_batch_is_a_sharded_user_batch_with_features_only_when_the_splits_carry_them():
  data = synthetic.make_dataset(num_items=60, num_users=20, num_codes=8, seq_len=6)
  users = batching.UserRows.from_dataset(data, ('train',))
  mesh = parallel.make_mesh(jax.devices()[:1])
  rows = np.array([4, 0, 7, 2])
  batch = users.batch(rows, mesh)
  assert isinstance(batch, batching.UserBatch) and batch.user_features is None
  np.testing.assert_array_equal(batch.history, users.history[rows])
  np.testing.assert_array_equal(batch.target, users.target[rows])
  np.testing.assert_array_equal(batch.target_item, users.target_item[rows])
  np.testing.assert_array_equal(batch.user_index, np.arange(4))
  assert batch.history.sharding.spec == parallel.sharded(mesh).spec
  features = np.arange(len(users) * 2, dtype=np.float64).reshape(-1, 2)
  with_features = dataclasses.replace(users, user_features=features).batch(rows, mesh)
  assert with_features.user_features.dtype == np.float32
  np.testing.assert_array_equal(with_features.user_features, features[rows])
