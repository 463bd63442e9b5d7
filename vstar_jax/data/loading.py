"""Dataset selection from the config: real Amazon data or the synthetic generator."""

from __future__ import annotations

import ml_collections

from vstar_jax.default_config import ConfigError
from vstar_jax.data import amazon, holdout, prepared, synthetic, types

DATASETS = ('industrial', 'office', 'synthetic', 'prepared')


def validate_config(c: ml_collections.ConfigDict) -> None:
  """Rejects impossible dataset settings (config.dataset, config.data), naming the flag."""
  if c.dataset not in DATASETS:
    raise ConfigError('dataset', f'{c.dataset!r} is not one of {DATASETS}')
  if c.data.max_history < 1:
    raise ConfigError('data.max_history', f'must be >= 1, got {c.data.max_history}')
  if c.data.on_bad_row not in ('error', 'skip'):
    raise ConfigError('data.on_bad_row', f'must be error or skip, got {c.data.on_bad_row!r}')
  if not 0 <= c.data.holdout <= 1:
    raise ConfigError('data.holdout', f'must be in [0, 1] (a fraction of the users), got '
                      f'{c.data.holdout}')
  checked = [('sft.train_splits', c.sft.train_splits)]
  if c.mode in ('rl', 'all'):  # an SFT-only command need not change the RL rows
    checked.append(('rl.train_splits', c.rl.train_splits))
  for flag, splits in checked:
    if holdout.SPLIT in splits and not c.data.holdout:
      raise ConfigError(flag, f'{splits} reads the {holdout.SPLIT!r} split, which needs '
                        '--config.data.holdout > 0')


def load(config: ml_collections.ConfigDict) -> types.Dataset:
  """The dataset named by config.dataset, with its shipped (or generated) SIDs and, with
  config.data.holdout > 0, its RL holdout split (data.holdout)."""
  if config.dataset == 'synthetic':
    s = config.synthetic
    dataset = synthetic.make_dataset(num_items=s.num_items, num_users=s.num_users,
                                     num_codes=s.num_codes, max_history=config.data.max_history,
                                     reverse_users=s.reverse_users, seed=config.seed)
  elif config.dataset == 'prepared':  # made by python -m vstar_jax.prepare; SIDs from mode=sid
    dataset = prepared.load(config.data_dir, config.data.name, max_history=config.data.max_history,
                            num_codes=config.sid.codebook_size, on_bad_row=config.data.on_bad_row)
  else:
    dataset = amazon.load_dataset(config.dataset, config.data_dir or None,
                                  max_history=config.data.max_history,
                                  on_bad_row=config.data.on_bad_row)
  if config.data.holdout:
    dataset = holdout.split_holdout(dataset, config.data.holdout, config.data.holdout_seed)
  return dataset
