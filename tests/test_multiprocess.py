"""Multi-process runs on 127.0.0.1 (launch/local_multiprocess.py, vstar_jax.distributed).

2 processes with 1 CPU device each train (SFT, then RL) exactly what 1 process with 2 devices
trains; a 1-process eval restores the checkpoint the 2 processes wrote; an error on one
process stops the other at once with that error.

Run as a script (`python tests/test_multiprocess.py PORT ID`) this module is one process of
the error-propagation check.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, TINY_SYNTHETIC, run_main

_spec = importlib.util.spec_from_file_location('local_multiprocess',
                                               REPO / 'launch' / 'local_multiprocess.py')
launcher = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launcher)

# SFT (1 epoch) then 4 RL iterations with beam rollouts (VED's compile would double the time;
# the sharded VED iteration is checked in tests/test_loop.py), validated at steps 2 and 4.
TINY_RL = TINY_SYNTHETIC + [
    '--config.rl.steps=4', '--config.rl.batch_users=8', '--config.rl.group_size=4',
    '--config.rl.rollout=beam', '--config.rl.valid_every=2', '--config.rl.valid_max_rows=50',
    '--config.rl.valid_beams=10', '--config.rl.value_pretrain_steps=0',
    '--config.rl.checkpoint_every=0', '--config.rl.warmup_steps=1', '--config.mode=rl']
RUN_FACTS = ('time', 'wall_s', 'users_per_s')  # timings, not results


def _records(workdir):
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def test_two_processes_train_what_one_process_with_two_devices_trains(tmp_path):
  two = tmp_path / 'two_processes'
  proc = subprocess.run([sys.executable, 'launch/local_multiprocess.py', '--processes=2',
                         f'--process_logs={tmp_path / "logs"}', '--', *TINY_RL,
                         f'--workdir={two}'], cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  logs = ''.join(p.read_text() for p in (tmp_path / 'logs').glob('*.log'))
  assert proc.returncode == 0, proc.stderr[-3000:] + logs[-3000:]
  one = tmp_path / 'one_process'
  run_main(*TINY_RL, f'--workdir={one}',
           env=dict(os.environ, JAX_PLATFORMS='cpu',
                    XLA_FLAGS='--xla_force_host_platform_device_count=2'))

  ours, theirs = _records(two), _records(one)
  assert [(r['stage'], r['step']) for r in ours] == [(r['stage'], r['step']) for r in theirs]
  assert {r['stage'] for r in ours} == {'sft', 'rl'} and any('valid_NDCG@10' in r for r in ours)
  for a, b in zip(ours, theirs):
    assert a.keys() == b.keys()
    for key in a.keys() - set(RUN_FACTS) - {'stage'}:
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-7,
                                 err_msg=f'{a["stage"]} step {a["step"]} {key}')
  for stage in ('sft_test', 'rl_test'):
    predictions = (two / 'eval' / stage / 'predictions.json').read_text()
    assert predictions == (one / 'eval' / stage / 'predictions.json').read_text(), stage
  # One writer: process 0 alone recorded the run.
  assert len(list((two / 'runs').glob('*.json'))) == 1
  assert json.loads((two / 'config.json').read_text())['distributed']['num_processes'] == 2

  # A 1-process, 1-device eval restores the checkpoint the 2 processes wrote.
  out = tmp_path / 'eval_one_device'
  run_main('--config=configs/synthetic.py', f'--workdir={two}', '--config.mode=eval',
           '--config.eval.num_beams=10', f'--out={out}')
  assert ((out / 'eval' / 'rl_test' / 'predictions.json').read_text()
          == (two / 'eval' / 'rl_test' / 'predictions.json').read_text())


def test_an_error_on_one_process_stops_the_other_with_that_error(tmp_path):
  port = launcher.free_port()
  env = launcher.process_env(1)
  procs = [subprocess.Popen([sys.executable, __file__, str(port), str(i)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO / 'tests')
           for i in range(2)]
  start = time.monotonic()
  outputs = [p.communicate(timeout=120) for p in procs]
  waited = time.monotonic() - start
  assert [p.returncode for p in procs] == [2, 2], outputs
  # Process 0 was blocked in a collective process 1 never joins: the error, not a timeout, ended it.
  assert 'error: the data of process 1 is bad (reported by process 1; this is process 0)' in (
      outputs[0][1]), outputs[0][1][-2000:]
  assert 'still running' not in outputs[0][0]
  assert waited < 60


def test_launcher_gives_each_process_its_id_and_cpu_devices():
  command = launcher.process_command(['--config=c', '--workdir=w'], 1234, 3, 2)
  assert command[1:] == ['-m', 'vstar_jax.main', '--config=c', '--workdir=w',
                         '--config.distributed.enabled=True',
                         '--config.distributed.coordinator=127.0.0.1:1234',
                         '--config.distributed.num_processes=3',
                         '--config.distributed.process_id=2']
  env = launcher.process_env(4)
  assert env['JAX_PLATFORMS'] == 'cpu'
  assert env['XLA_FLAGS'].split().count('--xla_force_host_platform_device_count=4') == 1


@pytest.mark.parametrize('args', [['--processes=0', '--', '--config=c'], []])
def test_launcher_usage_errors(args):
  proc = subprocess.run([sys.executable, 'launch/local_multiprocess.py', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0 and not proc.stdout


if __name__ == '__main__':
  import jax
  import ml_collections
  from jax.sharding import NamedSharding, PartitionSpec as P

  from vstar_jax import distributed
  from vstar_jax import parallel

  port, index = sys.argv[1], int(sys.argv[2])
  distributed.initialize(ml_collections.ConfigDict(dict(
      enabled=True, coordinator=f'127.0.0.1:{port}', num_processes=2, process_id=index)))
  mesh = parallel.make_mesh()
  x = jax.make_array_from_process_local_data(NamedSharding(mesh, P('data')), np.ones(1, np.float32))
  jax.block_until_ready(jax.jit(lambda a: a.sum())(x))  # both processes are up
  if index == 1:
    distributed.report_error('error: the data of process 1 is bad', 2)
    sys.stderr.write('error: the data of process 1 is bad\n')
    os._exit(2)
  time.sleep(1)
  distributed.barrier('never_reached_by_process_1')  # blocks until the watcher exits this process
  print('still running')
