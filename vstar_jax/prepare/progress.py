"""A progress line with rate and ETA for the passes a user waits on (reading, writing, encoding)."""

from __future__ import annotations

import time

from absl import logging


class Progress:
  """Logs `desc: done/total (pct) rate/s, ETA` at most every `every_s` seconds, and a final line."""

  def __init__(self, desc: str, total: float, unit: str = '', every_s: float = 5.0):
    self.desc, self.total, self.unit, self.every_s = desc, total, unit, every_s
    self.start = self.last = time.time()
    self.done = 0.0

  def update(self, done: float) -> None:
    """Records progress `done` (absolute, in the same units as `total`)."""
    self.done = done
    now = time.time()
    if now - self.last >= self.every_s:
      self.last = now
      logging.info('%s', self.line(now))

  def line(self, now: float) -> str:
    elapsed = max(now - self.start, 1e-9)
    rate = self.done / elapsed
    pct = 100.0 * self.done / self.total if self.total else 100.0
    eta = (self.total - self.done) / rate if rate > 0 and self.total else 0.0
    return (f'{self.desc}: {_human(self.done)}/{_human(self.total)}{self.unit} ({pct:.0f}%), '
            f'{_human(rate)}{self.unit}/s, {elapsed:.0f}s elapsed, ETA {eta:.0f}s')

  def close(self) -> float:
    """Logs the final line; returns the elapsed seconds."""
    self.done = self.total if self.total else self.done
    now = time.time()
    logging.info('%s', self.line(now))
    return now - self.start


def _human(x: float) -> str:
  for scale, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if abs(x) >= scale:
      return f'{x / scale:.1f}{suffix}'
  return f'{x:.0f}'
