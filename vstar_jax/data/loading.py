"""Dataset selection from the config: real Amazon data or the synthetic generator."""

from __future__ import annotations

import ml_collections

from vstar_jax.default_config import ConfigError
from vstar_jax.data import amazon, synthetic, types

DATASETS = ('industrial', 'office', 'synthetic')


def validate_config(c: ml_collections.ConfigDict) -> None:
  """Rejects impossible dataset settings (config.dataset, config.data), naming the flag."""
  if c.dataset not in DATASETS:
    raise ConfigError('dataset', f'{c.dataset!r} is not one of {DATASETS}')
  if c.data.max_history < 1:
    raise ConfigError('data.max_history', f'must be >= 1, got {c.data.max_history}')
  if c.data.on_bad_row not in ('error', 'skip'):
    raise ConfigError('data.on_bad_row', f'must be error or skip, got {c.data.on_bad_row!r}')


def load(config: ml_collections.ConfigDict) -> types.Dataset:
  """The dataset named by config.dataset, with its shipped (or generated) SIDs."""
  if config.dataset == 'synthetic':
    s = config.synthetic
    return synthetic.make_dataset(num_items=s.num_items, num_users=s.num_users,
                                  num_codes=s.num_codes, max_history=config.data.max_history,
                                  seed=config.seed)
  return amazon.load_dataset(config.dataset, config.data_dir or None,
                             max_history=config.data.max_history,
                             on_bad_row=config.data.on_bad_row)
