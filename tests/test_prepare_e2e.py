"""prepare -> sid -> sft -> eval (slow: baseline, rl, recommend) through the CLIs on a generated raw log."""

import json
import os
import pathlib
import random
import subprocess
import sys

import pytest

from vstar_jax.data import prepared

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ['--config.model.num_layers=1', '--config.model.d_model=32', '--config.model.num_heads=2',
        '--config.model.d_ff=64', '--config.sft.batch_size=64', '--config.sft.warmup_steps=5',
        '--config.sft.lr=0.003', '--config.sft.valid_beams=10', '--config.sft.valid_max_rows=100',
        '--config.eval.batch_size=50', '--config.eval.num_beams=10', '--config.sid.codebook_size=8',
        '--config.sid.kmeans_iters=5', '--config.sid.text_dim=16']


def write_raw_2018(root: pathlib.Path, num_users=150, num_items=48, seed=0):
  """A raw Amazon-2018-format log: users mostly stay in one of 4 item clusters, in 2017."""
  rng = random.Random(seed)
  words = [['drill', 'saw', 'bit', 'blade'], ['pen', 'ink', 'paper', 'clip'],
           ['glue', 'tape', 'resin', 'epoxy'], ['lamp', 'bulb', 'led', 'cord']]
  with open(root / 'meta.json', 'w') as f:
    for i in range(num_items):
      c = words[i % 4]
      f.write(json.dumps({'asin': f'B{i:04d}', 'title': f'{c[i % 3]} {c[3]} model {i}',
                          'description': [f'A {c[0]} and {c[1]} kit.'], 'brand': f'by\nBrand{i % 4}',
                          'category': ['Tools', c[0]]}) + '\n')
  t0 = 1483228800  # 2017-01-01
  with open(root / 'reviews.json', 'w') as f:
    for u in range(num_users):
      cluster = u % 4
      t = t0 + rng.randrange(0, 200) * 86400
      for _ in range(rng.randint(6, 10)):
        item = rng.randrange(12) * 4 + (cluster if rng.random() < 0.8 else rng.randrange(4))
        t += rng.randrange(1, 5) * 86400
        f.write(json.dumps({'reviewerID': f'U{u}', 'asin': f'B{item:04d}', 'overall': 5.0,
                            'unixReviewTime': t}) + '\n')


def _run(module, *args):
  proc = subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=900, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  if proc.returncode:
    raise AssertionError(proc.stderr[-4000:])
  return proc


def _prepare(tmp_path):
  write_raw_2018(tmp_path)
  data = tmp_path / 'data'
  out = _run('vstar_jax.prepare', 'amazon2018', f'--reviews={tmp_path / "reviews.json"}',
             f'--meta={tmp_path / "meta.json"}', f'--out={data}', '--name=Tools', '--encoder=tfidf')
  assert 'train:' in out.stdout
  return data, [f'--config=configs/prepared.py:{data / "Tools"}', *TINY]


def test_prepare_sid_sft_eval(tmp_path):
  data, config = _prepare(tmp_path)
  stats = json.loads((data / 'Tools.stats.json').read_text())
  assert stats['items'] == 48 and stats['samples'] > 500
  work = tmp_path / 'w'
  with pytest.raises(AssertionError, match='no SIDs yet; run --config.mode=sid first'):
    _run('vstar_jax.main', *config, f'--workdir={work}', '--config.mode=sft')
  _run('vstar_jax.main', *config, f'--workdir={work}', '--config.mode=sid')
  ds = prepared.load(data, 'Tools', num_codes=8)  # SIDs filled in and valid
  assert ds.num_levels == 3 and len({tuple(c) for c in ds.item_codes.tolist()}) == 48
  assert (work / 'sid' / 'index.json').read_text() == (data / 'index' / 'Tools.index.json').read_text()
  _run('vstar_jax.main', *config, f'--workdir={work}', '--config.mode=sft', '--config.sft.epochs=2')
  sft = json.loads((work / 'eval' / 'sft_test' / 'metrics.json').read_text())
  assert sft['n'] == len(ds.splits['test']) and sft['invalid'] == 0
  _run('vstar_jax.main', *config, f'--workdir={work}', '--config.mode=eval')
  assert json.loads((work / 'eval' / 'sft_test' / 'metrics.json').read_text())['HR@10'] == sft['HR@10']


@pytest.mark.slow
def test_baseline_rl_recommend_on_a_prepared_dataset(tmp_path):
  data, config = _prepare(tmp_path)
  work = tmp_path / 'w'
  _run('vstar_jax.main', *config, f'--workdir={work}', '--config.mode=sid')
  _run('vstar_jax.main', *config, f'--workdir={work}', '--config.mode=baseline')
  pop = json.loads((work / 'eval' / 'popularity_test' / 'metrics.json').read_text())
  _run('vstar_jax.main', *config, f'--workdir={work}', '--config.mode=rl', '--config.sft.epochs=1',
       '--config.rl.steps=2', '--config.rl.epochs=0', '--config.rl.batch_users=16',
       '--config.rl.value_pretrain_steps=2',
       '--config.rl.valid_every=2', '--config.rl.valid_max_rows=50', '--config.rl.valid_beams=10',
       '--config.rl.group_size=8')
  rl = json.loads((work / 'eval' / 'rl_test' / 'metrics.json').read_text())
  assert rl['invalid'] == 0 and rl['n'] == pop['n']
  _run('vstar_jax.main', *config, f'--workdir={work}', '--config.mode=recommend',
       '--config.recommend.history=0,1,2', '--config.recommend.top_n=3')
  ds = prepared.load(data, 'Tools', num_codes=8)
  recs = json.loads((work / 'recommend.json').read_text())[0]['recommendations']
  assert len(recs) == 3 and all(r['title'] == ds.item_titles[r['item_id']] for r in recs)
