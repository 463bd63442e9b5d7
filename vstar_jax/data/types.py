"""In-memory dataset types shared by the real loader and the synthetic generator.

Histories are left-padded so the most recent item always sits at position T-1:
every user's prompt then ends at the same position, which keeps batched decoding
(beam search, VED) at fixed shapes with no per-row offsets.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PAD = -1


@dataclasses.dataclass(frozen=True)
class Split:
  """One split (train / valid / test), rows in file order.

  Attributes:
    name: split name.
    user_ids: [N] str.
    history_items: [N, T] int32 item ids, left-padded with PAD.
    history_len: [N] int32 number of real history items (>= 1).
    target_item: [N] int32 item id of the next item.
    user_features: None, or [N, F] float32 per-row user features (the known-reward
      simulator's hidden preference vectors, read by its `preference` reward).
  """
  name: str
  user_ids: np.ndarray
  history_items: np.ndarray
  history_len: np.ndarray
  target_item: np.ndarray
  user_features: np.ndarray | None = None

  def __len__(self) -> int:
    return int(self.target_item.shape[0])

  def subset(self, rows) -> 'Split':
    rows = np.asarray(rows)
    features = None if self.user_features is None else self.user_features[rows]
    return Split(self.name, self.user_ids[rows], self.history_items[rows],
                 self.history_len[rows], self.target_item[rows], features)


def concat_splits(splits: list, name: str) -> Split:
  """The rows of several splits as one (in the order given); histories must share T."""
  features = [s.user_features for s in splits]
  return Split(name, np.concatenate([s.user_ids for s in splits]),
               np.concatenate([s.history_items for s in splits]),
               np.concatenate([s.history_len for s in splits]),
               np.concatenate([s.target_item for s in splits]),
               None if any(f is None for f in features) else np.concatenate(features))


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A catalogue with its SIDs and its splits.

  Attributes:
    name: short name ('industrial', 'office', 'synthetic').
    item_codes: [I, L] int32, item id -> SID codes.
    num_codes: K, codebook size per level.
    item_titles: [I] str.
    splits: split name -> Split.
    target_sids: split name -> [N] str, the row's target SID string as written
      in the file (MiniOneRec scores predictions against exactly this string).
    item_features: None, or [I, E] float32 per-item content features (the items'
      text embeddings) for the decoder's optional feature input.
  """
  name: str
  item_codes: np.ndarray
  num_codes: int
  item_titles: np.ndarray
  splits: dict
  target_sids: dict
  item_features: np.ndarray | None = None

  @property
  def num_items(self) -> int:
    return int(self.item_codes.shape[0])

  @property
  def num_levels(self) -> int:
    return int(self.item_codes.shape[1])

  @property
  def max_history(self) -> int:
    return int(next(iter(self.splits.values())).history_items.shape[1])

  def codes_of(self, items: np.ndarray) -> np.ndarray:
    """Item-id histories [N, T] (PAD where padded) -> [N, T, L] int32 SID codes, PAD where padded."""
    codes = self.item_codes[np.maximum(items, 0)]
    return np.where((items >= 0)[..., None], codes, PAD).astype(np.int32)

  def history_codes(self, split: str) -> np.ndarray:
    """[N, T, L] int32 SID codes of the split's histories, PAD where padded."""
    return self.codes_of(self.splits[split].history_items)

  def target_codes(self, split: str) -> np.ndarray:
    """[N, L] int32 SID codes of the split's targets."""
    return self.item_codes[self.splits[split].target_item].astype(np.int32)

  def with_item_codes(self, item_codes: np.ndarray, num_codes: int) -> 'Dataset':
    """Same rows under another SID assignment (e.g. a learned codebook)."""
    from vstar_jax.data import sid_strings
    sids = np.array(sid_strings.format_sids(item_codes))
    targets = {k: sids[s.target_item] for k, s in self.splits.items()}
    return dataclasses.replace(self, item_codes=np.asarray(item_codes, np.int32),
                               num_codes=num_codes, target_sids=targets)
