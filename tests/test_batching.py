"""Tests for vstar_jax.data.batching: deterministic epoch orders, batches, cursor, validation rows."""

import numpy as np

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
