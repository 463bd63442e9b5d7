"""Defaults shared by every config file; `configs/*.py` override what differs."""

from __future__ import annotations

import ml_collections

from vstar_jax.rl import loop
from vstar_jax.sid import learn

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

  c.sid = learn.default_sid_config()
  c.sid.source = 'given'       # 'given': the dataset's shipped SIDs; 'learned': W/sid/ (learned if absent)

  c.baseline = ml_collections.ConfigDict()
  c.baseline.names = ('popularity', 'transition')

  c.model = ml_collections.ConfigDict()
  c.model.num_layers = 4
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.d_ff = 512
  c.model.dropout = 0.1
  c.model.tie_embeddings = True
  c.model.dtype = 'float32'
  c.model.item_hash_buckets = 4096  # >0: hashed item-identity embeddings (see DecoderConfig)
  c.model.item_text_features = False  # history items also get their (frozen) text embedding, projected

  c.sft = ml_collections.ConfigDict()
  c.sft.train_splits = ('train',)   # ('train', 'valid'): the labelled train+valid refit
  c.sft.epochs = 20
  c.sft.batch_size = 128
  c.sft.lr = 1e-3
  c.sft.warmup_steps = 200
  c.sft.weight_decay = 0.1
  c.sft.clip_norm = 1.0
  c.sft.b1 = 0.9
  c.sft.b2 = 0.98
  c.sft.label_smoothing = 0.0
  c.sft.ema_decay = 0.0             # > 0: validate, keep and export an EMA of the weights
  c.sft.history_dropout = 0.0       # P(mask a history item, never the last) per train example
  c.sft.log_every_steps = 20
  c.sft.checkpoint_every_steps = 500
  c.sft.valid_split = 'valid'
  c.sft.valid_max_rows = 1000
  c.sft.valid_beams = 20
  c.sft.keep_best = True

  c.rl = loop.default_rl_config()

  c.eval = ml_collections.ConfigDict()
  c.eval.num_beams = 50
  c.eval.batch_size = 32
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
  if c.dataset not in ('industrial', 'office', 'synthetic', 'prepared'):
    bad('dataset', f'{c.dataset!r} is not industrial, office, synthetic or prepared')
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
  if c.model.d_model % c.model.num_heads:
    bad('model.d_model', f'{c.model.d_model} is not divisible by model.num_heads={c.model.num_heads}')
  if c.sft.epochs < 1 or c.sft.batch_size < 1:
    bad('sft.epochs' if c.sft.epochs < 1 else 'sft.batch_size', 'must be >= 1')
  if not 0 <= c.sft.ema_decay < 1:
    bad('sft.ema_decay', f'must be in [0, 1) (0: off), got {c.sft.ema_decay}')
  if not 0 <= c.sft.history_dropout < 1:
    bad('sft.history_dropout', f'must be in [0, 1), got {c.sft.history_dropout}')
  if c.sft.valid_beams < 10:
    bad('sft.valid_beams', f'must be >= 10 (validation selects by NDCG@10), got {c.sft.valid_beams}')
  for split in c.sft.train_splits:
    if split not in ('train', 'valid'):
      bad('sft.train_splits', f'{split!r} is not train or valid')
  if c.sid.source not in ('given', 'learned'):
    bad('sid.source', f'{c.sid.source!r} is not given or learned')
  loop.validate_config(c.rl)
  for name in c.baseline.names:
    if name not in ('popularity', 'transition'):
      bad('baseline.names', f'unknown baseline {name!r}')
