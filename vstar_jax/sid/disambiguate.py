"""Collision removal: give every item a distinct SID, deterministically.

Residual quantization maps near-duplicate items (same title, same description) to the same
L codes, and a SID shared by several items cannot name the next item (the shipped
MiniOneRec SIDs have 15 such groups per dataset). Two remedies, chosen by
`config.sid.disambiguation`:

- 'reassign' (default): keep L. In each collision group the item nearest the shared
  last-level code keeps it; the others move to the nearest last-level codes still free
  under the same (L-1)-code prefix. Prefixes are untouched, so levels 1..L-1 keep their
  meaning and the SID format stays MiniOneRec's `<a_X><b_Y><c_Z>`. Possible while no
  (L-1)-prefix holds more than K items.
- 'extra_level': append a level L+1 whose code numbers the items of a collision group
  (0 for the item nearest the shared code, then 1, 2, ... by distance), 0 for every
  other item, as TIGER does. Codes 1..L are untouched, SIDs become L+1 long. Possible
  while no group holds more than K items.

Both run once on the host (numpy: grouping is data-dependent), ties broken by item id,
so the same inputs always give the same SIDs.
"""

from __future__ import annotations

import numpy as np

METHODS = ('reassign', 'extra_level')


def _groups(keys: np.ndarray) -> list[np.ndarray]:
  """Item ids [n] (ascending) of each distinct row of keys [I, M], in lexicographic key order."""
  _, inverse = np.unique(keys, axis=0, return_inverse=True)
  inverse = inverse.reshape(-1)
  order = np.argsort(inverse, kind='stable')
  bounds = np.flatnonzero(np.diff(inverse[order])) + 1
  return np.split(order, bounds)


def _by_distance(items: np.ndarray, dist: np.ndarray) -> np.ndarray:
  """items [n] sorted by dist [n] ascending, ties by item id."""
  return items[np.lexsort((items, dist))]


def reassign_last_level(codes: np.ndarray, last_dists: np.ndarray) -> np.ndarray:
  """Collision-free SIDs of the same length by moving duplicates to free last-level codes.

  Args:
    codes: [I, L] int, SIDs possibly with collisions.
    last_dists: [I, K] float, each item's distance to every level-L code (given its own
      levels 1..L-1); defines "nearest".

  Returns:
    [I, L] int32 with distinct rows; items whose SID was unique are unchanged.

  Within one (L-1)-prefix the displaced items are placed greedily: repeatedly the
  (item, free code) pair of smallest distance is fixed, so every moved item lands on a
  code at least as near as any code left free.
  """
  codes = np.asarray(codes, np.int64)
  last_dists = np.asarray(last_dists, np.float64)
  num_items, num_levels = codes.shape
  num_codes = last_dists.shape[1]
  displaced = np.zeros((num_items,), bool)
  for group in _groups(codes):
    if len(group) > 1:
      keep = _by_distance(group, last_dists[group, codes[group, -1]])[0]
      displaced[group[group != keep]] = True
  out = codes.copy()
  for group in _groups(codes[:, :-1]):
    moving = group[displaced[group]]
    if not len(moving):
      continue
    if len(group) > num_codes:
      raise ValueError(f'cannot re-assign at the last level: {len(group)} items share the prefix '
                       f'{codes[group[0], :-1].tolist()} but there are only {num_codes} codes; '
                       "use disambiguation='extra_level' or a larger codebook")
    cost = last_dists[moving].copy()
    cost[:, codes[group[~displaced[group]], -1]] = np.inf
    for _ in range(len(moving)):
      row, code = np.unravel_index(np.argmin(cost), cost.shape)
      out[moving[row], -1] = code
      cost[row, :] = np.inf
      cost[:, code] = np.inf
  return out.astype(np.int32)


def append_level(codes: np.ndarray, last_dists: np.ndarray) -> np.ndarray:
  """Collision-free SIDs one level longer: codes [I, L] -> [I, L+1] int32.

  The extra code ranks an item within its collision group by distance to the shared
  level-L code (last_dists [I, K], ties by item id); items with a unique SID get 0.
  """
  codes = np.asarray(codes, np.int64)
  last_dists = np.asarray(last_dists, np.float64)
  num_codes = last_dists.shape[1]
  extra = np.zeros((codes.shape[0],), np.int64)
  for group in _groups(codes):
    if len(group) > num_codes:
      raise ValueError(f'cannot number {len(group)} items sharing the SID '
                       f'{codes[group[0]].tolist()} with {num_codes} extra-level codes')
    ranked = _by_distance(group, last_dists[group, codes[group, -1]])
    extra[ranked] = np.arange(len(group))
  return np.concatenate([codes, extra[:, None]], axis=1).astype(np.int32)


def disambiguate(codes: np.ndarray, last_dists: np.ndarray, method: str) -> np.ndarray:
  """Collision-free SIDs by `method` ('reassign' keeps L, 'extra_level' gives L+1)."""
  if method == 'reassign':
    return reassign_last_level(codes, last_dists)
  if method == 'extra_level':
    return append_level(codes, last_dists)
  raise ValueError(f'unknown disambiguation {method!r}; expected one of {METHODS}')
