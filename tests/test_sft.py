"""SFT: learns the synthetic signal, a resumed run equals an uninterrupted one bit-for-bit, and
data-parallel SFT on 4 simulated devices equals SFT on 1 device with the same global batch.

Run as a script (`python tests/test_sft.py OUT_DIR`, with 4 simulated devices) this module
trains the sharded run and saves its params; the test compares them with this process's
single-device run.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from vstar_jax import default_config
from vstar_jax.data import synthetic
from vstar_jax.model import layout
from vstar_jax.eval import validate
from vstar_jax.sid import trie as trie_lib
from vstar_jax.train import metrics_log
from vstar_jax.train import sft


def tiny_config(epochs=2):
  c = default_config.base_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 1, 32, 2, 64
  c.sft.epochs = epochs
  c.sft.batch_size = 64
  c.sft.warmup_steps = 5
  c.sft.lr = 3e-3
  c.sft.log_every_steps = 5
  c.sft.checkpoint_every_steps = 7
  c.sft.valid_max_rows = 100
  c.sft.valid_beams = 10
  c.eval.batch_size = 50
  return c


@pytest.fixture(scope='module')
def small_data():
  return synthetic.make_dataset(num_items=120, num_users=150, num_codes=8, seq_len=8)


def test_resume_after_interruption_is_bit_identical(small_data, tmp_path):
  config = tiny_config(epochs=2)
  full = sft.train(config, small_data, tmp_path / 'full')
  steps_per_epoch = len(small_data.splits['train']) // config.sft.batch_size
  # Interrupt mid-epoch (not on a checkpoint boundary), then resume in a fresh call.
  stop = steps_per_epoch + 3
  sft.train(config, small_data, tmp_path / 'cut', stop_at_step=stop)
  resumed = sft.train(config, small_data, tmp_path / 'cut')
  assert full.steps == resumed.steps == 2 * steps_per_epoch
  jax.tree.map(np.testing.assert_array_equal, full.params, resumed.params)
  # The metrics log holds each step once, as the uninterrupted run's does.
  steps = [json.loads(l)['step'] for l in (tmp_path / 'cut' / 'metrics.jsonl').read_text().splitlines()
           if 'loss' in json.loads(l)]
  assert steps == sorted(set(steps))


def test_ema_warm_up_and_decay():
  ema, params = {'w': np.zeros(3)}, {'w': np.ones(3)}
  # Step 1: rate min(0.999, 2/11): the average moves 9/11 of the way at once.
  np.testing.assert_allclose(sft.update_ema(ema, params, 1, 0.999)['w'], 9 / 11, rtol=1e-6)
  # Late in training the configured decay rules.
  np.testing.assert_allclose(sft.update_ema(ema, params, 10 ** 6, 0.9)['w'], 0.1, rtol=1e-6)


def test_ema_and_history_dropout_run_resumes_bit_identically(small_data, tmp_path):
  config = tiny_config(epochs=1)
  config.sft.ema_decay = 0.9
  config.sft.history_dropout = 0.2
  full = sft.train(config, small_data, tmp_path / 'full')
  sft.train(config, small_data, tmp_path / 'cut', stop_at_step=3)
  resumed = sft.train(config, small_data, tmp_path / 'cut')
  jax.tree.map(np.testing.assert_array_equal, full.params, resumed.params)
  raw = sft.train(tiny_config(epochs=1), small_data, tmp_path / 'raw')
  # Same seed and data, but the export is the EMA (and the inputs were masked): not the plain run's.
  diff = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), full.params, raw.params))
  assert max(diff) > 1e-4


def test_item_text_features_stay_frozen_through_training_and_resume(small_data, tmp_path):
  import dataclasses
  features = synthetic.item_embeddings(small_data, dim=16)
  data = dataclasses.replace(small_data, item_features=features)
  config = tiny_config(epochs=1)
  config.model.item_text_features = True
  config.sft.ema_decay = 0.9
  full = sft.train(config, data, tmp_path / 'full')
  keys, table = layout.item_feature_table(data.item_codes, data.num_codes, features)
  assert full.cfg.item_feature_keys == keys and full.cfg.item_feature_dim == 16
  np.testing.assert_allclose(full.params['item_text'], table, atol=1e-6)  # frozen (EMA rounds)
  sft.train(config, data, tmp_path / 'cut', stop_at_step=3)
  resumed = sft.train(config, data, tmp_path / 'cut')
  jax.tree.map(np.testing.assert_array_equal, full.params, resumed.params)
  with pytest.raises(ValueError, match='item_text_features'):
    sft.train(config, small_data, tmp_path / 'none')


def test_loss_decreases_and_beats_popularity(small_data, tmp_path):
  from vstar_jax import baselines
  config = tiny_config(epochs=6)
  result = sft.train(config, small_data, tmp_path)
  records = [r for r in metrics_log.MetricsLog(tmp_path).read('sft') if 'loss' in r]
  assert records[-1]['loss'] < 0.7 * records[0]['loss']
  trie = trie_lib.build_trie(small_data.item_codes, small_data.num_codes)
  rows = np.arange(len(small_data.splits['test']))
  _, ours = validate.beam_eval(result.params, result.cfg, trie, small_data, 'test', rows, 20, 50)
  pop = baselines.most_popular(small_data.splits['train'], small_data.splits['test'],
                               small_data.item_codes, 20)
  hit_pop = np.mean((pop[:, :10] == small_data.target_codes('test')[:, None]).all(-1).any(-1))
  assert ours['HR@10'] > hit_pop + 0.1


def test_drop_history_items_masks_whole_items_but_never_the_last():
  history = np.random.default_rng(0).integers(0, 8, (2000, 10, 3)).astype(np.int32)
  history[:5, :4] = -1  # left padding stays padding
  dropped = np.asarray(sft.drop_history_items(history, 0.3, jax.random.key(1)))
  masked = (dropped == -1).all(-1)
  assert ((dropped == -1).any(-1) == masked).all()           # an item goes whole or not at all
  assert not masked[:, -1].any()                              # the most recent item is kept
  np.testing.assert_array_equal(dropped[~masked], history[~masked])
  assert masked[:5, :4].all()
  assert abs(masked[5:, :-1].mean() - 0.3) < 0.01
  np.testing.assert_array_equal(sft.drop_history_items(history, 0.0, jax.random.key(1)), history)


def sharded_config():
  """Dropout, EMA and history dropout on: every random draw must not depend on the sharding."""
  config = tiny_config(epochs=2)
  config.sft.ema_decay, config.sft.history_dropout = 0.9, 0.2
  config.sft.checkpoint_every_steps = 0
  return config


def test_sft_on_four_devices_equals_one_device(small_data, tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  proc = subprocess.Popen([sys.executable, __file__, str(tmp_path / 'four')], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  one = sft.train(sharded_config(), small_data, tmp_path / 'one')
  log = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, log[-4000:]
  four = dict(np.load(tmp_path / 'four' / 'params.npz'))
  flat = {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(one.params)[0]}
  assert sorted(flat) == sorted(four)
  moved = 0.0
  for key, value in flat.items():
    np.testing.assert_allclose(four[key], value, rtol=1e-4, atol=2e-6, err_msg=key)
    moved = max(moved, float(np.abs(value).max()))
  assert moved > 0
  records = {name: [r for r in metrics_log.MetricsLog(tmp_path / name).read('sft')]
             for name in ('one', 'four')}
  assert [r['step'] for r in records['one']] == [r['step'] for r in records['four']]
  for a, b in zip(records['one'], records['four']):
    for key in ('loss', 'valid_NDCG@10', 'valid_HR@10'):
      if key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-4, err_msg=f'step {a["step"]} {key}')


if __name__ == '__main__':
  assert jax.device_count() == 4, jax.devices()
  out = pathlib.Path(sys.argv[1])
  data = synthetic.make_dataset(num_items=120, num_users=150, num_codes=8, seq_len=8)
  result = sft.train(sharded_config(), data, out)
  flat = {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(result.params)[0]}
  np.savez(out / 'params.npz', **flat)
