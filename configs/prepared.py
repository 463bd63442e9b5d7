"""A dataset made by `python -m vstar_jax.prepare`: get_config('DIR/NAME').

  python -m vstar_jax.main --config=configs/prepared.py:data/beauty/Beauty --workdir=W \
      --config.mode=sid        # learns SIDs and writes them into the dataset's files
  ... --config.mode=sft | rl | eval | baseline | recommend
"""

import json
import pathlib

from vstar_jax import default_config


def get_config(arg: str = ''):
  path = pathlib.Path(arg)
  if not arg or not path.name or path.name in ('.', '..'):
    raise ValueError(f'configs/prepared.py takes DIR/NAME (the --out and --name of prepare), got {arg!r}')
  c = default_config.base_config()
  c.dataset = 'prepared'
  c.data_dir = str(path.parent)
  c.data.name = path.name
  stats = path.parent / f'{path.name}.stats.json'
  if stats.is_file():  # histories are as long as prepare made them
    c.data.max_history = json.loads(stats.read_text())['max_history']
  c.sid.source = 'given'  # the SIDs the sid mode wrote into DIR/index/NAME.index.json
  default_config.sft_regularisers(c)  # Industrial's recipe, as configs/amazon.py:industrial
  default_config.rl_recipe(c)
  return c
