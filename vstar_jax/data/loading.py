"""Dataset selection from the config: real Amazon data or the synthetic generator."""

from __future__ import annotations

import ml_collections

from vstar_jax.data import amazon, synthetic, types


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
