"""HR/NDCG against hand-computed cases and an independent plain implementation."""

import json
import math
import random

import numpy as np
import pytest

from vstar_jax.eval import export
from vstar_jax.eval import metrics

T = '<a_1><b_1><c_1>'


def _preds(hit_at, n=50):
  preds = [f'<a_9><b_9><c_{i}>' for i in range(n)]
  if hit_at is not None:
    preds[hit_at] = T
  return preds


def test_hit_at_rank_zero():
  m = metrics.hr_ndcg(metrics.first_hit_ranks([_preds(0)], [T]), 50)
  assert all(m[f'HR@{k}'] == 1.0 and m[f'NDCG@{k}'] == 1.0 for k in metrics.TOPK)


def test_hit_at_rank_nine():
  m = metrics.hr_ndcg(metrics.first_hit_ranks([_preds(9)], [T]), 50)
  assert m['HR@5'] == 0.0 and m['NDCG@5'] == 0.0
  assert m['HR@10'] == 1.0 and m['NDCG@10'] == pytest.approx(1 / math.log2(11))
  assert m['NDCG@50'] == pytest.approx(1 / math.log2(11))


def test_no_hit_and_first_hit_wins():
  preds = _preds(None)
  ranks = metrics.first_hit_ranks([preds, [T, T], ['x', T, T]], [T, T, T])
  np.testing.assert_array_equal(ranks, [-1, 0, 1])
  m = metrics.hr_ndcg(ranks, 50)
  assert m['HR@1'] == pytest.approx(1 / 3) and m['HR@3'] == pytest.approx(2 / 3)
  assert m['NDCG@3'] == pytest.approx((1 + 1 / math.log2(3)) / 3)


def test_fewer_predictions_than_k_drops_larger_k():
  m = metrics.hr_ndcg(metrics.first_hit_ranks([_preds(3, n=16)], [T]), 16)
  assert set(m) == {f'{name}@{k}' for name in ('HR', 'NDCG') for k in (1, 3, 5, 10)}


def test_invalid_predictions_keep_their_slot():
  catalogue = {T, '<a_9><b_9><c_0>'}
  preds = ['bogus', '<a_9><b_9><c_0>', 'also bogus', T, 'bogus after hit']
  m = metrics.evaluate([preds], [T], catalogue)
  # The target is still at index 3: invalid entries are not removed.
  assert m['HR@3'] == 0.0 and m['HR@5'] == 1.0
  assert m['NDCG@5'] == pytest.approx(1 / math.log2(5))
  assert m['invalid'] == 2 and m['invalid_all_slots'] == 3


def test_level_hits_and_diversity():
  pred = np.array([[[1, 2, 3], [1, 2, 4]], [[5, 5, 5], [1, 9, 9]]])
  target = np.array([[1, 2, 4], [1, 2, 3]])
  h = metrics.level_hits(pred, target)
  assert h == {'hit_L1': 1.0, 'hit_L12': 0.5, 'hit_exact': 0.5}
  d = metrics.diversity(pred, k=2)
  assert d['distinct_L1@2'] == 1.5 and d['distinct_L12@2'] == 1.5 and d['coverage@2'] == 4


def _independent_scores(records, catalogue):
  """A plain re-implementation of MiniOneRec's scoring loop (natural log, as its script)."""
  topk = [1, 3, 5, 10, 20, 50]
  n_beam = len(records[0]['predict'])
  hr = {k: 0.0 for k in topk if k <= n_beam}
  ndcg = dict(hr)
  unknown = 0
  for rec in records:
    target = rec['output'].strip(' \n"')
    first = 10 ** 6
    for i, p in enumerate(rec['predict']):
      p = p.strip('"\n').strip()
      if p not in catalogue:
        unknown += 1
      if p == target:
        first = i
        break
    for k in hr:
      if first < k:
        ndcg[k] += 1 / math.log(first + 2)
        hr[k] += 1
  n = len(records)
  out = {f'HR@{k}': v / n for k, v in hr.items()}
  out.update({f'NDCG@{k}': v / n / (1 / math.log(2)) for k, v in ndcg.items()})
  out['invalid'] = unknown
  return out


def test_export_equals_independent_scoring(tmp_path):
  rng = random.Random(0)
  item_codes = np.array([[a, b, c] for a in range(4) for b in range(4) for c in range(4)])
  n, w = 300, 50
  pred = np.stack([item_codes[rng.sample(range(64), w)] for _ in range(n)])
  pred[::7, 3] = -1   # some empty (invalid) slots
  target = item_codes[[rng.randrange(64) for _ in range(n)]]
  target_sids = [f'<a_{a}><b_{b}><c_{c}>' for a, b, c in target]
  ours = export.evaluate_and_export(tmp_path, pred, target_sids, target, item_codes)
  records = json.loads((tmp_path / 'predictions.json').read_text())
  assert len(records) == n and all(len(r['predict']) == w for r in records)
  assert json.loads((tmp_path / 'metrics.json').read_text()) == ours
  catalogue = {f'<a_{a}><b_{b}><c_{c}>' for a, b, c in item_codes}
  ref = _independent_scores(records, catalogue)
  for key, value in ref.items():
    assert ours[key] == pytest.approx(value, abs=1e-12), key
  assert ours['HR@50'] > 0.5
