"""Recommender: k distinct items when SIDs collide, clear input errors, one compile per bucket."""

import subprocess
import sys

import numpy as np
import pytest

import decoder_fixture
from conftest import REPO
from vstar_jax import default_config
from vstar_jax import recommender
from vstar_jax.data import types
from vstar_jax.decode import search
from vstar_jax.model import backbone

# Item -> (SID, title). Items 3, 4 and 5 share one SID; 3 and 4 are one product listed twice.
CATALOGUE = {0: ((0, 0, 0), 'A'), 1: ((0, 0, 1), 'B'), 2: ((0, 1, 0), 'C'), 3: ((1, 0, 0), 'D'),
             4: ((1, 0, 0), 'D'), 5: ((1, 0, 0), 'E'), 6: ((1, 1, 0), 'F')}


@pytest.fixture(scope='module')
def rec():
  codes = np.array([sid for sid, _ in CATALOGUE.values()], np.int32)
  history = np.array([[-1, 0, 1], [2, 3, 6]], np.int32)
  split = types.Split('test', np.array(['u0', 'u1'], object), history, np.array([2, 3], np.int32),
                      np.array([2, 5], np.int32))
  dataset = types.Dataset('collide', codes, 2, np.array([t for _, t in CATALOGUE.values()], object),
                          {'train': split, 'test': split}, {'train': None, 'test': None})
  config = default_config.base_config()
  config.model.num_layers, config.model.d_model, config.model.num_heads = 1, 16, 2
  config.model.d_ff, config.model.item_hash_buckets = 32, 0
  config.ved.width, config.eval.ved_multiplier = 2, 2.0  # a 10-forward VED: a quick compile
  cfg = backbone.model_config(config, dataset)
  return recommender.Recommender(decoder_fixture.random_params(cfg), cfg, dataset, config, 'sft')


def test_top_k_holds_k_distinct_items_when_sids_collide(rec):
  histories = [[0, 1], [2, 3, 6], [5]]
  full = rec.recommend(histories, k=7)
  for items in full:  # 7 items, 6 products: item 4 is item 3's second listing
    assert sorted(r['item_id'] for r in items) == [0, 1, 2, 3, 5, 6]
    shared = [n for n, r in enumerate(items) if r['item_id'] in (3, 5)]
    assert shared[1] == shared[0] + 1 and items[shared[0]]['score'] == items[shared[1]]['score']
    assert [r['score'] for r in items] == sorted((r['score'] for r in items), reverse=True)
  for k in (1, 3, 5, 6):
    for items, every in zip(rec.recommend(histories, k=k), full):
      assert len(items) == k and len({r['item_id'] for r in items}) == k
      assert len({r['title'] for r in items}) == k
      if k >= 5:  # beams >= the 5 SIDs: exhaustive, so the top-k is a prefix of the full ranking
        assert items == every[:k]
  assert all(r['title'] == CATALOGUE[r['item_id']][1] for r in full[0])


def test_ved_recommends_distinct_catalogue_items(rec):
  items = rec.recommend([[0, 1]], k=4, decoder='ved')[0]
  assert len({r['item_id'] for r in items}) == 4 and all(0 <= r['item_id'] < 7 for r in items)


@pytest.mark.parametrize('histories,message', [
    ([[0, 1], [2, 99]], r'history 1: unknown item id 99 \(the catalogue has ids 0\.\.6\)'),
    ([[], [1]], r'history 0 is empty'),
    ([1, 2], r'history 0 is 1, not a list of item ids'),
    ([[0, '3']], r"history 0: item id '3' is not an integer"),
    ([[-1]], r'history 0: unknown item id -1'),
    ([], r'no histories given'),
])
def test_bad_histories_are_clear_errors(rec, histories, message):
  with pytest.raises(ValueError, match=message):
    rec.recommend(histories, k=3)


def test_one_compile_per_batch_bucket(rec):
  rec.recommend([[0]] * 3, k=3)                 # bucket 4 (compiled by the first test too)
  compiled = search.beam_search._cache_size()
  rec.recommend([[1, 2]] * 4, k=3)              # bucket 4 again: no new compile
  rec.recommend([[3]] * 3, k=3)
  assert search.beam_search._cache_size() == compiled
  rec.recommend([[3]] * 5, k=3)                 # bucket 8
  assert search.beam_search._cache_size() == compiled + 1


def test_load_restores_the_trained_model_without_flags(trained_workdir):
  rec = recommender.Recommender.load(trained_workdir)
  assert rec.stage == 'sft' and rec.cfg.d_model == 32  # the recorded size, not the default 128
  test = rec.dataset.splits['test']
  histories = [[int(i) for i in row if i >= 0] for row in test.history_items[:100]]
  results = rec.recommend(histories, k=10)
  assert len(results) == 100
  for items in results:
    assert len({r['item_id'] for r in items}) == 10
    assert all(r['title'] == f'item {r["item_id"]}' for r in items)
  alone = rec.recommend(histories[:1], k=10)[0]  # batch padding changes nothing (float noise)
  np.testing.assert_allclose([r['score'] for r in alone], [r['score'] for r in results[0]], atol=1e-5)


def test_import_vstar_jax_stays_light_and_exports_recommender():
  code = ('import sys, vstar_jax; assert "jax" not in sys.modules; '
          'from vstar_jax.recommender import Recommender; assert vstar_jax.Recommender is Recommender')
  subprocess.run([sys.executable, '-c', code], cwd=REPO, check=True, timeout=120)
