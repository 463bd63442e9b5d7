"""What every training stage shares: resume from the latest checkpoint, log, validate, keep the best.

A stage (SFT, RL) owns `<workdir>/checkpoints/<stage>/` (latest 2 + best by valid
NDCG@10, orbax) and its records in `<workdir>/metrics.jsonl`. `StageRun` holds both:
resuming truncates the log past the restored step (work a crash undid), a non-finite loss
stops the stage with the last good checkpoint kept, and `finish` restores the kept
(best-by-valid) state. Only process 0 writes the log.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

from absl import logging
import jax

from vstar_jax.eval import validate
from vstar_jax.train import checkpoint as checkpoint_lib
from vstar_jax.train import metrics_log

BEST_METRIC = validate.BEST_METRIC


class TrainingDiverged(RuntimeError):
  """The loss became NaN/Inf; the last good checkpoint is kept on disk."""


@dataclasses.dataclass
class Finished:
  """The end of a stage: the kept state (best by valid, else the last) and where it came from."""
  state: Any
  best_step: int
  best_valid: dict


class StageRun:
  """One stage's checkpoints and metrics log in a workdir."""

  def __init__(self, workdir: pathlib.Path, stage: str, max_to_keep: int = 2):
    self.stage = stage
    self.ckpt = checkpoint_lib.Checkpointer(pathlib.Path(workdir) / 'checkpoints' / stage,
                                            max_to_keep=max_to_keep, keep_best=True,
                                            best_metric=BEST_METRIC)
    self.log = metrics_log.MetricsLog(workdir)
    self.is_writer = jax.process_index() == 0

  def resume(self, state) -> tuple[Any, bool]:
    """(latest checkpointed state or `state`, whether one was restored); drops later log records."""
    try:
      restored = self.ckpt.restore_latest(state)
    except RuntimeError as e:  # every step failed: almost always a config that changed since
      self.ckpt.close()
      raise checkpoint_lib.config_mismatch(self.ckpt.directory, e) from e
    if restored is not None:
      state = restored[0]
      logging.info('%s: resumed from step %d (epoch %d, batch %d)', self.stage, int(state.step),
                   int(state.data_epoch), int(state.data_index))
    if self.is_writer:
      self.log.truncate_after(self.stage, int(state.step))
    return state, restored is not None

  def write(self, step: int, **values) -> None:
    """One metrics.jsonl record of this stage (process 0 only)."""
    if self.is_writer:
      self.log.write(self.stage, step, **values)

  def check_finite(self, step: int, metrics: dict, keys=('loss',)) -> None:
    """Stops the stage (TrainingDiverged) when a metric in `keys` is NaN or Inf."""
    bad = {k: float(metrics[k]) for k in keys if not math.isfinite(float(metrics[k]))}
    if bad:
      self.ckpt.close()
      raise TrainingDiverged(
          f'{self.stage}: {", ".join(f"{k} is {v}" for k, v in bad.items())} at step {step}; '
          f'stopped. The last good checkpoint (step {self.ckpt.latest_step()}) is kept in '
          f'{self.ckpt.directory}')

  def save(self, step: int, state, valid: dict | None = None) -> None:
    """Checkpoints `state` as `step` (ranked by valid NDCG@10 when `valid` is given)."""
    self.ckpt.save(step, state, metrics=valid, meta={'stage': self.stage})

  def stop(self) -> None:
    """Waits for pending saves and releases the checkpointer (an early stop)."""
    self.ckpt.close()

  def finish(self, state, step: int, keep_best: bool = True) -> Finished:
    """The kept state: the best-by-valid checkpoint (or `state` at `step`), and its valid record."""
    self.ckpt.wait()
    best = self.ckpt.restore_best(state) if keep_best else None
    best_step = self.ckpt.best_step() if best is not None else step
    kept = best[0] if best is not None else state
    self.ckpt.close()
    best_valid = next((r for r in self.log.read(self.stage)
                       if r['step'] == best_step and BEST_METRIC in r), {})
    logging.info('%s: done; using step %d (valid NDCG@10 %s)', self.stage, best_step,
                 best_valid.get(BEST_METRIC))
    return Finished(kept, best_step, best_valid)
