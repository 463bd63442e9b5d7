"""Amazon 2018 datasets in MiniOneRec format: get_config('industrial' | 'office')."""

from vstar_jax import default_config


def get_config(arg: str = 'industrial'):
  c = default_config.base_config()
  if arg not in ('industrial', 'office'):
    raise ValueError(f'configs/amazon.py takes industrial or office, got {arg!r}')
  c.dataset = arg
  return c
