"""Synthetic catalogue and users with planted, learnable sequential structure.

Items get random distinct SIDs. Each user prefers one level-1 subtree and walks
it: the next item is, with high probability, a fixed "successor" of the current
item inside the same level-2 group (a learnable transition), otherwise a random
item of the preferred subtree; with small probability per step the preference
drifts to another subtree (sequential drift). A share `reverse_users` of the users walk
the successor cycle backwards (their next item is the current item's predecessor): which
way a user walks shows only in two or more history items, so a first-order transition
baseline (which sees only the last item) splits its guess where a sequence model does not.
A model that reads the history beats popularity by a wide margin; no files are needed.
"""

from __future__ import annotations

import numpy as np

from vstar_jax.data import types
from vstar_jax.data import sid_strings


def random_sids(rng: np.random.Generator, num_items: int, num_levels: int, num_codes: int,
                num_top: int) -> np.ndarray:
  """[I, L] distinct SIDs whose first code is drawn from `num_top` codes (clustered catalogue)."""
  if num_items > num_top * num_codes ** (num_levels - 1):
    raise ValueError(f'{num_items} items do not fit in {num_top} x {num_codes}^{num_levels - 1} SIDs')
  seen: set[tuple[int, ...]] = set()
  rows = []
  while len(rows) < num_items:
    sid = (int(rng.integers(num_top)),) + tuple(int(c) for c in rng.integers(num_codes, size=num_levels - 1))
    if sid not in seen:
      seen.add(sid)
      rows.append(sid)
  return np.asarray(rows, np.int32)


def make_dataset(num_items: int = 400, num_users: int = 600, seq_len: int = 14, max_history: int = 10,
                 num_levels: int = 3, num_codes: int = 16, num_top: int = 8, p_successor: float = 0.7,
                 p_drift: float = 0.05, reverse_users: float = 0.0, seed: int = 0) -> types.Dataset:
  """A synthetic Dataset; leave-one-out splits (test: last target, valid: the one before)."""
  rng = np.random.default_rng(seed)
  codes = random_sids(rng, num_items, num_levels, num_codes, num_top)
  by_top = [np.flatnonzero(codes[:, 0] == t) for t in range(num_top)]
  by_top = [g for g in by_top if len(g)]
  successor = np.empty(num_items, np.int64)
  predecessor = np.empty(num_items, np.int64)
  for group in by_top:
    cycle = rng.permutation(group)
    successor[cycle] = np.roll(cycle, -1)
    predecessor[cycle] = np.roll(cycle, 1)
  popularity = rng.zipf(1.5, size=num_items).astype(np.float64)
  rows = {s: ([], [], [], []) for s in ('train', 'valid', 'test')}
  reverse_draws = rng.random(num_users) if reverse_users else np.ones(num_users)
  for user in range(num_users):
    follow = predecessor if reverse_draws[user] < reverse_users else successor
    top = int(rng.integers(len(by_top)))
    seq = [int(rng.choice(by_top[top]))]
    for _ in range(seq_len - 1):
      if rng.random() < p_drift:
        top = int(rng.integers(len(by_top)))
      group = by_top[top]
      if rng.random() < p_successor and codes[seq[-1], 0] == codes[group[0], 0]:
        seq.append(int(follow[seq[-1]]))
      else:
        weights = popularity[group] / popularity[group].sum()
        seq.append(int(rng.choice(group, p=weights)))
    for t in range(1, seq_len):
      split = 'test' if t == seq_len - 1 else 'valid' if t == seq_len - 2 else 'train'
      history = seq[max(0, t - max_history):t]
      rows[split][0].append(f'U{user}')
      rows[split][1].append([types.PAD] * (max_history - len(history)) + history)
      rows[split][2].append(len(history))
      rows[split][3].append(seq[t])
  splits = {
      s: types.Split(s, np.asarray(u, dtype=object), np.asarray(h, np.int32), np.asarray(n, np.int32),
                     np.asarray(y, np.int32))
      for s, (u, h, n, y) in rows.items()}
  sids = np.asarray(sid_strings.format_sids(codes), dtype=object)
  return types.Dataset(
      name='synthetic', item_codes=codes, num_codes=num_codes,
      item_titles=np.asarray([f'item {i}' for i in range(num_items)], dtype=object),
      splits=splits, target_sids={s: sids[v.target_item] for s, v in splits.items()})


def item_embeddings(dataset: types.Dataset, dim: int = 32, noise: float = 0.3, seed: int = 0) -> np.ndarray:
  """[I, dim] unit-norm embeddings that follow the planted SID tree (for learning synthetic SIDs).

  Each level adds a random direction per code, with geometrically smaller weight,
  so items sharing a prefix lie close together, plus isotropic noise.
  """
  rng = np.random.default_rng(seed)
  levels = [rng.normal(size=(dataset.num_codes, dim)) * 0.5 ** l for l in range(dataset.num_levels)]
  emb = sum(levels[l][dataset.item_codes[:, l]] for l in range(dataset.num_levels))
  emb = emb + noise * rng.normal(size=emb.shape)
  return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
