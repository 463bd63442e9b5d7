"""Paired significance of a metric difference between two runs scored on the same users.

Every RL-vs-SFT or V-STAR-vs-GRPO delta the README reports comes with a per-user paired test:
both runs' predictions.json hold the same test rows in the same order, so each user gives
one paired difference of HR@K / NDCG@K. Two tests: a paired bootstrap (resample users with
replacement; two-sided p of the mean difference) and an exact sign test over the users where
the runs differ.
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np

from vstar_jax.eval import metrics as metrics_lib


def per_user(predictions: list[dict], k: int = 10) -> dict[str, np.ndarray]:
  """Per-user HR@k and NDCG@k [N] from MiniOneRec result records [{'predict', 'output'}]."""
  ranks = metrics_lib.first_hit_ranks([r['predict'] for r in predictions],
                                      [r['output'] for r in predictions])
  hit = (ranks >= 0) & (ranks < k)
  gain = np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
  return {f'HR@{k}': hit.astype(np.float64), f'NDCG@{k}': gain}


def load_per_user(eval_dir: str | pathlib.Path, k: int = 10) -> dict[str, np.ndarray]:
  """per_user of <eval_dir>/predictions.json."""
  path = pathlib.Path(eval_dir) / 'predictions.json'
  return per_user(json.loads(path.read_text()), k)


def sign_test(diff: np.ndarray) -> float:
  """Two-sided exact binomial p of the signs of the non-zero paired differences."""
  wins, losses = int(np.sum(diff > 0)), int(np.sum(diff < 0))
  n = wins + losses
  if n == 0:
    return 1.0
  # Integer numerator and denominator: 2.0 ** n overflows a float beyond n = 1023.
  tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2 ** n
  return min(1.0, 2.0 * tail)


def paired_bootstrap(diff: np.ndarray, num_resamples: int = 10000, seed: int = 0) -> float:
  """Two-sided p of mean(diff) != 0: the share of resampled means at least as far from the
  observed mean as 0 is (the percentile bootstrap's test of the null delta = 0)."""
  diff = np.asarray(diff, np.float64)
  rng = np.random.default_rng(seed)
  means = diff[rng.integers(0, len(diff), (num_resamples, len(diff)))].mean(axis=1)
  observed = diff.mean()
  if observed == 0:
    return 1.0
  beyond = np.mean(means <= 0) if observed > 0 else np.mean(means >= 0)
  return float(min(1.0, 2.0 * max(beyond, 1.0 / num_resamples)))


def compare(a: np.ndarray, b: np.ndarray, num_resamples: int = 10000, seed: int = 0) -> dict:
  """b - a per user [N]: mean delta, relative delta, wins / losses and both p-values."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f'paired test needs the same users: {a.shape} vs {b.shape}')
  diff = b - a
  return {'delta': float(diff.mean()),
          'relative': float(diff.mean() / a.mean()) if a.mean() else float('nan'),
          'wins': int(np.sum(diff > 0)), 'losses': int(np.sum(diff < 0)),
          'p_bootstrap': paired_bootstrap(diff, num_resamples, seed), 'p_sign': sign_test(diff)}
