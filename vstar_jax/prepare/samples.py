"""Per-user sequences -> sliding-window samples -> chronological 8:1:1 split (MiniOneRec's order).

Users are numbered in order of first appearance among the kept interactions; each user's
interactions are sorted by time, ties in file order; items are numbered 0..N-1 in order of first
appearance along those sequences (user by user). Every interaction but a user's first is the
target of one sample whose history is up to `max_history` items before it. Samples are sorted by
target time (ties: user number, then position) and cut at int(0.8 n) and int(0.9 n).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vstar_jax.data.types import PAD

SPLITS = ('train', 'valid', 'test')


@dataclasses.dataclass(frozen=True)
class Sequences:
  """The kept interactions, grouped by user and sorted by time.

  Attributes:
    user: [M] int32 user number (0..U-1), non-decreasing.
    item: [M] int32 item id (0..I-1).
    time: [M] float64 seconds.
    user_code: [U] int32 raw-log user code of each user number.
    item_code: [I] int32 raw-log item code of each item id.
  """
  user: np.ndarray
  item: np.ndarray
  time: np.ndarray
  user_code: np.ndarray
  item_code: np.ndarray


def _first_appearance_numbers(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """codes [M] -> (number [M] in order of first appearance, code of each number [K])."""
  unique, first = np.unique(codes, return_index=True)
  code_of_number = unique[np.argsort(first, kind='stable')].astype(np.int32)
  number_of_code = np.full(size, -1, np.int32)
  number_of_code[code_of_number] = np.arange(len(code_of_number), dtype=np.int32)
  return number_of_code[codes], code_of_number


def sequences(user: np.ndarray, item: np.ndarray, time: np.ndarray, kept: np.ndarray) -> Sequences:
  """user, item [R] int32 codes, time [R] float64, kept [R] bool -> Sequences."""
  rows = np.flatnonzero(kept)
  user_number, user_code = _first_appearance_numbers(user[rows], int(user.max()) + 1)
  order = np.lexsort((np.arange(len(rows)), time[rows], user_number))
  rows, user_number = rows[order], user_number[order]
  item_id, item_code = _first_appearance_numbers(item[rows], int(item.max()) + 1)
  return Sequences(user_number, item_id, time[rows], user_code, item_code)


@dataclasses.dataclass(frozen=True)
class Samples:
  """Sliding-window samples in split order (train rows, then valid, then test).

  Attributes:
    user: [N] int32 user number.
    history: [N, T] int32 item ids, left-padded with PAD (oldest first).
    history_len: [N] int32, >= 1.
    target: [N] int32 item id.
    time: [N] float64 target time.
    bounds: split -> (first row, end row).
  """
  user: np.ndarray
  history: np.ndarray
  history_len: np.ndarray
  target: np.ndarray
  time: np.ndarray
  bounds: dict

  def split(self, name: str) -> slice:
    return slice(*self.bounds[name])


def windows(seq: Sequences, max_history: int) -> Samples:
  """Every interaction but each user's first -> one sample, sorted by time and split 8:1:1."""
  m = len(seq.user)
  starts = np.flatnonzero(np.r_[True, seq.user[1:] != seq.user[:-1]])
  user_start = np.repeat(starts, np.diff(np.r_[starts, m]))  # [M] position of the user's first
  targets = np.flatnonzero(np.arange(m) > user_start)          # [N] positions with a history
  offsets = np.arange(-max_history, 0)                          # [T]
  src = targets[:, None] + offsets[None, :]                     # [N, T]
  valid = src >= user_start[targets][:, None]
  history = np.where(valid, seq.item[np.maximum(src, 0)], PAD).astype(np.int32)
  order = np.argsort(seq.time[targets], kind='stable')
  targets, history, valid = targets[order], history[order], valid[order]
  n = len(targets)
  cut_a, cut_b = int(n * 0.8), int(n * 0.9)
  return Samples(user=seq.user[targets], history=history,
                 history_len=valid.sum(1).astype(np.int32), target=seq.item[targets],
                 time=seq.time[targets],
                 bounds={'train': (0, cut_a), 'valid': (cut_a, cut_b), 'test': (cut_b, n)})
