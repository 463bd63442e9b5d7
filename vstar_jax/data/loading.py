"""Dataset selection from the config: real Amazon data or the synthetic generator."""

from __future__ import annotations

import ml_collections

from vstar_jax.data import amazon, prepared, synthetic, types


def load(config: ml_collections.ConfigDict) -> types.Dataset:
  """The dataset named by config.dataset, with its shipped (or generated) SIDs."""
  if config.dataset == 'synthetic':
    s = config.synthetic
    return synthetic.make_dataset(num_items=s.num_items, num_users=s.num_users,
                                  num_codes=s.num_codes, max_history=config.data.max_history,
                                  seed=config.seed)
  if config.dataset == 'prepared':  # made by python -m vstar_jax.prepare; SIDs from mode=sid
    return prepared.load(config.data_dir, config.data.name, max_history=config.data.max_history,
                         num_codes=config.sid.codebook_size, on_bad_row=config.data.on_bad_row)
  return amazon.load_dataset(config.dataset, config.data_dir or None,
                             max_history=config.data.max_history,
                             on_bad_row=config.data.on_bad_row)
