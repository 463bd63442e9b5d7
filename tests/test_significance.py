"""Tests for vstar_jax.eval.significance: per-user metrics, sign test and paired bootstrap."""

import math

import numpy as np
import pytest

from vstar_jax.eval import metrics as metrics_lib
from vstar_jax.eval import significance


def test_per_user_matches_the_split_metrics():
  rng = np.random.default_rng(0)
  sids = [f'<a_{i}>' for i in range(30)]
  records = [{'predict': list(rng.choice(sids, 20, replace=False)), 'output': str(rng.choice(sids))}
             for _ in range(200)]
  per = significance.per_user(records, k=10)
  ranks = metrics_lib.first_hit_ranks([r['predict'] for r in records],
                                      [r['output'] for r in records])
  split = metrics_lib.hr_ndcg(ranks, 20)
  assert per['HR@10'].mean() == pytest.approx(split['HR@10'])
  assert per['NDCG@10'].mean() == pytest.approx(split['NDCG@10'])


def test_sign_test_by_hand():
  assert significance.sign_test(np.array([1, 1, 1, 1, 1])) == pytest.approx(2 / 32)
  assert significance.sign_test(np.array([1, -1, 0, 0])) == pytest.approx(1.0)
  # 9 wins, 1 loss: 2 * (C(10,0) + C(10,1)) / 2^10
  assert significance.sign_test(np.array([1] * 9 + [-1])) == pytest.approx(2 * 11 / 1024)
  assert significance.sign_test(np.zeros(5)) == 1.0
  # Beyond 1023 non-zero differences (where 2.0 ** n overflows a float): balanced signs are
  # chance (p = 1); 1200 wins of 2000 are not (normal approximation: z = 8.9, p ~ 5e-19).
  assert significance.sign_test(np.array([1] * 1000 + [-1] * 1000)) == 1.0
  assert 1e-20 < significance.sign_test(np.array([1] * 1200 + [-1] * 800)) < 1e-16


def test_bootstrap_separates_a_real_shift_from_noise():
  rng = np.random.default_rng(1)
  a = rng.random(2000) < 0.10
  shifted = a | (rng.random(2000) < 0.03)        # +~3 points on the same users
  noisy = a.copy()                                  # 21 users gain a hit, 20 others lose theirs
  noisy[rng.choice(np.flatnonzero(~a), 21, replace=False)] = True
  noisy[rng.choice(np.flatnonzero(a), 20, replace=False)] = False
  strong = significance.compare(a, shifted)
  assert strong['delta'] > 0 and strong['losses'] == 0 and strong['p_bootstrap'] < 1e-3
  assert strong['p_sign'] < 1e-6
  weak = significance.compare(a, noisy)
  assert weak['p_bootstrap'] > 0.05 and weak['p_sign'] > 0.05
  assert significance.compare(a, a)['p_bootstrap'] == 1.0
  with pytest.raises(ValueError, match='same users'):
    significance.compare(a, a[:10])
  assert math.isclose(strong['relative'], strong['delta'] / a.mean())
