"""CLI stages end to end: synthetic (fast) and a small real-data run that must beat popularity."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ['--config.model.num_layers=1', '--config.model.d_model=32', '--config.model.num_heads=2',
        '--config.model.d_ff=64', '--config.sft.batch_size=64', '--config.sft.warmup_steps=5',
        '--config.sft.lr=0.003', '--config.sft.valid_beams=10', '--config.sft.valid_max_rows=100',
        '--config.eval.batch_size=50']


def _main(workdir, *args, env=None):
  proc = subprocess.run([sys.executable, '-m', 'vstar_jax.main', f'--workdir={workdir}', *args],
                        cwd=REPO, capture_output=True, text=True, timeout=1200,
                        env={**os.environ, **(env or {})})
  if proc.returncode:
    raise AssertionError(proc.stderr[-4000:])
  return proc


def _metrics(workdir, stage):
  return json.loads((pathlib.Path(workdir) / 'eval' / f'{stage}_test' / 'metrics.json').read_text())


def test_sft_eval_recommend_on_synthetic(tmp_path):
  args = ['--config=configs/synthetic.py', '--config.synthetic.num_items=120',
          '--config.synthetic.num_users=150', '--config.synthetic.num_codes=8', *TINY,
          '--config.sft.ema_decay=0.99']  # eval must restore the kept EMA weights
  _main(tmp_path, *args, '--config.mode=sft', '--config.sft.epochs=4')
  sft = _metrics(tmp_path, 'sft')
  assert sft['n'] == 150 and sft['invalid'] == 0 and len(
      json.loads((tmp_path / 'eval' / 'sft_test' / 'predictions.json').read_text())[0]['predict']) == 50
  assert (tmp_path / 'plots' / 'sft_curves.png').stat().st_size > 1000
  # eval re-scores the kept checkpoint: same numbers.
  again = _main(tmp_path, *args, '--config.mode=eval')
  del again
  assert _metrics(tmp_path, 'sft')['HR@10'] == sft['HR@10']
  # VED as the evaluation decoder: its own eval dir, valid SIDs, forwards within its budget.
  _main(tmp_path, *args, '--config.mode=eval', '--config.eval.decoder=ved',
        '--config.eval.ved_multiplier=2', '--config.eval.num_beams=20')
  ved = _metrics(tmp_path, 'sft_ved')
  assert ved['invalid'] == 0 and ved['decoder'] == 'ved' and ved['n'] == 150
  assert ved['forwards_per_user'] <= 2 * (1 + 2 * 8)
  out = _main(tmp_path, *args, '--config.mode=recommend', '--config.recommend.history=3,5,7',
              '--config.recommend.top_n=5')
  recs = json.loads((tmp_path / 'recommend.json').read_text())
  assert recs[0]['history'] == [3, 5, 7] and len(recs[0]['recommendations']) == 5
  assert all(r['title'].startswith('item ') for r in recs[0]['recommendations'])
  assert 'history, oldest first' in out.stdout and 'item 3' in out.stdout  # the readable table


# ~105 s at idle; CI's tests/test_multiprocess.py runs --config.mode=rl (SFT first, then RL) through main.
@pytest.mark.slow
def test_rl_mode_trains_sft_first_then_writes_rl_eval(tmp_path):
  args = ['--config=configs/synthetic.py', '--config.synthetic.num_items=120',
          '--config.synthetic.num_users=150', '--config.synthetic.num_codes=8', *TINY,
          '--config.sft.epochs=2', '--config.rl.steps=4', '--config.rl.batch_users=16',
          '--config.rl.value_pretrain_steps=2', '--config.rl.valid_every=2',
          '--config.rl.valid_max_rows=50', '--config.rl.valid_beams=10', '--config.rl.group_size=8',
          '--config.ved.multiplier=3', '--config.rl.lr=0.0003']
  _main(tmp_path, *args, '--config.mode=rl')
  rl = _metrics(tmp_path, 'rl')
  assert rl['n'] == 150 and rl['invalid'] == 0 and rl['rl_steps'] == 4 and rl['rollout'] == 'ved'
  # The last step is scored too whenever the kept (best-by-valid) policy is an earlier one.
  final = tmp_path / 'eval' / 'rl_final_test' / 'metrics.json'
  assert final.exists() == (rl['best_step'] != 4)
  assert (tmp_path / 'eval' / 'sft_test' / 'metrics.json').exists()
  records = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  steps = [r['step'] for r in records if r['stage'] == 'rl' and 'loss' in r]
  assert steps == [1, 2, 3, 4]
  # eval now re-scores the RL checkpoint.
  _main(tmp_path, *args, '--config.mode=eval')
  assert _metrics(tmp_path, 'rl')['HR@10'] == rl['HR@10']
  # A second RL run (another workdir, as a sweep does) starts from this run's SFT model: no SFT
  # of its own, and the same seed gives the same RL result.
  other = tmp_path / 'rl_only'
  _main(other, *args, '--config.mode=rl', f'--config.rl.init_workdir={tmp_path}')
  assert not (other / 'checkpoints' / 'sft').exists()
  assert _metrics(other, 'rl')['HR@10'] == rl['HR@10']


@pytest.mark.slow  # ~2 min on the CI machine; the feature's units are in test_decoder / test_sft
def test_item_text_features_through_sft_rl_eval_and_recommend(tmp_path):
  args = ['--config=configs/synthetic.py', '--config.synthetic.num_items=120',
          '--config.synthetic.num_users=150', '--config.synthetic.num_codes=8', *TINY,
          '--config.model.item_text_features=True', '--config.sft.epochs=1', '--config.rl.steps=2',
          '--config.rl.batch_users=16', '--config.rl.value_pretrain_steps=1',
          '--config.rl.valid_every=2', '--config.rl.valid_max_rows=50', '--config.rl.valid_beams=10',
          '--config.rl.group_size=8', '--config.ved.multiplier=3']
  _main(tmp_path, *args, '--config.mode=rl')
  rl = _metrics(tmp_path, 'rl')
  assert rl['invalid'] == 0 and rl['rl_steps'] == 2
  _main(tmp_path, *args, '--config.mode=eval')   # restores params holding the feature table
  assert _metrics(tmp_path, 'rl')['HR@10'] == rl['HR@10']
  _main(tmp_path, *args, '--config.mode=recommend', '--config.recommend.history=3,5')
  assert len(json.loads((tmp_path / 'recommend.json').read_text())[0]['recommendations']) == 10
  # Checkpoints written with the feature input do not load into a model without it.
  with pytest.raises(AssertionError, match='do not match this config|item_text'):
    _main(tmp_path, *args[:-10], '--config.sft.epochs=1', '--config.model.item_text_features=False',
          '--config.mode=eval')


@pytest.mark.slow  # ~40 s at idle
def test_continued_sft_on_the_rl_holdout_starts_from_another_run(tmp_path):
  """The RL protocol's control: SFT without the holdout rows, then SFT continued on them."""
  args = ['--config=configs/synthetic.py', '--config.synthetic.num_items=120',
          '--config.synthetic.num_users=150', '--config.synthetic.num_codes=8', *TINY,
          '--config.data.holdout=0.5']
  base, more = tmp_path / 'base', tmp_path / 'more'
  _main(base, *args, '--config.mode=sft', '--config.sft.epochs=2')
  _main(more, *args, '--config.mode=sft', '--config.sft.epochs=1', f'--config.sft.init_workdir={base}',
        "--config.sft.train_splits=('holdout',)")
  first, second = _metrics(base, 'sft'), _metrics(more, 'sft')
  assert second['init_workdir'] == str(base) and second['train_splits'] == ['holdout']
  assert second['holdout'] == 0.5 and second['invalid'] == 0
  records = [json.loads(l) for l in (more / 'metrics.jsonl').read_text().splitlines()]
  steps = [r['step'] for r in records if 'loss' in r]
  assert max(steps) == 1      # 75 holdout rows (half of the 150 users): one batch of 64 per epoch
  assert first['train_splits'] == ['train'] and not first['init_workdir']


def test_rl_init_workdir_without_sft_checkpoint_is_a_clear_error(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'vstar_jax.main', f'--workdir={tmp_path / "w"}',
                         '--config=configs/synthetic.py', '--config.mode=rl',
                         f'--config.rl.init_workdir={tmp_path / "empty"}'],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0
  assert 'rl.init_workdir' in proc.stderr and 'no SFT checkpoint' in proc.stderr
  assert not (tmp_path / 'w' / 'checkpoints').exists()


def test_learned_sids_on_synthetic(tmp_path):
  args = ['--config=configs/synthetic.py', '--config.synthetic.num_items=120',
          '--config.synthetic.num_users=150', '--config.synthetic.num_codes=8',
          '--config.sid.source=learned', '--config.sid.codebook_size=8', '--config.sid.steps=50',
          '--config.sid.kmeans_iters=5', *TINY]
  _main(tmp_path, *args, '--config.mode=sid')
  stats = json.loads((tmp_path / 'sid' / 'stats.json').read_text())
  assert stats['collisions_after'] == 0 and 'shipped' in stats
  index = json.loads((tmp_path / 'sid' / 'index.json').read_text())
  assert len(index) == 120 and len({tuple(v) for v in index.values()}) == 120
  _main(tmp_path, *args, '--config.mode=sft', '--config.sft.epochs=1')
  assert _metrics(tmp_path, 'sft')['invalid'] == 0


@pytest.mark.realdata
def test_small_real_industrial_run_beats_popularity(data_dir, tmp_path):
  """A few hundred SFT steps on real Industrial data, evaluated on 600 test rows (CI's real e2e)."""
  env = {'VSTAR_DATA_DIR': str(data_dir)}
  common = ['--config=configs/amazon.py:industrial', '--config.eval.max_rows=600',
            '--config.eval.batch_size=100']
  _main(tmp_path, *common, '--config.mode=baseline', env=env)
  _main(tmp_path, *common, '--config.mode=sft', '--config.model.num_layers=2',
        '--config.model.d_model=64', '--config.model.d_ff=256', '--config.sft.batch_size=128',
        '--config.sft.epochs=4', '--config.sft.valid_max_rows=200', '--config.sft.warmup_steps=20',
        '--config.sft.lr=0.002', env=env)
  sft, pop = _metrics(tmp_path, 'sft'), _metrics(tmp_path, 'popularity')
  assert sft['n'] == pop['n'] == 600 and sft['invalid'] == 0
  assert sft['NDCG@10'] > pop['NDCG@10'] and sft['HR@10'] > pop['HR@10']


@pytest.mark.realdata
def test_real_item_text_features_align_with_item_ids(data_dir, tmp_path, monkeypatch):
  """The feature input reads the dataset's MiniLM rows by item id and keys them by SID exactly."""
  import numpy as np
  from vstar_jax import pipeline
  from vstar_jax.data import amazon
  from vstar_jax.model import backbone
  from vstar_jax.model import layout
  import importlib.util
  spec = importlib.util.spec_from_file_location('amazon_config', REPO / 'configs' / 'amazon.py')
  amazon_config = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(amazon_config)
  monkeypatch.setenv('VSTAR_DATA_DIR', str(data_dir))
  config = amazon_config.get_config('industrial')
  config.model.item_text_features = True
  dataset = pipeline.load_dataset(config, tmp_path)
  npy = np.load(data_dir / 'index' / f'{amazon.DATASETS["industrial"]}.emb-minilm-td.npy')
  np.testing.assert_array_equal(dataset.item_features, npy)
  cfg = backbone.model_config(config, dataset)
  num_sids = len({tuple(c) for c in dataset.item_codes.tolist()})
  assert len(cfg.item_feature_keys) == num_sids < dataset.num_items   # shipped SIDs collide
  _, table = layout.item_feature_table(dataset.item_codes, dataset.num_codes, npy)
  keys = layout.sid_keys(dataset.item_codes, dataset.num_codes)
  rows = np.searchsorted(cfg.item_feature_keys, keys)
  single = np.bincount(rows)[rows] == 1
  np.testing.assert_array_equal(table[rows[single]], npy[single])   # one item per SID: its own row
