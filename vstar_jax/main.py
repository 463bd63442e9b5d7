"""vstar_jax entry point: flags -> config -> workdir -> the requested stage.

  python -m vstar_jax.main --config=configs/amazon.py:industrial --workdir=W --config.mode=baseline
  python -m vstar_jax.main --help
"""

from __future__ import annotations

import os
import pathlib
import shlex
import sys
import threading
import time
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from vstar_jax import cli
from vstar_jax import distributed
from vstar_jax import interrupts
from vstar_jax import pipeline
from vstar_jax import recommender
from vstar_jax import workdir as workdir_lib
from vstar_jax.eval import summary
from vstar_jax.train import run_loop

_CONFIG = config_flags.DEFINE_config_file('config', None, 'ml_collections config file '
                                          '(configs/amazon.py:industrial, configs/synthetic.py).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (created; re-use to resume).')
_OUT = flags.DEFINE_string('out', '', 'Where eval / recommend write when --workdir is read-only.')
_PRINT_CONFIG = flags.DEFINE_bool('print_config', False, 'Print the resolved config and exit.')

USER_ERRORS = (cli.UserError, ValueError, FileNotFoundError)  # ConfigError, DataError, WorkdirError


def command_config():
  """The command's config, validated (eval / recommend: with W's recorded model settings)."""
  try:
    config = _CONFIG.value
    if config is None:
      raise cli.UserError('--config is required, e.g. --config=configs/synthetic.py (--help lists them)')
    config.get('mode')  # a config file that failed to load raises here
  except OSError as e:
    raise cli.UserError(f'--config: {str(e).strip().splitlines()[-1].strip()}') from None
  pipeline.validate(config)
  return config


def with_training_config(config, workdir: pathlib.Path):
  """eval and recommend run the model W recorded; other modes the command's config."""
  if config.mode not in workdir_lib.READ_ONLY_MODES:
    return config
  config = workdir_lib.resolve_config(config, workdir)
  pipeline.validate(config)
  return config


def run_mode(config, workdir: pathlib.Path, out: pathlib.Path) -> None:
  if config.mode == 'recommend':
    recommender.run_recommend(config, workdir, out)
  else:
    pipeline.run(config, workdir, out)


def quiet_background_threads() -> None:
  """An exception that ends a library's background thread (orbax's save threads after a failed
  save, its event loops at exit) is logged in one line instead of a traceback on stderr: the
  main thread reports what failed. vstar_jax starts no thread whose traceback would be lost."""
  def hook(args):
    if args.exc_type is SystemExit:
      return
    logging.warning('background thread %s ended: %s: %s', getattr(args.thread, 'name', '?'),
                    args.exc_type.__name__, cli.one_line(str(args.exc_value))[:300])
  threading.excepthook = hook


def main(argv):
  del argv  # cli.parse_flags refused any stray argument
  interrupts.install()  # Ctrl-C waits for a checkpoint call in flight, then stops the run
  quiet_background_threads()
  logging.get_absl_handler().addFilter(workdir_lib.QuietLibraries())
  try:
    config = command_config()
    if _PRINT_CONFIG.value:
      if _WORKDIR.value and pathlib.Path(_WORKDIR.value).is_dir():
        config = with_training_config(config, pathlib.Path(_WORKDIR.value))
      print('\n'.join(f'--config.{k}={v}' for k, v in workdir_lib.flat(config).items()))
      return 0
    if not _WORKDIR.value:
      raise cli.UserError('--workdir is required (--help)')
    workdir = pathlib.Path(_WORKDIR.value)
    out = workdir_lib.output_dir(workdir, config.mode, _OUT.value,
                                 pretrained=config.model.backbone == 'hf')
  except USER_ERRORS as e:
    cli.fail(str(e))
  except KeyboardInterrupt:
    cli.fail('interrupted (Ctrl-C) before the run started', cli.INTERRUPTED)
  distributed.initialize(config.distributed)  # multi-process: before anything touches a device
  writer = distributed.is_writer()  # process 0 records the run and writes its outputs
  command = shlex.join(['python', '-m', 'vstar_jax.main', *sys.argv[1:]])
  try:
    lock = (workdir_lib.Lock(workdir, command)
            if writer and config.mode not in workdir_lib.READ_ONLY_MODES else None)
  except workdir_lib.WorkdirBusy as e:
    distributed.report_error(f'error: {cli.one_line(e)}', cli.USER_ERROR)
    cli.fail(str(e))
  invocation = workdir_lib.Invocation(out, config.mode, sys.argv, workdir, write=writer)
  try:
    config = with_training_config(config, workdir)
    invocation.set_config(config)
    run_mode(config, workdir, out)
    table = summary.table([workdir, out], config.eval.split, invocation.start) if writer else ''
    if table:
      print(table)
      invocation.note(table)
  except BaseException as e:  # pylint: disable=broad-except
    ending = how_it_ended(e, config.mode, workdir)
    if ending is None:  # a bug: the traceback is kept
      distributed.report_error(f'error: {cli.one_line(repr(e))}', 1)
      invocation.note(traceback.format_exc())
      invocation.finish('failed', 1, repr(e))
      if lock:
        lock.release()
      raise
    if ending[0] == 'user_error':
      invocation.note(traceback.format_exc())
    stop(invocation, lock, *ending)
  invocation.finish('ok', 0)
  if lock:
    lock.release()
  return 0


def how_it_ended(error: BaseException, mode: str, workdir: pathlib.Path):
  """(status, exit code, one-line message) of an expected ending, or None for a bug."""
  resume = (f'; the checkpoints under {workdir}/checkpoints are kept: run the same command to '
            'resume' if mode not in workdir_lib.READ_ONLY_MODES else '')
  if isinstance(error, KeyboardInterrupt):
    return 'interrupted', cli.INTERRUPTED, f'interrupted (Ctrl-C){resume}'
  if cli.out_of_space(error):
    again = ('; the run resumes from its last complete checkpoint'
             if mode not in workdir_lib.READ_ONLY_MODES else '')
    return ('failed', 1, f'error: no space left on the device ({cli.one_line(error)}): free '
            f'some space and run the same command again{again}')
  if isinstance(error, USER_ERRORS):
    return 'user_error', cli.USER_ERROR, f'error: {cli.one_line(error)}'
  if isinstance(error, run_loop.TrainingDiverged):
    return 'failed', 1, f'error: {cli.one_line(error)}'
  return None


def stop(invocation, lock, status: str, code: int, message: str) -> None:
  """Records how the run ended, prints `message` as one line and exits with `code`.

  os._exit, at once, without JAX's and orbax's exit handlers: after a failed restore orbax's
  threads print 'Event loop is closed' tracebacks at a normal exit, which would bury the one
  line. Pending work is abandoned; a checkpoint being written stays a temporary that the next
  run deletes, and the last committed one is kept. In a multi-process run every other process
  exits with the same message (distributed.report_error).
  """
  distributed.report_error(message, code)
  try:
    invocation.note(message)
    invocation.finish(status, code, message)
  except OSError:  # a full disk: the next run marks this record as killed
    pass
  if lock:
    lock.release()
  sys.stdout.flush()
  if code != cli.INTERRUPTED:
    time.sleep(0.5)  # let those threads' output land first, so the message is the last line
  sys.stderr.write(message + '\n')
  sys.stderr.flush()
  os._exit(code)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
