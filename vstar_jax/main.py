"""vstar_jax entry point: flags -> config -> workdir -> the requested stage.

  python -m vstar_jax.main --config=configs/amazon.py:industrial --workdir=W --config.mode=baseline
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vstar_jax import default_config
from vstar_jax import pipeline

_CONFIG = config_flags.DEFINE_config_file('config', None, 'ml_collections config file '
                                          '(configs/amazon.py:industrial, configs/synthetic.py).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (created; re-use to resume).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('--config is required, e.g. --config=configs/synthetic.py')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required')
  try:
    default_config.validate(config)
  except ValueError as e:
    logging.error('%s', e)
    sys.exit(f'config error: {e}')
  workdir = pathlib.Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'config.json').write_text(json.dumps(config.to_dict(), indent=1, default=str))
  pipeline.run(config, workdir)


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
