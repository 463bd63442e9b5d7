"""Reference recommenders that need no training loop: most-popular and first-order transitions.

Both rank items, then map items to distinct SIDs (colliding items share one SID
slot), so their output goes through exactly the evaluation path of the models.
"""

from __future__ import annotations

import numpy as np

from vstar_jax.data import types


def popularity_counts(split: types.Split, num_items: int) -> np.ndarray:
  """[I] how often each item is a target in `split` (each interaction counted once)."""
  return np.bincount(split.target_item, minlength=num_items).astype(np.float64)


def transition_counts(split: types.Split, num_items: int) -> np.ndarray:
  """[I, I] counts of item j directly following item i in the split's sequences (history + target).

  Sliding-window rows repeat the same consecutive pairs; each row contributes only
  its last pair (last history item -> target), so each interaction counts once.
  """
  last = split.history_items[:, -1]
  counts = np.zeros((num_items, num_items), np.float64)
  np.add.at(counts, (last, split.target_item), 1.0)
  return counts


def _rank_items(scores: np.ndarray, popularity: np.ndarray) -> np.ndarray:
  """[N, I] scores -> [N, I] item ids by score, ties by popularity then id."""
  num_items = scores.shape[-1]
  tiebreak = popularity / (popularity.max() + 1.0) - np.arange(num_items) * 1e-9
  return np.argsort(-(scores + 1e-3 * tiebreak[None, :]), axis=-1, kind='stable')


def items_to_distinct_sids(ranked_items: np.ndarray, item_codes: np.ndarray, num_slots: int) -> np.ndarray:
  """[N, I] ranked item ids -> [N, num_slots, L] codes of the first distinct SIDs (-1 if too few)."""
  out = np.full((ranked_items.shape[0], num_slots, item_codes.shape[1]), -1, np.int32)
  for row, items in enumerate(ranked_items):
    seen = set()
    slot = 0
    for item in items:
      key = tuple(item_codes[item].tolist())
      if key in seen:
        continue
      seen.add(key)
      out[row, slot] = item_codes[item]
      slot += 1
      if slot == num_slots:
        break
  return out


def most_popular(train: types.Split, queries: types.Split, item_codes: np.ndarray,
                 num_slots: int) -> np.ndarray:
  """Same top-`num_slots` popular SIDs for every query row: -> [N, num_slots, L]."""
  popularity = popularity_counts(train, item_codes.shape[0])
  ranked = _rank_items(popularity[None, :], popularity)
  top = items_to_distinct_sids(ranked, item_codes, num_slots)
  return np.repeat(top, len(queries), axis=0)


def transition(train: types.Split, queries: types.Split, item_codes: np.ndarray,
               num_slots: int, chunk: int = 512) -> np.ndarray:
  """Next-item counts from each query's last history item, backed off to popularity: -> [N, W, L]."""
  num_items = item_codes.shape[0]
  popularity = popularity_counts(train, num_items)
  counts = transition_counts(train, num_items)
  out = []
  last = queries.history_items[:, -1]
  for start in range(0, len(queries), chunk):
    # Transition counts dominate; popularity (scaled below one count) only orders the back-off.
    scores = counts[last[start:start + chunk]] + popularity[None, :] / (popularity.max() + 1.0)
    out.append(items_to_distinct_sids(_rank_items(scores, popularity), item_codes, num_slots))
  return np.concatenate(out, axis=0)


BASELINES = {'popularity': most_popular, 'transition': transition}
