"""metrics.jsonl (one JSON object per logged step) and progress lines with rate and ETA."""

from __future__ import annotations

import json
import math
import pathlib
import time

from absl import logging


class MetricsLog:
  """Appends records to <workdir>/metrics.jsonl; on resume drops a stage's records past the restored step."""

  def __init__(self, workdir: pathlib.Path):
    self.path = pathlib.Path(workdir) / 'metrics.jsonl'
    self.path.parent.mkdir(parents=True, exist_ok=True)

  def truncate_after(self, stage: str, step: int) -> None:
    """Forgets `stage` records with step > `step` (they belong to work a crash undid)."""
    if not self.path.exists():
      return
    kept = [line for line in self.path.read_text().splitlines() if line.strip()
            and not (json.loads(line).get('stage') == stage and json.loads(line).get('step', 0) > step)]
    self.path.write_text(''.join(line + '\n' for line in kept))

  def write(self, stage: str, step: int, **values) -> None:
    record = {'stage': stage, 'step': int(step), 'time': time.time()}
    record.update({k: (float(v) if isinstance(v, (int, float)) or hasattr(v, 'dtype') else v)
                   for k, v in values.items()})
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')

  def read(self, stage: str | None = None) -> list[dict]:
    if not self.path.exists():
      return []
    records = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
    return [r for r in records if stage is None or r.get('stage') == stage]


class Progress:
  """Logs `done/total`, rate and ETA at most every `every_s` seconds."""

  def __init__(self, name: str, total: int, start: int = 0, unit: str = 'steps', every_s: float = 20.0):
    self.name, self.total, self.unit, self.every_s = name, total, unit, every_s
    self.start_count = start
    self.start_time = self.last = time.perf_counter()

  def update(self, done: int, extra: str = '', force: bool = False) -> None:
    now = time.perf_counter()
    if not force and now - self.last < self.every_s:
      return
    self.last = now
    rate = (done - self.start_count) / max(now - self.start_time, 1e-9)
    eta = (self.total - done) / rate if rate > 0 else math.inf
    logging.info('%s: %d/%d %s, %.2f %s/s, ETA %.0f s %s', self.name, done, self.total, self.unit,
                 rate, self.unit, eta, extra)
