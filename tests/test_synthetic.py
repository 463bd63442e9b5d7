"""Synthetic data: same types as the real loader, deterministic, planted structure."""

import numpy as np

from vstar_jax.data import synthetic
from vstar_jax.sid import trie as trie_lib


def test_shapes_padding_and_determinism():
  a = synthetic.make_dataset(seed=3)
  b = synthetic.make_dataset(seed=3)
  np.testing.assert_array_equal(a.splits['train'].history_items, b.splits['train'].history_items)
  assert len(trie_lib.collision_groups(a.item_codes)) == 0
  for split in a.splits.values():
    h = split.history_items
    assert h.shape[1] == 10
    real = h >= 0
    # Left padding: once a real item appears, the rest of the row is real.
    assert (np.diff(real.astype(int), axis=1) >= 0).all()
    np.testing.assert_array_equal(real.sum(1), split.history_len)
  assert len(a.splits['test']) == 600 and len(a.splits['valid']) == 600


def test_targets_stay_in_preferred_subtree_mostly():
  ds = synthetic.make_dataset()
  test = ds.splits['test']
  last = ds.item_codes[test.history_items[:, -1], 0]
  same = np.mean(last == ds.item_codes[test.target_item, 0])
  assert same > 0.8
