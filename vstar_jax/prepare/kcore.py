"""Iterative k-core filtering with the time window applied inside the loop (MiniOneRec's order).

Each pass counts, over the interactions still kept (inside the window, titled item, user and item
not yet removed), every user's and item's interactions, then removes all users with fewer than
`user_k` and all items with fewer than `item_k` at once; passes repeat until one removes nothing.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime
import re

import numpy as np

from vstar_jax.data.amazon import DataError

_MONTH = re.compile(r'^(\d{4})-(\d{2})$')


@dataclasses.dataclass(frozen=True)
class Window:
  """Interactions with start <= time <= end (seconds, UTC) are kept; None = unbounded.

  From `--start=YYYY-MM --end=YYYY-MM`: start is the first second of the start month and end
  the first second of the end month, so the end month itself is excluded but for that instant
  (MiniOneRec's bounds, read in UTC instead of the machine's local time zone).
  """
  start: float | None
  end: float | None
  text: str

  def contains(self, time: np.ndarray) -> np.ndarray:
    """time: [R] float64 seconds -> [R] bool."""
    keep = np.ones(time.shape, bool)
    if self.start is not None:
      keep &= time >= self.start
    if self.end is not None:
      keep &= time <= self.end
    return keep


def month_start(text: str, flag: str) -> float:
  """'YYYY-MM' -> seconds of its first instant (UTC); a bad value names the flag."""
  match = _MONTH.match(text)
  if not match or not 1 <= int(match.group(2)) <= 12:
    raise DataError(f'--{flag}={text!r}: expected YYYY-MM, e.g. 2016-10')
  return float(calendar.timegm(datetime.date(int(match.group(1)), int(match.group(2)), 1).timetuple()))


def window(start: str, end: str) -> Window:
  """The window of the --start / --end flags ('' = unbounded)."""
  lo = month_start(start, 'start') if start else None
  hi = month_start(end, 'end') if end else None
  if lo is not None and hi is not None and lo > hi:
    raise DataError(f'--start={start} is after --end={end}')
  return Window(lo, hi, f'{start or "-inf"}..{end or "+inf"}')


@dataclasses.dataclass(frozen=True)
class Pass:
  """What one k-core pass counted before removing anything."""
  users: int
  items: int
  interactions: int


def k_core(user: np.ndarray, item: np.ndarray, keep: np.ndarray, user_k: int,
           item_k: int) -> tuple[np.ndarray, list[Pass]]:
  """Iterative k-core.

  Args:
    user: [R] int32 user codes.
    item: [R] int32 item codes.
    keep: [R] bool, interactions eligible at the start (in the window, titled item).
    user_k: minimum interactions per user.
    item_k: minimum interactions per item.

  Returns:
    kept [R] bool (every kept user has >= user_k and every kept item >= item_k kept
    interactions), and the counts of each pass (the last pass removes nothing).
  """
  kept = keep.copy()
  num_users, num_items = int(user.max()) + 1, int(item.max()) + 1
  passes = []
  while True:
    user_count = np.bincount(user[kept], minlength=num_users)
    item_count = np.bincount(item[kept], minlength=num_items)
    passes.append(Pass(int(np.count_nonzero(user_count)), int(np.count_nonzero(item_count)),
                       int(np.count_nonzero(kept))))
    bad_user = (user_count > 0) & (user_count < user_k)
    bad_item = (item_count > 0) & (item_count < item_k)
    if not bad_user.any() and not bad_item.any():
      return kept, passes
    kept &= ~bad_user[user] & ~bad_item[item]
