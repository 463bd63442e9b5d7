"""Baselines on hand-built data and their real-data quality floor."""

import numpy as np
import pytest

from vstar_jax import baselines
from vstar_jax.data import amazon, synthetic, types
from vstar_jax.eval import export


def _split(histories, targets, t=3):
  h = np.array([[-1] * (t - len(x)) + x for x in histories], np.int32)
  return types.Split('s', np.array(['u'] * len(targets), dtype=object), h,
                     np.array([len(x) for x in histories], np.int32), np.array(targets, np.int32))


ITEM_CODES = np.array([[0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 0], [2, 1, 1]], np.int32)


def test_popularity_orders_by_train_target_count_and_dedups_sids():
  train = _split([[0], [0], [1], [4], [4], [4]], [2, 3, 4, 1, 1, 0])
  out = baselines.most_popular(train, _split([[0]], [1]), ITEM_CODES, 4)
  # Counts: item1 2, items 0/2/3/4 once; items 2 and 3 share a SID -> one slot.
  np.testing.assert_array_equal(out[0], ITEM_CODES[[1, 0, 2, 4]])


def test_transition_follows_last_item_then_backs_off():
  train = _split([[0], [0], [0], [1]], [4, 4, 2, 0])
  out = baselines.transition(train, _split([[1, 0]], [4]), ITEM_CODES, 5)
  np.testing.assert_array_equal(out[0, :2], ITEM_CODES[[4, 2]])
  assert (out[0, 4] == -1).all()   # only 4 distinct SIDs exist


def test_transition_beats_popularity_on_synthetic():
  ds = synthetic.make_dataset()
  scores = {}
  for name, fn in baselines.BASELINES.items():
    codes = fn(ds.splits['train'], ds.splits['test'], ds.item_codes, 20)
    ranks = np.array([next((j for j, c in enumerate(row) if (c == t).all()), -1)
                      for row, t in zip(codes, ds.target_codes('test'))])
    scores[name] = np.mean((ranks >= 0) & (ranks < 10))
  assert scores['transition'] > scores['popularity'] + 0.3


@pytest.mark.realdata
def test_real_industrial_baselines(data_dir, tmp_path):
  ds = amazon.load_dataset('industrial', data_dir)
  res = {}
  for name, fn in baselines.BASELINES.items():
    codes = fn(ds.splits['train'], ds.splits['test'], ds.item_codes, 50)
    res[name] = export.evaluate_and_export(tmp_path / name, codes, ds.target_sids['test'],
                                           ds.target_codes('test'), ds.item_codes)
    assert res[name]['invalid'] == 0 and res[name]['n'] == 4533
  assert 0.09 < res['transition']['HR@10'] < 0.13
  assert res['transition']['HR@10'] > res['popularity']['HR@10']
