"""Ctrl-C that never lands inside orbax: SIGINT is deferred while a checkpoint call runs.

Python raises KeyboardInterrupt wherever the main thread is. Inside orbax's asynchronous
save or restore that can leave a lock held or a thread waited on for ever, and the run
then hangs instead of stopping (seen in CI). With `install()` (the CLI does it), a first
Ctrl-C during a `deferred()` block is remembered and raised as KeyboardInterrupt when the
block ends; a second one is raised at once (the escape hatch). Outside those blocks, and
without `install()`, Ctrl-C behaves as Python's default.
"""

from __future__ import annotations

import contextlib
import functools
import signal

_depth = 0          # nesting of deferred() blocks in the main thread
_pending = False    # a Ctrl-C arrived inside one


def _on_sigint(signum, frame):
  del signum, frame
  global _pending
  if _depth and not _pending:
    _pending = True
    return
  raise KeyboardInterrupt


def install() -> None:
  """Makes SIGINT honour deferred() blocks (call from the main thread)."""
  signal.signal(signal.SIGINT, _on_sigint)


@contextlib.contextmanager
def deferred():
  """A block that a first Ctrl-C does not interrupt; it is raised when the block ends."""
  global _depth, _pending
  _depth += 1
  try:
    yield
  except BaseException:        # the block failed (or a second Ctrl-C): nothing stays pending
    _depth -= 1
    _pending = _pending and bool(_depth)
    raise
  _depth -= 1
  if not _depth and _pending:
    _pending = False
    raise KeyboardInterrupt


def uninterrupted(method):
  """Decorator: runs `method` inside deferred()."""
  @functools.wraps(method)
  def wrapper(*args, **kwargs):
    with deferred():
      return method(*args, **kwargs)
  return wrapper
