"""vstar_jax entry point: flags -> config -> workdir -> the requested stage.

  python -m vstar_jax.main --config=configs/amazon.py:industrial --workdir=W --config.mode=baseline
"""

from __future__ import annotations

import json
import logging as logging_std
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vstar_jax import parallel
from vstar_jax import pipeline
from vstar_jax.train import run_loop

_CONFIG = config_flags.DEFINE_config_file('config', None, 'ml_collections config file '
                                          '(configs/amazon.py:industrial, configs/synthetic.py).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (created; re-use to resume).')


class _QuietLibraries(logging_std.Filter):
  """Drops orbax's per-save INFO chatter; our own progress lines stay readable."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('--config is required, e.g. --config=configs/synthetic.py')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required')
  try:
    pipeline.validate(config)
  except ValueError as e:
    logging.error('%s', e)
    sys.exit(f'config error: {e}')
  parallel.initialize_distributed(config.rl.distributed)  # multi-host: before anything touches JAX
  workdir = pathlib.Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'config.json').write_text(json.dumps(config.to_dict(), indent=1, default=str))
  try:
    pipeline.run(config, workdir)
  except (ValueError, FileNotFoundError, run_loop.TrainingDiverged) as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
