"""The CLI: config validation and the baseline mode's output contract (design §7, §8)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from vstar_jax import default_config
from vstar_jax import pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(args, env=None, check=True):
  proc = subprocess.run([sys.executable, '-m', 'vstar_jax.main', *args], cwd=REPO,
                        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)
  if check and proc.returncode:
    raise AssertionError(proc.stderr[-3000:])
  return proc


def test_validate_rejects_impossible_values_naming_the_flag():
  c = default_config.base_config()
  c.eval.num_beams = 0
  with pytest.raises(ValueError, match=r'--config.eval.num_beams'):
    pipeline.validate(c)
  c = default_config.base_config()
  c.rl.ved.multiplier = 0.5
  with pytest.raises(ValueError, match=r'--config.rl.ved.multiplier: .*base budget'):
    pipeline.validate(c)
  c = default_config.base_config()
  c.sft.valid_beams = 5
  with pytest.raises(ValueError, match=r'--config.sft.valid_beams'):
    pipeline.validate(c)
  c = default_config.base_config()
  c.mode = 'train'
  with pytest.raises(ValueError, match=r'--config.mode'):
    pipeline.validate(c)


def test_bad_flag_fails_before_writing(tmp_path):
  proc = _run(['--config=configs/synthetic.py', f'--workdir={tmp_path / "w"}',
               '--config.data.on_bad_row=ignore'], check=False)
  assert proc.returncode != 0 and 'data.on_bad_row' in proc.stderr
  assert not (tmp_path / 'w' / 'eval').exists()


def test_baseline_mode_on_synthetic(tmp_path):
  _run(['--config=configs/synthetic.py', f'--workdir={tmp_path}', '--config.mode=baseline'])
  config = json.loads((tmp_path / 'config.json').read_text())
  assert config['mode'] == 'baseline'
  for name in ('popularity', 'transition'):
    m = json.loads((tmp_path / 'eval' / f'{name}_test' / 'metrics.json').read_text())
    assert {f'HR@{k}' for k in (1, 3, 5, 10, 20, 50)} <= set(m)
    assert {'invalid', 'n', 'hit_L1', 'hit_L12', 'hit_exact'} <= set(m)
    preds = json.loads((tmp_path / 'eval' / f'{name}_test' / 'predictions.json').read_text())
    assert len(preds) == m['n'] == 600 and len(preds[0]['predict']) == 50


@pytest.mark.realdata
def test_baseline_mode_on_real_office(data_dir, tmp_path):
  _run(['--config=configs/amazon.py:office', f'--workdir={tmp_path}', '--config.mode=baseline'],
       env={'VSTAR_DATA_DIR': str(data_dir)})
  m = json.loads((tmp_path / 'eval' / 'transition_test' / 'metrics.json').read_text())
  assert m['n'] == 4866 and m['invalid'] == 0
  assert m['HR@10'] > json.loads((tmp_path / 'eval' / 'popularity_test' / 'metrics.json').read_text())['HR@10']


def test_amazon_configs_validate():
  import importlib.util
  spec = importlib.util.spec_from_file_location('amazon_config', REPO / 'configs' / 'amazon.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for name in ('industrial', 'office'):
    c = module.get_config(name)
    pipeline.validate(c)
    assert c.dataset == name
  with pytest.raises(ValueError, match='industrial or office'):
    module.get_config('books')
