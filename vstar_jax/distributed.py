"""Multi-process runs (design §6): jax.distributed from config.distributed, one writer, barriers,
and an error on any process that stops every process at once with that error.

Every process of a run executes the same command. `initialize` joins them (a no-op for one
process); process 0 is the only writer of records, evaluations, plots and config.json
(`is_writer`); `barrier` waits for every process (e.g. before reading a file process 0 wrote).

Errors: a process that fails publishes its one-line error in the coordination service's
key-value store (`report_error`) before it exits; a watcher thread in every other process
blocks on that key and exits its process with the same message and exit code. Without it a
failure on one process leaves the others waiting in their next collective until a timeout
(minutes). A process that dies without reporting (SIGKILL) is noticed by the coordination
service's heartbeat after HEARTBEAT_TIMEOUT_S.
"""

from __future__ import annotations

import atexit
import itertools
import os
import sys
import threading

import jax

ERROR_KEY = 'vstar_jax/error'
INITIALIZATION_TIMEOUT_S = 300  # how long process 0 waits for the others to join
HEARTBEAT_TIMEOUT_S = 60        # a silently dead process stops the others after this long
BARRIER_TIMEOUT_S = 1800        # a barrier is where a slow process (e.g. one writing) is awaited

WATCH_POLL_S = 1.0           # how often the watcher wakes to see whether the process is exiting

_reported = False            # this process published an error (its watcher then stays quiet)
_stop = threading.Event()    # set at exit: the watcher returns
_barriers = itertools.count()


def initialize(d) -> None:
  """jax.distributed.initialize from config.distributed (enabled, coordinator, num_processes,
  process_id; each empty/None = from the cluster environment, as on Cloud TPU or SLURM).

  A no-op when disabled or already initialized. Must run before anything touches a device.
  """
  if not d.enabled or jax.distributed.is_initialized():
    return
  jax.distributed.initialize(coordinator_address=d.coordinator or None,
                             num_processes=d.num_processes, process_id=d.process_id,
                             initialization_timeout=INITIALIZATION_TIMEOUT_S,
                             heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
  if jax.process_count() > 1:
    watcher = threading.Thread(target=_watch_errors, name='vstar_jax-error-watch', daemon=True)
    watcher.start()
    # Stopped before the interpreter finalizes: a thread left blocked inside the coordination
    # client at exit aborts the process ('FATAL: exception not rethrown').
    atexit.register(lambda: (_stop.set(), watcher.join(timeout=2 * WATCH_POLL_S)))


def is_writer() -> bool:
  """Whether this process writes the run's files (process 0; always true for one process).
  A single-process run answers without starting a JAX backend."""
  return not multi_process() or jax.process_index() == 0


def multi_process() -> bool:
  return jax.distributed.is_initialized() and jax.process_count() > 1


def _client():
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  return jax_distributed.global_state.client


def barrier(name: str) -> None:
  """Waits until every process reached the barrier `name` (a no-op for one process)."""
  if multi_process():
    _client().wait_at_barrier(f'vstar_jax/{name}/{next(_barriers)}', BARRIER_TIMEOUT_S * 1000)


def report_error(message: str, exit_code: int) -> None:
  """Publishes this process's error, so every other process of the run exits with it too."""
  global _reported
  if not multi_process() or _reported:
    return
  _reported = True
  try:
    _client().key_value_set(ERROR_KEY, f'{exit_code}\t{jax.process_index()}\t{message}')
  except Exception:  # pylint: disable=broad-except
    pass  # another process reported first: its error stops the run


def _watch_errors() -> None:
  """Blocks on ERROR_KEY; when a peer publishes an error, exits this process with it."""
  client = _client()
  while not _stop.is_set():
    try:
      value = client.blocking_key_value_get(ERROR_KEY, int(WATCH_POLL_S * 1000))
    except Exception as e:  # pylint: disable=broad-except
      if 'deadline' in str(e).lower() or 'timed out' in str(e).lower():
        continue  # no error yet
      return  # the service is shutting down: a normal exit
    if _reported:
      return  # this process failed first; it exits through its own error path
    code, process, message = value.split('\t', 2)
    sys.stdout.flush()
    sys.stderr.write(f'{message} (reported by process {process}; this is process '
                     f'{jax.process_index()})\n')
    sys.stderr.flush()
    os._exit(int(code))
