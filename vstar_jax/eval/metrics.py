"""Top-K recommendation metrics exactly as MiniOneRec scores them (design §3).

rank = first index where the predicted SID string equals the target string;
HR@K = mean[rank < K]; NDCG@K = mean[1/log2(rank+2) if rank < K]; only K no
larger than the number of predictions are reported. A prediction that is not a
catalogue SID is "invalid" and keeps its slot.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

TOPK = (1, 3, 5, 10, 20, 50)
NO_HIT = -1


def first_hit_ranks(predictions: Sequence[Sequence[str]], targets: Sequence[str]) -> np.ndarray:
  """[N] int: index of the first prediction equal to the target, NO_HIT if none."""
  if len(predictions) != len(targets):
    raise ValueError(f'{len(predictions)} prediction lists for {len(targets)} targets')
  ranks = np.full((len(targets),), NO_HIT, np.int64)
  for row, (preds, target) in enumerate(zip(predictions, targets)):
    for j, pred in enumerate(preds):
      if pred == target:
        ranks[row] = j
        break
  return ranks


def hr_ndcg(ranks: np.ndarray, num_predictions: int, topk: Sequence[int] = TOPK) -> dict:
  """HR@K and NDCG@K from first-hit ranks; K above num_predictions are left out."""
  ranks = np.asarray(ranks)
  hit = ranks >= 0
  gain = np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
  out = {}
  for k in topk:
    if k > num_predictions:
      continue
    within = hit & (ranks < k)
    out[f'HR@{k}'] = float(np.mean(within))
    out[f'NDCG@{k}'] = float(np.mean(np.where(within, gain, 0.0)))
  return out


def count_invalid(predictions: Sequence[Sequence[str]], targets: Sequence[str],
                  catalogue: set[str]) -> tuple[int, int]:
  """(invalid as MiniOneRec counts them: scanning each list up to its first hit, invalid in all slots)."""
  upto_hit = every = 0
  for preds, target in zip(predictions, targets):
    seen_hit = False
    for pred in preds:
      bad = pred not in catalogue
      every += bad
      if not seen_hit:
        upto_hit += bad
        seen_hit = pred == target
  return upto_hit, every


def level_hits(pred_codes: np.ndarray, target_codes: np.ndarray, k: int | None = None) -> dict:
  """Share of rows whose top-k holds the target's level-1 / levels-1..2 prefix / whole SID.

  pred_codes: [N, W, L] int; target_codes: [N, L] int. k defaults to W.
  """
  pred_codes = np.asarray(pred_codes)[:, :k]
  target_codes = np.asarray(target_codes)
  match = pred_codes == target_codes[:, None, :]
  prefix_match = np.cumprod(match, axis=-1).astype(bool)
  return {
      'hit_L1': float(np.mean(prefix_match[..., 0].any(axis=1))),
      'hit_L12': float(np.mean(prefix_match[..., 1].any(axis=1))),
      'hit_exact': float(np.mean(prefix_match[..., -1].any(axis=1))),
  }


def diversity(pred_codes: np.ndarray, k: int = 10) -> dict:
  """Mean distinct level-1 and level-1..2 prefixes in each top-k list, and catalogue coverage."""
  pred_codes = np.asarray(pred_codes)[:, :k]
  l1 = [len({tuple(r[:1]) for r in row}) for row in pred_codes.tolist()]
  l12 = [len({tuple(r[:2]) for r in row}) for row in pred_codes.tolist()]
  items = {tuple(r) for row in pred_codes.tolist() for r in row}
  return {f'distinct_L1@{k}': float(np.mean(l1)), f'distinct_L12@{k}': float(np.mean(l12)),
          f'coverage@{k}': len(items)}


def evaluate(predictions: Sequence[Sequence[str]], targets: Sequence[str], catalogue: set[str],
             pred_codes: np.ndarray | None = None, target_codes: np.ndarray | None = None) -> dict:
  """Every metric of design §3 for one split: HR/NDCG@K, invalid, n, per-level hits."""
  num_predictions = len(predictions[0]) if len(predictions) else 0
  ranks = first_hit_ranks(predictions, targets)
  out = hr_ndcg(ranks, num_predictions)
  out['invalid'], out['invalid_all_slots'] = count_invalid(predictions, targets, catalogue)
  out['n'] = len(targets)
  out['num_predictions'] = num_predictions
  if pred_codes is not None and target_codes is not None:
    out.update(level_hits(pred_codes, target_codes))
    out.update(diversity(pred_codes))
  return out


def within_user_spearman(score: np.ndarray, reward: np.ndarray) -> float:
  """Mean over users of Spearman's rho between score [N, W] and reward [N, W] (users whose rewards
  differ and whose scores are not constant)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top  (jax depends on scipy)
  rhos = []
  for s, r in zip(score, reward):
    if np.ptp(r) > 0 and np.ptp(s) > 0:
      rhos.append(stats.spearmanr(s, r).statistic)
  return float(np.mean(rhos)) if rhos else float('nan')
