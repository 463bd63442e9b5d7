"""Defaults shared by every config file; `configs/*.py` override what differs."""

from __future__ import annotations

import ml_collections

MODES = ('baseline', 'sid', 'sft', 'rl', 'eval', 'recommend', 'all')


def base_config() -> ml_collections.ConfigDict:
  """Every knob of the pipeline, overridable as --config.x=y."""
  c = ml_collections.ConfigDict()
  c.mode = 'all'
  c.dataset = 'synthetic'      # 'industrial' | 'office' | 'synthetic'
  c.data_dir = ''              # empty: $VSTAR_DATA_DIR
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.max_history = 10
  c.data.on_bad_row = 'error'  # 'error' | 'skip' (skip logs and counts bad rows)

  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.num_items = 400
  c.synthetic.num_users = 600
  c.synthetic.num_codes = 16

  c.baseline = ml_collections.ConfigDict()
  c.baseline.names = ('popularity', 'transition')

  c.eval = ml_collections.ConfigDict()
  c.eval.num_beams = 50
  c.eval.batch_size = 64
  c.eval.split = 'test'
  c.eval.max_rows = 0          # 0: every row of the split

  c.recommend = ml_collections.ConfigDict()
  c.recommend.history = ''     # comma-separated item ids; empty: the first rows of eval.split
  c.recommend.top_n = 10
  c.recommend.num_rows = 5
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Rejects impossible settings before any work starts, naming the flag."""
  def bad(flag, msg):
    raise ValueError(f'--config.{flag}: {msg}')
  if c.mode not in MODES:
    bad('mode', f'{c.mode!r} is not one of {MODES}')
  if c.dataset not in ('industrial', 'office', 'synthetic'):
    bad('dataset', f'{c.dataset!r} is not industrial, office or synthetic')
  if c.data.max_history < 1:
    bad('data.max_history', f'must be >= 1, got {c.data.max_history}')
  if c.data.on_bad_row not in ('error', 'skip'):
    bad('data.on_bad_row', f'must be error or skip, got {c.data.on_bad_row!r}')
  if c.eval.num_beams < 1:
    bad('eval.num_beams', f'must be >= 1, got {c.eval.num_beams}')
  if c.eval.batch_size < 1:
    bad('eval.batch_size', f'must be >= 1, got {c.eval.batch_size}')
  if c.eval.split not in ('train', 'valid', 'test'):
    bad('eval.split', f'{c.eval.split!r} is not train, valid or test')
  for name in c.baseline.names:
    if name not in ('popularity', 'transition'):
      bad('baseline.names', f'unknown baseline {name!r}')
