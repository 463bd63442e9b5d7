"""Tests for vstar_jax.data.holdout: each chosen user's last train row moves to 'holdout', nothing else."""

import numpy as np
import pytest

from vstar_jax import default_config
from vstar_jax import pipeline
from vstar_jax.data import holdout
from vstar_jax.data import loading
from vstar_jax.data import synthetic


def test_last_row_of_each_chosen_user_by_hand():
  users = np.array(['a', 'a', 'b', 'c', 'a', 'c', 'd'], dtype=object)
  np.testing.assert_array_equal(holdout.holdout_rows(users, 1.0, seed=0), [2, 4, 5, 6])
  half = holdout.holdout_rows(users, 0.5, seed=3)
  assert len(half) == 2 and set(half) <= {2, 4, 5, 6}
  np.testing.assert_array_equal(half, holdout.holdout_rows(users, 0.5, seed=3))   # seeded


def test_split_moves_rows_and_keeps_everything_else():
  data = synthetic.make_dataset(num_items=60, num_users=40, num_codes=8, seq_len=6)
  out = holdout.split_holdout(data, 0.5, seed=1)
  train, held = out.splits['train'], out.splits[holdout.SPLIT]
  assert len(held) == 20 and len(train) + len(held) == len(data.splits['train'])
  assert held.name == holdout.SPLIT and len(set(held.user_ids)) == 20
  # Each held-out row is its user's last train row; the user's earlier rows stay in train.
  original = data.splits['train']
  for user, target in zip(held.user_ids, held.target_item):
    rows = np.flatnonzero(original.user_ids == user)
    assert original.target_item[rows[-1]] == target
    assert (train.user_ids == user).sum() == len(rows) - 1
  np.testing.assert_array_equal(out.target_sids[holdout.SPLIT],
                                np.asarray(data.target_sids['train'])[
                                    holdout.holdout_rows(original.user_ids, 0.5, 1)])
  for split in ('valid', 'test'):
    assert out.splits[split] is data.splits[split]


def test_config_reads_holdout_only_when_there_is_one():
  c = default_config.base_config()
  c.rl.train_splits = ('holdout',)
  with pytest.raises(ValueError, match=r'--config.rl.train_splits: .*data.holdout > 0'):
    pipeline.validate(c)
  c.data.holdout = 0.25
  pipeline.validate(c)
  c.synthetic.num_users, c.synthetic.num_items = 40, 60
  dataset = loading.load(c)
  assert len(dataset.splits['holdout']) == 10
