"""Checkpoints of a training-state pytree: keep the latest k and the best, resume, survive corruption.

One orbax `CheckpointManager` over `directory`; each step is a subdirectory
`<step>/` holding the state pytree (`state/`), a JSON dict of caller metadata
(`meta/`) and, when given, the step's metrics (`metrics/`). Guarantees:

- Retention: the `max_to_keep` newest steps AND the single best step by
  `best_metric` are kept (orbax `LatestN` OR `BestN(n=1)`), so the best model
  survives however many later saves happen.
- Atomic saves: orbax writes `<step>.orbax-checkpoint-tmp-*` and renames it when
  complete; unfinished temporaries are never listed as steps and are deleted
  when the next `Checkpointer` opens the directory.
- No bad saves: a state with a NaN/Inf leaf is refused (`NonFiniteStateError`)
  before anything is written, so the last good checkpoint stays the latest.
- Corruption fallback: if the newest step fails to restore, a warning names it
  and the previous step is tried. A step that failed while an older one restored
  is renamed to `<step>.corrupt-<ns>` (kept for inspection, no longer a step) so
  the resumed run can save that step number again.
- Exact restore: arrays come back bit-identical, with the dtype and sharding
  of the template (restoration is onto the template's structure); leaves whose template
  carries no sharding (a `jax.eval_shape` template) are restored replicated on the
  current device mesh, so a run saved by N processes restores in M (design §6).
- Read-only use (`read_only=True`: eval, recommend, another run's model): nothing is
  created, cleaned up or renamed; an unreadable step is skipped, not quarantined.

Typical use (auto-resume: re-run with the same workdir):

  ckpt = Checkpointer(workdir / 'checkpoints')
  state = TrainState.create(params, optimizer, rng)
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, meta = restored
  ...
  ckpt.save(step, state, metrics={'valid_ndcg@10': ndcg}, meta={'stage': 'sft'})
  ckpt.close()
"""

from __future__ import annotations

import errno
import math
import pathlib
import shutil
import time
from typing import Any, Sequence

from absl import logging
import jax
import orbax.checkpoint as ocp

from vstar_jax import distributed
from vstar_jax import interrupts
from vstar_jax import parallel
from vstar_jax.train import state as state_lib

PyTree = Any


class NonFiniteStateError(ValueError):
  """Raised instead of saving a state that holds NaN or Inf."""

  def __init__(self, step: int):
    super().__init__(f'refusing to save checkpoint at step {step}: the state holds NaN or Inf '
                     'values; the previous checkpoint is kept as the latest')
    self.step = step


def _abstract(template: PyTree, default_sharding) -> PyTree:
  """Shape, dtype and sharding of every leaf (the template's, else `default_sharding`): the
  target orbax restores onto. An explicit sharding on every leaf is what lets a checkpoint
  restore on another topology than the one that wrote it."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, 'sharding', None) or default_sharding),
      template)


class Checkpointer:
  """Saves and restores (state pytree, JSON meta) per step under one directory."""

  def __init__(self, directory: str | pathlib.Path, max_to_keep: int = 2, keep_best: bool = True,
               best_metric: str = 'valid_ndcg@10', best_mode: str = 'max', mesh=None,
               read_only: bool = False):
    """Opens (creating if needed, unless read_only) the checkpoint directory.

    Args:
      directory: where the step subdirectories live (`<workdir>/checkpoints`).
      max_to_keep: how many of the newest steps to keep (>= 1).
      keep_best: also keep the step with the best `best_metric`, whatever its age.
      best_metric: key in `save(..., metrics=...)` that ranks checkpoints.
      best_mode: 'max' or 'min', whether larger or smaller `best_metric` is better.
      mesh: where template leaves without a sharding are restored (replicated); default
        every device (parallel.make_mesh).
      read_only: only restore: create, clean up and rename nothing (a shared or read-only
        workdir).
    """
    if max_to_keep < 1:
      raise ValueError(f'max_to_keep must be >= 1, got {max_to_keep}')
    if best_mode not in ('max', 'min'):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    self.directory = pathlib.Path(directory).absolute()
    self.read_only = read_only
    self._default_sharding = parallel.replicated(mesh or parallel.make_mesh())
    self.keep_best = keep_best
    self.best_metric = best_metric
    self.best_mode = best_mode
    policies = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
    if keep_best:  # Steps saved without metrics score -inf: never best, kept only as latest.
      policies.append(ocp.checkpoint_managers.BestN(get_metric_fn=self._score, n=1))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            best_fn=self._score if keep_best else None,
            best_mode='max',
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=not read_only, create=not read_only, read_only=read_only))

  def _score(self, metrics: dict | None) -> float:
    """`best_metric` signed so that larger is better; -inf when missing or non-finite."""
    value = (metrics or {}).get(self.best_metric)
    if value is None or not math.isfinite(value):
      return -math.inf
    return value if self.best_mode == 'max' else -value

  @interrupts.uninterrupted
  def save(self, step: int, state: PyTree, metrics: dict | None = None,
           meta: dict | None = None) -> None:
    """Starts an asynchronous save of `state` as `step` (call `wait` to block until it is on disk).

    Args:
      step: checkpoint step, larger than every saved step.
      state: the pytree to save (normally a `TrainState`); must be finite.
      metrics: name -> scalar; with `keep_best`, stored with the step and, if
        given, must contain `best_metric`, which ranks it (NaN/Inf: never best).
      meta: JSON-serializable dict returned by the restore methods.

    Raises:
      NonFiniteStateError: a floating-point leaf of `state` is NaN or Inf.
      ValueError: `step` is not after the latest step, or `best_metric` is missing.
    """
    latest = self.latest_step()
    if latest is not None and step <= latest:
      raise ValueError(f'checkpoint step {step} must be after the latest step {latest} in '
                       f'{self.directory}')
    if not bool(state_lib.is_finite(state)):
      raise NonFiniteStateError(step)
    self._check_space(state)
    metrics = {k: float(v) for k, v in (metrics or {}).items()} if self.keep_best else None
    if metrics and self.best_metric not in metrics:
      raise ValueError(f'metrics for step {step} lack the best metric {self.best_metric!r}: '
                       f'{sorted(metrics)}')
    if metrics and not math.isfinite(metrics[self.best_metric]):
      logging.warning('Step %d has %s=%s; saving it, but not as a best candidate.', step,
                      self.best_metric, metrics[self.best_metric])
    self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                meta=ocp.args.JsonSave({} if meta is None else dict(meta))),
        metrics=metrics,  # {} rather than None when absent: orbax warns on None.
        force=True)

  @interrupts.uninterrupted
  def restore_latest(self, template: PyTree) -> tuple[PyTree, dict] | None:
    """(state, meta) of the newest restorable step, or None when no step exists; meta['step']
    is the step restored.

    Args:
      template: a state of the saved structure (concrete, or `jax.eval_shape`
        output); restored leaves take its dtypes and shardings.
    """
    return self._restore_first(sorted(self.steps(), reverse=True), template)

  @interrupts.uninterrupted
  def restore_best(self, template: PyTree) -> tuple[PyTree, dict] | None:
    """(state, meta) of the best restorable step by `best_metric`, or None when none has metrics."""
    return self._restore_first(self._ranked_steps(), template)

  def _check_space(self, state: PyTree) -> None:
    """Refuses a save the disk cannot hold before orbax starts writing (its failure half-way
    is noisy and leaves a temporary behind): ENOSPC naming the sizes."""
    needed = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if hasattr(x, 'dtype'))
    free = shutil.disk_usage(self.directory if self.directory.exists() else
                             self.directory.parent).free
    if free < needed:
      raise OSError(errno.ENOSPC, f'No space left on device: a checkpoint of this state takes up '
                    f'to {needed / 2 ** 20:.1f} MiB, {self.directory} has {free / 2 ** 20:.1f} MiB '
                    'free')

  def latest_step(self) -> int | None:
    """Newest saved step, or None."""
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """Step with the best finite `best_metric`, or None (also when `keep_best` is off)."""
    ranked = self._ranked_steps()
    return ranked[0] if ranked else None

  def steps(self) -> Sequence[int]:
    """All retained steps, increasing."""
    return list(self._manager.all_steps())

  @interrupts.uninterrupted
  def wait(self) -> None:
    """Blocks until pending asynchronous saves are complete on disk."""
    self._manager.wait_until_finished()

  @interrupts.uninterrupted
  def close(self) -> None:
    """Waits for pending saves and releases orbax resources."""
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _ranked_steps(self) -> list[int]:
    """Steps with a finite `best_metric`, best first (ties: newer first)."""
    if not self.keep_best:
      return []
    scored = [(self._score(self._manager.metrics(s)), s) for s in self.steps()]
    return [s for score, s in sorted(scored, reverse=True) if score > -math.inf]

  def _restore_first(self, steps: Sequence[int], template: PyTree) -> tuple[PyTree, dict] | None:
    """Restores the first of `steps` that loads, quarantining the ones before it that failed."""
    if not steps:
      return None
    self.wait()
    target = _abstract(template, self._default_sharding)
    failed = []
    for step in steps:
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                          meta=ocp.args.JsonRestore()))
      except Exception as error:  # pylint: disable=broad-except
        # Corruption surfaces as ValueError, KeyError, FileNotFoundError, ... from
        # orbax / tensorstore; any failure is a reason to try the previous step.
        logging.warning('Checkpoint step %d in %s failed to restore (%s: %s); trying an older step.',
                        step, self.directory, type(error).__name__, error)
        failed.append((step, error))
        continue
      if failed and not self.read_only:
        self._quarantine([s for s, _ in failed])
      if failed:
        logging.warning('Restored step %d from %s instead of step(s) %s.', step, self.directory,
                        [s for s, _ in failed])
      return restored.state, dict(restored.meta, step=step)
    raise RestoreError(self.directory, list(steps), failed[-1][1]) from failed[-1][1]

  def _quarantine(self, steps: Sequence[int]) -> None:
    """Renames unreadable step directories out of orbax's view (not deleted: kept for inspection)."""
    if distributed.is_writer():
      for step in steps:
        path = self.directory / str(step)
        target = self.directory / f'{step}.corrupt-{time.time_ns()}'
        path.rename(target)
        logging.warning('Moved unreadable checkpoint %s to %s.', path, target)
    distributed.barrier('checkpoint_quarantine')
    self._manager.reload()


class RestoreError(RuntimeError):
  """No step of a checkpoint directory restored; `cause` says why, in the user's words."""

  def __init__(self, directory: pathlib.Path, steps: list, error: Exception):
    self.directory, self.steps, self.error = directory, steps, error
    self.cause = restore_cause(error)
    super().__init__(f'no checkpoint in {directory} could be restored (tried steps {steps}): '
                     f'{self.cause}; last error: {error!r}')


def restore_cause(error: Exception) -> str:
  """What a failed restore means, from orbax's / tensorstore's error text."""
  text = str(error)
  if 'opology' in text or 'was not found' in text and 'evice' in text:
    return ('it was written for other devices and the restore target names none (a bug: '
            'restores give every leaf a sharding on this run\'s mesh)')
  if any(word in text for word in ('shape', 'Shape', 'structure', 'Missing', 'missing',
                                   'not found in', 'dtype', 'Dict key mismatch', 'KeyError')):
    return ('the checkpoints do not match this config (model size, SIDs or EMA '
            '(--config.sft.ema_decay) differ from the run that wrote them; its config.json '
            'records how it was trained)')
  if any(word in text for word in ('No such file', 'FileNotFound', 'not exist', 'corrupt',
                                   'Error reading', 'DATA_LOSS', 'OUT_OF_RANGE')):
    return 'its files are missing or corrupt'
  return 'orbax could not read it'


def config_mismatch(directory: pathlib.Path, error: Exception) -> ValueError:
  """The one-line user error for checkpoints no step of which restores (naming the cause)."""
  cause = getattr(error, 'cause', None) or restore_cause(error)
  detail = getattr(error, 'error', error)
  return ValueError(f'{directory}: no checkpoint step restores: {cause}: '
                    f'{type(detail).__name__}: {cli_line(detail)}')


def cli_line(error: Exception) -> str:
  """The last non-empty line of an error's text (orbax errors span many lines)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[-1] if lines else ''
