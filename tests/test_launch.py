"""Launch scripts: exact commands of the TPU pod / GPU launchers, and the sweep helpers.

The shell scripts are checked twice: their --dry-run output, and a real run against fakes
(a `gcloud` that plays every pod worker in a local directory, a fake `nvidia-smi` and python)
so that what they execute is what they print and the remote quoting survives a real shell.
"""

import importlib.util
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU = ['gcloud', 'compute', 'tpus', 'tpu-vm']
MAIN_ARGS = ['--config=configs/amazon.py:industrial', '--workdir=workdirs/x', '--config.mode=rl',
             "--config.note=it's a b"]

_spec = importlib.util.spec_from_file_location('launch_sweep', REPO / 'launch' / 'sweep.py')
sweep = sys.modules['launch_sweep'] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


def _bash(script, *args, env=None, check=True):
  proc = subprocess.run(['bash', str(REPO / 'launch' / script), *args], cwd=REPO,
                        capture_output=True, text=True, env={**os.environ, **(env or {})},
                        timeout=120)
  if check and proc.returncode:
    raise AssertionError(proc.stderr)
  return proc


def _executable(path, text):
  path.write_text(text)
  path.chmod(0o755)
  return path


# ---------------------------------------------------------------- tpu_pod.sh

def _setup_command(source, data_dir='data/amazon'):
  """The install step the script must send to every worker (shell text, as the worker reads it)."""
  steps = ['set -o pipefail', *source]
  if data_dir:
    steps += [f'(cd vstar_jax && mkdir -p {data_dir} && tar -xzf ~/vstar_jax-data.tgz -C {data_dir})',
              'rm vstar_jax-data.tgz']
  steps += ['export PATH="$HOME/.local/bin:$PATH"',
            '{ command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh'
            ' | env UV_NO_MODIFY_PATH=1 sh; }',
            'cd vstar_jax',
            '{ [ -x .venv/bin/python ] || uv venv --python 3.11 .venv; }',
            "uv pip install --python .venv/bin/python -e . 'jax[tpu]==0.10.2'"]
  return ' && '.join(steps)


_COPY_SOURCE = ['mkdir -p vstar_jax', 'tar -xzf vstar_jax-src.tgz -C vstar_jax', 'rm vstar_jax-src.tgz']
_RUN_REMOTE = ('cd vstar_jax && VSTAR_DATA_DIR=data/amazon .venv/bin/python -m vstar_jax.main'
               " --config=configs/amazon.py:industrial --workdir=workdirs/x --config.mode=rl"
               " '--config.note=it'\"'\"'s a b' --config.distributed.enabled=True")


def _tpu_expected(tmp, data, flags=('--zone=us-central2-b', '--project=proj')):
  """Every command of a --create --copy-data launch, in order."""
  src, dat = f'{tmp}/vstar_jax-src-pod.tgz', f'{tmp}/vstar_jax-data-pod.tgz'
  ssh = [*TPU, 'ssh', 'pod', *flags, '--worker=all']
  return [
      shlex.join([*TPU, 'create', 'pod', *flags, '--accelerator-type=v4-32',
                  '--version=tpu-ubuntu2204-base', '--spot']),
      f'cd {REPO} && git ls-files -z --cached --others --exclude-standard |'
      """ while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\\0' "$f"; fi; done |"""
      f' tar -czf {src} --null -T -',
      shlex.join([*TPU, 'scp', src, 'pod:vstar_jax-src.tgz', *flags, '--worker=all']),
      shlex.join(['rm', '-f', src]),
      shlex.join(['tar', '-czf', dat, '-C', str(data), '.']),
      shlex.join([*TPU, 'scp', dat, 'pod:vstar_jax-data.tgz', *flags, '--worker=all']),
      shlex.join(['rm', '-f', dat]),
      shlex.join([*ssh, '--command=' + _setup_command(_COPY_SOURCE)]),
      shlex.join([*ssh, '--command=' + _RUN_REMOTE]),
  ]


def test_tpu_dry_run_prints_every_command(tmp_path):
  proc = _bash('tpu_pod.sh', '--dry-run', '--name=pod', '--zone', 'us-central2-b', '--project=proj',
               '--create', '--spot', '--copy-data=/data/amazon', '--', *MAIN_ARGS,
               env={'TMPDIR': str(tmp_path)})
  assert proc.stdout.splitlines() == _tpu_expected(tmp_path, '/data/amazon')
  # The remote shell hands main the arguments unchanged, the one with spaces and a quote included.
  remote = shlex.split(proc.stdout.splitlines()[-1])[-1].removeprefix('--command=')
  assert shlex.split(remote)[7:] == MAIN_ARGS + ['--config.distributed.enabled=True']


def test_tpu_reuse_with_git_and_skip_setup(tmp_path):
  proc = _bash('tpu_pod.sh', '--dry-run', '--name=pod', '--git-url=https://example.com/v star.git',
               '--git-ref=v1', '--data-dir=/mnt/data', '--', '--config=c', '--workdir=w')
  clone = ["{ [ -d vstar_jax/.git ] || git clone 'https://example.com/v star.git' vstar_jax; }",
           'git -C vstar_jax fetch --quiet origin', 'git -C vstar_jax checkout --quiet --detach v1']
  ssh = [*TPU, 'ssh', 'pod', '--worker=all']
  run = ('cd vstar_jax && VSTAR_DATA_DIR=/mnt/data .venv/bin/python -m vstar_jax.main'
         ' --config=c --workdir=w --config.distributed.enabled=True')
  assert proc.stdout.splitlines() == [
      shlex.join([*ssh, '--command=' + _setup_command(clone, data_dir=None)]),
      shlex.join([*ssh, '--command=' + run])]
  proc = _bash('tpu_pod.sh', '--dry-run', '--name=pod', '--skip-setup', '--', '--config=c',
               '--workdir=w')
  assert proc.stdout.splitlines() == [shlex.join([*ssh, '--command=' + run.replace(
      '/mnt/data', 'data/amazon')])]


@pytest.mark.parametrize('args, message', [
    (['--', '--config=c', '--workdir=w'], '--name is required'),
    (['--name=pod'], 'pass the flags'),
    (['--name=pod', '--', '--config=c'], '--workdir'),
    (['--name=pod', '--zon=x', '--', '--config=c', '--workdir=w'], 'unknown option --zon'),
    (['--name=pod', 'stray', '--', '--config=c', '--workdir=w'], "unexpected argument 'stray'"),
    (['--name=pod', '--create', '--skip-setup', '--', '--config=c', '--workdir=w'], '--create'),
    (['--name'], '--name needs a value'),
])
def test_tpu_usage_errors(args, message):
  proc = _bash('tpu_pod.sh', '--dry-run', *args, check=False)
  assert proc.returncode == 2 and message in proc.stderr and not proc.stdout


def test_help_texts():
  for script in ('tpu_pod.sh', 'gpu.sh'):
    proc = _bash(script, '--help')
    assert proc.stdout.startswith(f'Usage: launch/{script}')


_FAKE_GCLOUD = f'''#!{sys.executable}
"""Plays gcloud: logs its argv; scp copies into, ssh runs bash in, the fake worker's home."""
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ['FAKE_LOG'], 'a') as f:
  f.write(json.dumps(args) + '\\n')
worker = os.environ['FAKE_WORKER']
if args[3] == 'scp':
  shutil.copy(args[4], os.path.join(worker, args[5].split(':', 1)[1]))
elif args[3] == 'ssh':
  command = next(a for a in args if a.startswith('--command='))[len('--command='):]
  env = {{**os.environ, 'HOME': worker}}
  sys.exit(subprocess.run(['bash', '-c', command], cwd=worker, env=env).returncode)
'''
_FAKE_UV = '''#!/bin/bash
echo "$*" >> "$HOME/uv.log"
if [ "$1" = venv ]; then mkdir -p "$4/bin" && cp "$HOME/fake_python" "$4/bin/python"; fi
'''
_FAKE_PYTHON = f'''#!{sys.executable}
import json, os, sys
with open(os.path.join(os.environ['HOME'], 'main.json'), 'w') as f:
  json.dump({{'argv': sys.argv[1:], 'cwd': os.getcwd(),
             'data': os.environ.get('VSTAR_DATA_DIR')}}, f)
'''


def _fake_pod(tmp_path):
  """A fake gcloud on PATH whose single worker lives in tmp_path/worker (with uv preinstalled)."""
  bin_dir, worker = tmp_path / 'bin', tmp_path / 'worker'
  (worker / '.local' / 'bin').mkdir(parents=True)
  bin_dir.mkdir()
  _executable(bin_dir / 'gcloud', _FAKE_GCLOUD)
  _executable(worker / '.local' / 'bin' / 'uv', _FAKE_UV)
  _executable(worker / 'fake_python', _FAKE_PYTHON)
  env = {'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'FAKE_WORKER': str(worker),
         'FAKE_LOG': str(tmp_path / 'gcloud.log'), 'TMPDIR': str(tmp_path)}
  return worker, env


def _gcloud_calls(tmp_path):
  return [json.loads(line) for line in (tmp_path / 'gcloud.log').read_text().splitlines()]


def test_tpu_real_run_executes_what_dry_run_prints(tmp_path):
  worker, env = _fake_pod(tmp_path)
  data = tmp_path / 'local data'
  (data / 'index').mkdir(parents=True)
  (data / 'index' / 'x.index.json').write_text('{}')
  args = ['--name=pod', '--zone=us-central2-b', '--project=proj', '--create', '--spot',
          f'--copy-data={data}', '--', *MAIN_ARGS]
  printed = _bash('tpu_pod.sh', '--dry-run', *args, env=env).stdout.splitlines()
  assert printed == _tpu_expected(tmp_path, data)
  _bash('tpu_pod.sh', *args, env=env)
  assert _gcloud_calls(tmp_path) == [shlex.split(line)[1:] for line in printed
                                     if line.startswith('gcloud ')]
  checkout = worker / 'vstar_jax'
  assert (checkout / 'vstar_jax' / 'main.py').read_bytes() == (REPO / 'vstar_jax' / 'main.py').read_bytes()
  assert (checkout / 'launch' / 'tpu_pod.sh').is_file() and not (checkout / '.git').exists()
  assert (checkout / 'data' / 'amazon' / 'index' / 'x.index.json').read_text() == '{}'
  assert not list(worker.glob('*.tgz')) and not list(tmp_path.glob('*.tgz'))
  assert (worker / 'uv.log').read_text().splitlines() == [
      'venv --python 3.11 .venv', 'pip install --python .venv/bin/python -e . jax[tpu]==0.10.2']
  ran = json.loads((worker / 'main.json').read_text())
  assert ran == {'argv': ['-m', 'vstar_jax.main', *MAIN_ARGS, '--config.distributed.enabled=True'],
                 'cwd': str(checkout), 'data': 'data/amazon'}


def test_tpu_git_checkout_on_worker(tmp_path):
  worker, env = _fake_pod(tmp_path)
  head = subprocess.run(['git', '-C', str(REPO), 'rev-parse', 'HEAD'], capture_output=True,
                        text=True, check=True).stdout.strip()
  _bash('tpu_pod.sh', '--name=pod', f'--git-url={REPO}', f'--git-ref={head}', '--',
        '--config=c', '--workdir=w', env=env)
  checkout = worker / 'vstar_jax'
  assert subprocess.run(['git', '-C', str(checkout), 'rev-parse', 'HEAD'], capture_output=True,
                        text=True, check=True).stdout.strip() == head
  assert (checkout / 'vstar_jax' / 'main.py').is_file()
  assert json.loads((worker / 'main.json').read_text())['argv'][-1] == '--config.distributed.enabled=True'


# ---------------------------------------------------------------- gpu.sh

def test_gpu_dry_run_prints_the_command():
  proc = _bash('gpu.sh', '--dry-run', '--gpus=0,1', '--mem-fraction', '.9', '--data-dir=/d a',
               '--', '--config=configs/amazon.py:office', '--workdir=w', "--config.x=a 'b'",
               env={'PYTHON': 'python3'})
  assert proc.stdout == shlex.join([
      'env', 'CUDA_VISIBLE_DEVICES=0,1', 'XLA_PYTHON_CLIENT_MEM_FRACTION=.9', 'VSTAR_DATA_DIR=/d a',
      'python3', '-m', 'vstar_jax.main', '--config=configs/amazon.py:office', '--workdir=w',
      "--config.x=a 'b'"]) + '\n'
  proc = _bash('gpu.sh', '--dry-run', '--python=/v/bin/python', '--', '--config=c')
  assert proc.stdout == 'env /v/bin/python -m vstar_jax.main --config=c\n'


@pytest.mark.parametrize('args, message', [
    (['--mem-fraction=1.5', '--', 'x'], '--mem-fraction'),
    (['--mem-fraction=0', '--', 'x'], '--mem-fraction'),
    (['--gpus=0;1', '--', 'x'], '--gpus'),
    ([], 'pass the flags'),
    (['--gpu=0', '--', 'x'], 'unknown option --gpu'),
])
def test_gpu_usage_errors(args, message):
  proc = _bash('gpu.sh', '--dry-run', *args, check=False)
  assert proc.returncode == 2 and message in proc.stderr and not proc.stdout


def _fake_gpu_host(tmp_path, gpus_listed=True, jax_on_gpu=True):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  _executable(bin_dir / 'nvidia-smi', '#!/bin/bash\n' + (
      'echo "GPU 0: Fake H100"' if gpus_listed else 'echo "No devices were found"; exit 6'))
  python = _executable(tmp_path / 'python', f'''#!{sys.executable}
import json, os, sys
if sys.argv[1] == '-c':
  sys.exit(0 if {jax_on_gpu} else 1)
keys = ('CUDA_VISIBLE_DEVICES', 'XLA_PYTHON_CLIENT_MEM_FRACTION', 'VSTAR_DATA_DIR')
json.dump({{'argv': sys.argv[1:], 'env': {{k: os.environ.get(k) for k in keys}}}},
          open({str(tmp_path / 'main.json')!r}, 'w'))
''')
  return python, {'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'VSTAR_DATA_DIR': ''}


def test_gpu_real_run_checks_then_runs(tmp_path):
  python, env = _fake_gpu_host(tmp_path)
  _bash('gpu.sh', f'--python={python}', '--gpus=1', '--mem-fraction=0.5', '--', '--config=c',
        '--workdir=a b', env=env)
  assert json.loads((tmp_path / 'main.json').read_text()) == {
      'argv': ['-m', 'vstar_jax.main', '--config=c', '--workdir=a b'],
      'env': {'CUDA_VISIBLE_DEVICES': '1', 'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.5',
              'VSTAR_DATA_DIR': ''}}


@pytest.mark.parametrize('gpus_listed, jax_on_gpu, message', [
    (False, True, 'lists no GPUs'), (True, False, 'does not see the GPUs')])
def test_gpu_refuses_without_usable_gpus(tmp_path, gpus_listed, jax_on_gpu, message):
  python, env = _fake_gpu_host(tmp_path, gpus_listed, jax_on_gpu)
  proc = _bash('gpu.sh', f'--python={python}', '--', '--config=c', env=env, check=False)
  assert proc.returncode == 2 and message in proc.stderr
  assert not (tmp_path / 'main.json').exists()


# ---------------------------------------------------------------- sweep.py

def test_parse_grid():
  assert sweep.parse_grid('rl.rollout=ved,beam; rl.w_sib=0, 0.5') == [
      ('rl.rollout', ('ved', 'beam')), ('rl.w_sib', ('0', '0.5'))]
  assert sweep.parse_grid("sft.train_splits=('train',),('train','valid');m=[1,2]") == [
      ('sft.train_splits', ("('train',)", "('train','valid')")), ('m', ('[1,2]',))]
  assert sweep.parse_grid('') == [] and sweep.parse_seeds(['2', '0']) == [2, 0]


@pytest.mark.parametrize('grid, named', [
    ('rl.rollout=ved;rl.w_sib', "'rl.w_sib'"),
    ('a=1;;b=2', 'piece 2'),
    ('a=1;', 'piece 2'),
    ('a=1,,2', "'a=1,,2'"),
    ('a=', "'a='"),
    ('a=1;a=2', "'a=2'"),
    ('a=1,1', "'a=1,1'"),
    ('rl w=1', "'rl w=1'"),
    ('rl.=1', "'rl.=1'"),
    ('seed=1,2', "'seed=1,2'"),
    ('a=(1,2', "'a=(1,2'"),
    ('b=1;a=1)', "'b=1;a=1)'"),
])
def test_parse_grid_errors_name_the_bad_piece(grid, named):
  with pytest.raises(ValueError) as error:
    sweep.parse_grid(grid)
  assert named in str(error.value)


@pytest.mark.parametrize('seeds', [['0', 'x'], ['1', '1'], []])
def test_parse_seeds_errors(seeds):
  with pytest.raises(ValueError, match='--seeds'):
    sweep.parse_seeds(seeds)


def test_expand_cross_product_and_workdirs():
  grid = sweep.parse_grid('rl.rollout=ved,beam;rl.w_sib=0,1')
  runs = sweep.expand([0, 1, 2], grid)
  assert len(runs) == 3 * 2 * 2 == len({r.name for r in runs})
  assert [r.name for r in runs[:4]] == [
      'seed0_rl.rollout=ved_rl.w_sib=0', 'seed0_rl.rollout=ved_rl.w_sib=1',
      'seed0_rl.rollout=beam_rl.w_sib=0', 'seed0_rl.rollout=beam_rl.w_sib=1']
  assert runs[-1].name == 'seed2_rl.rollout=beam_rl.w_sib=1'
  assert runs[-1].label == 'rl.rollout=beam rl.w_sib=1'
  assert [r.name for r in sweep.expand([5], [])] == ['seed5'] and sweep.Run(5, ()).label == '(base)'
  assert sweep.expand([0], [('x', ("('a', 'b')",))])[0].name == 'seed0_x=--a-,--b--'
  with pytest.raises(ValueError, match='collide'):
    sweep.expand([0], [('x', ('a b', 'a/b'))])


def test_command_and_extra_flags():
  run = sweep.Run(1, (('rl.rollout', 'ved'), ('rl.w_sib', '0')))
  assert sweep.command(['launch/gpu.sh', '--'], 'configs/amazon.py:office',
                       pathlib.Path('w/s') / run.name, run, ['--config.mode=rl']) == [
      'launch/gpu.sh', '--', '--config=configs/amazon.py:office',
      '--workdir=w/s/seed1_rl.rollout=ved_rl.w_sib=0', '--config.seed=1', '--config.rl.rollout=ved',
      '--config.rl.w_sib=0', '--config.mode=rl']
  grid = [('rl.rollout', ('ved',))]
  sweep.check_extra(['--config.mode=rl', '--config.rl.w_sib=1'], grid)
  for bad in ('--config.rl.rollout=beam', '--config.seed=3', '--workdir=x', '--config=c'):
    with pytest.raises(ValueError, match='set by the sweep'):
      sweep.check_extra([bad], grid)


def _write_metrics(sweep_dir, run, stage, hr3):
  path = sweep_dir / run.name / 'eval' / f'{stage}_test' / 'metrics.json'
  path.parent.mkdir(parents=True)
  metrics = {m: hr3 * (i + 1) for i, m in enumerate(sweep.METRICS)}
  path.write_text(json.dumps({**metrics, 'HR@1': 0.0, 'n': 10, 'invalid': 0}))


def test_summarize_mean_and_std_over_seeds(tmp_path):
  runs = sweep.expand([0, 1, 2], sweep.parse_grid('rl.rollout=ved,beam'))
  hr3 = {('ved', 0): 0.1, ('ved', 1): 0.2, ('ved', 2): 0.3, ('beam', 0): 0.05, ('beam', 2): 0.15}
  for run in runs:
    if (run.knobs[0][1], run.seed) in hr3:
      _write_metrics(tmp_path, run, 'rl', hr3[run.knobs[0][1], run.seed])
  summary = sweep.summarize(tmp_path, runs, ['sft', 'rl'])
  assert len(summary['missing']) == 6 + 1
  assert [(r['stage'], r['config'], r['seeds']) for r in summary['rows']] == [
      ('rl', 'rl.rollout=ved', [0, 1, 2]), ('rl', 'rl.rollout=beam', [0, 2])]
  ved, beam = summary['rows']
  # NDCG@10 is the 6th metric: 6 x HR@3 in _write_metrics.
  for row, mean, std in ((ved, 0.2, 0.1), (beam, 0.1, 0.0707106781)):
    assert row['mean']['HR@3'] == pytest.approx(mean) and row['std']['HR@3'] == pytest.approx(std)
    assert row['mean']['NDCG@10'] == pytest.approx(6 * mean)
    assert row['std']['NDCG@10'] == pytest.approx(6 * std)
  table = sweep.to_markdown(summary).splitlines()
  assert table[0] == '| stage | config | seeds | HR@3 | NDCG@3 | HR@5 | NDCG@5 | HR@10 | NDCG@10 |'
  assert table[2] == ('| rl | rl.rollout=ved | 3 | 0.2000 ± 0.1000 | 0.4000 ± 0.2000 | '
                      '0.6000 ± 0.3000 | 0.8000 ± 0.4000 | 1.0000 ± 0.5000 | 1.2000 ± 0.6000 |')
  assert table[3].startswith('| rl | rl.rollout=beam | 2 | 0.1000 ± 0.0707 |')


def test_summarize_adds_diversity_and_wall_time_columns_when_runs_have_them(tmp_path):
  runs = sweep.expand([0, 1], sweep.parse_grid('rl.rollout=ved,beam'))
  for run in runs:
    path = tmp_path / run.name / 'eval' / 'rl_test' / 'metrics.json'
    path.parent.mkdir(parents=True)
    extra = {'distinct_L1@10': 3.0 + run.seed, 'rl_wall_s': 600.0} if run.knobs[0][1] == 'ved' else {}
    path.write_text(json.dumps({**{m: 0.1 for m in sweep.METRICS}, **extra}))
  summary = sweep.summarize(tmp_path, runs, ['rl'])
  assert summary['metrics'] == [*sweep.METRICS, 'distinct_L1@10', 'rl_wall_s']
  ved, beam = summary['rows']
  assert ved['mean']['distinct_L1@10'] == pytest.approx(3.5) and 'rl_wall_s' not in beam['mean']
  table = sweep.to_markdown(summary).splitlines()
  assert table[0].endswith('| distinct_L1@10 | rl_wall_s |')
  assert table[2].endswith('| 3.50 ± 0.71 | 600.0 ± 0.0 |') and table[3].endswith('| – | – |')


def test_summarize_reads_the_valid_curve_of_the_trained_stage(tmp_path):
  run = sweep.Run(0, ())
  _write_metrics(tmp_path, run, 'rl_final', 0.1)
  log = [{'stage': 'sft', 'step': 9, 'valid_NDCG@10': 0.9}, {'stage': 'rl', 'step': 0, 'loss': 1.0}]
  log += [{'stage': 'rl', 'step': s, 'valid_NDCG@10': v} for s, v in ((0, 0.08), (5, 0.09), (9, 0.07))]
  (tmp_path / run.name / 'metrics.jsonl').write_text('\n'.join(map(json.dumps, log)) + '\n')
  row, = sweep.summarize(tmp_path, [run], ['rl_final'])['rows']
  assert (row['mean']['valid_NDCG@10_best'], row['mean']['valid_NDCG@10_last']) == (0.09, 0.07)
  assert sweep.to_markdown(sweep.summarize(tmp_path, [run], ['rl_final'])).splitlines()[2].endswith(
      '| 0.0900 ± 0.0000 | 0.0700 ± 0.0000 |')


def test_rl_final_falls_back_to_the_kept_policy_when_the_last_step_was_kept(tmp_path):
  # The pipeline writes eval/rl_final_test only when the kept RL step is not the last one.
  runs = sweep.expand([0, 1], ())
  _write_metrics(tmp_path, runs[0], 'rl_final', 0.1)
  _write_metrics(tmp_path, runs[0], 'rl', 0.5)    # kept step 0: rl_test differs from the final
  _write_metrics(tmp_path, runs[1], 'rl', 0.3)    # kept the last step: rl_test is the final
  summary = sweep.summarize(tmp_path, runs, ['rl_final'])
  row, = summary['rows']
  assert row['seeds'] == [0, 1] and not summary['missing']
  np.testing.assert_allclose(row['mean']['HR@3'], 0.2)
  assert sweep.eval_dir(tmp_path, runs[0], 'rl_final').name == 'rl_final_test'
  assert sweep.eval_dir(tmp_path, runs[1], 'rl_final').name == 'rl_test'
  assert sweep.eval_dir(tmp_path, runs[1], 'sft').name == 'sft_test'   # no fallback elsewhere


def test_summarize_rejects_metrics_without_the_contract_keys(tmp_path):
  run = sweep.Run(0, ())
  path = tmp_path / run.name / 'eval' / 'rl_test' / 'metrics.json'
  path.parent.mkdir(parents=True)
  path.write_text(json.dumps({'HR@3': 0.1}))
  with pytest.raises(ValueError, match='NDCG@3'):
    sweep.summarize(tmp_path, [run], ['rl'])


def _sweep_cli(*args, check=True):
  proc = subprocess.run([sys.executable, str(REPO / 'launch' / 'sweep.py'), *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  if check and proc.returncode:
    raise AssertionError(proc.stderr)
  return proc


def test_sweep_cli_prints_runs_and_summarizes(tmp_path):
  fake_main = _executable(tmp_path / 'fake_main.py', '''
import json, pathlib, sys
args = dict(a.split('=', 1) for a in sys.argv[1:])
out = pathlib.Path(args['--workdir']) / 'eval' / 'rl_test'
out.mkdir(parents=True)
hr = 0.1 * (int(args['--config.seed']) + 1) + (0.5 if args['--config.rl.rollout'] == 'beam' else 0)
json.dump({m: hr for m in ('HR@3', 'NDCG@3', 'HR@5', 'NDCG@5', 'HR@10', 'NDCG@10')},
          open(out / 'metrics.json', 'w'))
''')
  common = ['--name=s', f'--root={tmp_path}', '--seeds=0,1', '--grid=rl.rollout=ved,beam',
            f'--launcher={shlex.quote(sys.executable)} {shlex.quote(str(fake_main))}', '--stages=rl']
  printed = _sweep_cli(*common, '--', '--config.mode=rl').stdout.splitlines()
  assert len(printed) == 4
  assert shlex.split(printed[1]) == [
      sys.executable, str(fake_main), '--config=configs/amazon.py:industrial',
      f'--workdir={tmp_path}/s/seed0_rl.rollout=beam', '--config.seed=0', '--config.rl.rollout=beam',
      '--config.mode=rl']
  assert not (tmp_path / 's').exists()
  proc = _sweep_cli(*common, '--run', '--summarize', '--', '--config.mode=rl')
  lines = proc.stdout.splitlines()
  assert lines[2] == '| rl | rl.rollout=ved | 2 | ' + ' | '.join(['0.1500 ± 0.0707'] * 6) + ' |'
  assert lines[3] == '| rl | rl.rollout=beam | 2 | ' + ' | '.join(['0.6500 ± 0.0707'] * 6) + ' |'
  assert (tmp_path / 's' / 'summary.md').read_text() == proc.stdout
  rows = json.loads((tmp_path / 's' / 'summary.json').read_text())['rows']
  assert rows[1]['mean']['HR@10'] == pytest.approx(0.65)


def test_sweep_cli_errors(tmp_path):
  proc = _sweep_cli('--name=s', '--grid=rl.rollout', check=False)
  assert proc.returncode and "grid piece 'rl.rollout'" in proc.stderr
  proc = _sweep_cli('--name=s', '--', '--config.seed=1', check=False)
  assert proc.returncode and 'set by the sweep' in proc.stderr
  proc = _sweep_cli('--name=s', f'--root={tmp_path}', '--summarize', check=False)
  assert proc.returncode and 'no metrics.json' in proc.stderr


@pytest.mark.parametrize('script', ['tpu_pod.sh', 'gpu.sh'])
def test_scripts_pass_shellcheck(script):
  assert subprocess.run(['bash', '-n', str(REPO / 'launch' / script)]).returncode == 0
  if shutil.which('shellcheck') is None:
    pytest.skip('shellcheck not installed')
  proc = subprocess.run(['shellcheck', str(REPO / 'launch' / script)], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


def test_summarize_paired_tests_against_a_reference(tmp_path):
  runs = sweep.expand([0, 1], sweep.parse_grid('rl.rollout=ved,beam'))
  rng = np.random.default_rng(0)
  targets = [f'<a_{i % 7}>' for i in range(400)]
  base = rng.random(400) < 0.2

  def write(directory, hits):
    directory.mkdir(parents=True, exist_ok=True)
    preds = [{'predict': [t if h else '<a_99>'] + ['<a_98>'] * 9, 'output': t}
             for t, h in zip(targets, hits)]
    (directory / 'predictions.json').write_text(json.dumps(preds))
    (directory / 'metrics.json').write_text(json.dumps({m: float(np.mean(hits)) for m in sweep.METRICS}))

  write(tmp_path / 'ref', base)
  for run in runs:
    better = base | (rng.random(400) < (0.15 if run.knobs[0][1] == 'ved' else 0.0))
    write(tmp_path / run.name / 'eval' / 'rl_test', better)
  summary = sweep.add_paired_tests(sweep.summarize(tmp_path, runs, ['rl']), tmp_path, runs,
                                   reference=str(tmp_path / 'ref'))
  ved, beam = summary['rows']
  assert ved['paired']['HR@10']['delta'] > 0.05 and ved['paired']['HR@10']['p_bootstrap'] < 1e-3
  assert beam['paired']['HR@10']['delta'] == 0 and beam['paired']['HR@10']['p_sign'] == 1.0
  assert '| Δ' in sweep.to_markdown(summary).splitlines()[0]
  by_row = sweep.add_paired_tests(sweep.summarize(tmp_path, runs, ['rl']), tmp_path, runs,
                                  reference_row='rl:rl.rollout=beam')
  assert by_row['rows'][0]['paired']['NDCG@10']['delta'] > 0
  with pytest.raises(ValueError, match='no such row'):
    sweep.add_paired_tests(summary, tmp_path, runs, reference_row='rl:nope')
  # Several reference runs (another sweep's seeds, by glob): each user averaged over them, so the
  # ved runs as reference give the ved row a zero delta and the beam row a negative one.
  by_glob = sweep.add_paired_tests(sweep.summarize(tmp_path, runs, ['rl']), tmp_path, runs,
                                   reference=[str(tmp_path / 'seed*_rl.rollout=ved' / 'eval' / 'rl_test')])
  assert len(by_glob['reference']) == 2
  assert by_glob['rows'][0]['paired']['HR@10']['delta'] == 0
  assert by_glob['rows'][1]['paired']['HR@10']['delta'] < -0.05
  assert 'seed0_rl.rollout=ved' in sweep.to_markdown(by_glob).splitlines()[-1]
  with pytest.raises(FileNotFoundError, match='no such eval dir'):
    sweep.add_paired_tests(summary, tmp_path, runs, reference=[str(tmp_path / 'nope*')])
  write(tmp_path / 'short', base[:100])
  with pytest.raises(ValueError, match='not the same users'):
    sweep.add_paired_tests(summary, tmp_path, runs, reference=[str(tmp_path / 'ref'), str(tmp_path / 'short')])
