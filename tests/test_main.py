"""The CLI: config validation, one-line user errors, --help, and the baseline mode's outputs (design §7, §8)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from vstar_jax import cli
from vstar_jax import default_config
from vstar_jax import pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(args, env=None, check=True):
  proc = subprocess.run([sys.executable, '-m', 'vstar_jax.main', *args], cwd=REPO,
                        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)
  if check and proc.returncode:
    raise AssertionError(proc.stderr[-3000:])
  return proc


@pytest.mark.parametrize('key,value,match', [
    ('eval.num_beams', 0, r'--config.eval.num_beams'),
    ('ved.multiplier', 0.5, r'--config.ved.multiplier: .*base budget'),
    ('sft.valid_beams', 5, r'--config.sft.valid_beams'),
    ('mode', 'train', r'--config.mode'),
])
def test_validate_rejects_impossible_values_naming_the_flag(key, value, match):
  c = default_config.base_config()
  *sections, name = key.split('.')
  section = c
  for part in sections:
    section = section[part]
  section[name] = value
  with pytest.raises(ValueError, match=match):
    pipeline.validate(c)


def test_bad_flag_fails_before_writing(tmp_path):
  proc = _run(['--config=configs/synthetic.py', f'--workdir={tmp_path / "w"}',
               '--config.data.on_bad_row=ignore'], check=False)
  assert proc.returncode != 0 and 'data.on_bad_row' in proc.stderr
  assert not (tmp_path / 'w' / 'eval').exists()


@pytest.mark.parametrize('args,message', [
    (['--config.sft.epocs=3'],
     'error: --config.sft.epocs: no such setting (did you mean --config.sft.epochs?); '
     '--print_config lists every setting'),
    (['--config.mode=train'], "error: --config.mode: 'train' is not one of"),
    (['--workdir={file}'], 'error: --workdir={file} is a file, not a directory'),
    (['--config=configs/nope.py'], "error: --config: [Errno 2] No such file or directory: "
     "'configs/nope.py'"),
    (['--config.sfft.epochs=3'],
     'error: --config.sfft.epochs: no such setting (did you mean --config.sft.epochs?)'),
    (['--config.sft.valid_split=test'], "error: --config.sft.valid_split: 'test' is not train, "
     'valid or holdout'),
    (['--config.rl.epochs=2'], 'error: --config.rl.steps: 40 with rl.epochs=2: set exactly one'),
], ids=['misspelt_override', 'bad_mode', 'workdir_is_a_file', 'missing_config_file',
        'misspelt_section', 'valid_on_test', 'steps_and_epochs'])
def test_user_errors_are_one_line_without_traceback(tmp_path, args, message):
  (tmp_path / 'file').write_text('')
  args = [a.format(file=tmp_path / 'file') for a in args]
  message = message.format(file=tmp_path / 'file')
  proc = _run(['--config=configs/synthetic.py', f'--workdir={tmp_path / "w"}', *args], check=False)
  assert proc.returncode == 2
  assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(message)
  assert not (tmp_path / 'w').exists()


def test_help_lists_modes_and_config_files_and_print_config_every_knob():
  proc = _run(['--help'])
  assert all(f'  {mode} ' in proc.stdout for mode in default_config.MODES)
  assert 'configs/amazon.py' in proc.stdout and '--print_config' in proc.stdout
  knobs = _run(['--config=configs/synthetic.py', '--print_config', '--config.sft.epochs=3']).stdout
  assert '--config.sft.epochs=3' in knobs.splitlines() and '--config.mode=all' in knobs.splitlines()
  assert len(knobs.splitlines()) > 100


def test_help_describes_every_mode():
  assert set(cli.MODES) == set(default_config.MODES)


def test_baseline_mode_on_synthetic(tmp_path):
  _run(['--config=configs/synthetic.py', f'--workdir={tmp_path}', '--config.mode=baseline'])
  assert not (tmp_path / 'config.json').exists()  # trains nothing: no training record
  run, = [json.loads(p.read_text()) for p in (tmp_path / 'runs').glob('*-baseline.json')]
  assert (run['mode'], run['status'], run['exit_code']) == ('baseline', 'ok', 0)
  assert run['config']['mode'] == 'baseline' and (tmp_path / run['log']).is_file()
  for name in ('popularity', 'transition'):
    m = json.loads((tmp_path / 'eval' / f'{name}_test' / 'metrics.json').read_text())
    assert {f'HR@{k}' for k in (1, 3, 5, 10, 20, 50)} <= set(m)
    assert {'invalid', 'n', 'hit_L1', 'hit_L12', 'hit_exact'} <= set(m)
    preds = json.loads((tmp_path / 'eval' / f'{name}_test' / 'predictions.json').read_text())
    assert len(preds) == m['n'] == 600 and len(preds[0]['predict']) == 50
    assert m['train_splits'] == ['train'] and m['train_rows'] == 600 * 11  # 11 train rows a user


def test_baselines_fit_every_train_row_and_work_on_a_tiny_catalogue(tmp_path):
  """With the RL holdout on, baselines still count every train row (train + holdout); a
  catalogue of fewer SIDs than eval.num_beams is no reason to refuse: baselines decode nothing."""
  _run(['--config=configs/synthetic.py', f'--workdir={tmp_path}', '--config.mode=baseline',
        '--config.synthetic.num_items=47', '--config.synthetic.num_users=60',
        '--config.data.holdout=1.0', '--config.eval.max_rows=30'])
  m = json.loads((tmp_path / 'eval' / 'transition_test' / 'metrics.json').read_text())
  assert m['train_splits'] == ['train', 'holdout'] and m['n'] == 30
  assert m['train_rows'] == 60 * 11  # all of them: the holdout moved 60 rows out of 'train'
  preds = json.loads((tmp_path / 'eval' / 'transition_test' / 'predictions.json').read_text())
  assert sum(p != '' for p in preds[0]['predict']) == 47  # every distinct SID, then empty slots
  refused = _run(['--config=configs/synthetic.py', f'--workdir={tmp_path / "s"}',
                  '--config.mode=sft', '--config.synthetic.num_items=47'], check=False)
  assert refused.returncode == 2 and 'exceeds the 47 distinct SIDs' in refused.stderr


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
  # The RL recipe valid chose per dataset (README, RL ablation): both add the supervised anchor
  # at lr 1e-4 for 4 epochs; Industrial with the `rule` reward, selected on the whole valid split.
  office, industrial = module.get_config('office').rl, module.get_config('industrial').rl
  assert (office.w_sft, office.w_pg, office.lr, office.epochs) == (1.0, 1.0, 1e-4, 4)
  assert (office.reward, office.valid_max_rows) == ('ranking+prefix', 1000)
  assert (industrial.w_sft, industrial.w_pg, industrial.lr, industrial.epochs) == (1.0, 1.0, 1e-4, 4)
  assert (industrial.reward, industrial.valid_max_rows) == ('rule', 0)
