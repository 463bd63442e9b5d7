"""Tests for vstar_jax.rl.loop (and the rl.step program it drives): sharding invariance,
bit-exact resume, and RL improving a briefly SFT-trained tiny decoder on synthetic data.

Run as a script (`python tests/test_loop.py OUT_DIR`) this module runs two RL iterations on
a 4-device mesh of simulated CPU devices and saves the results, which the test compares with
the same iterations on this process's single device. The module fixture `sharded_run` starts
the script in the background (XLA_FLAGS must be set before jax initializes), overlapping the
in-process tests.
"""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax import default_config
from vstar_jax import parallel
from vstar_jax.data import batching
from vstar_jax.data import synthetic
from vstar_jax.eval import validate
from vstar_jax.model import backbone
from vstar_jax.model import decoder
from vstar_jax.rl import loop
from vstar_jax.rl import settings as settings_lib
from vstar_jax.rl import step as step_lib
from vstar_jax.sid import trie as trie_lib
from vstar_jax.train import checkpoint as checkpoint_lib
from vstar_jax.train import sft

STEPS = 30
STOP = 13  # interruption point: not a checkpoint or validation step


def small_data():
  return synthetic.make_dataset(num_items=120, num_users=150, num_codes=8, seq_len=8)


def tiny_config(sft_epochs=2):
  c = default_config.base_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 1, 32, 2, 64
  c.sft.epochs, c.sft.batch_size, c.sft.warmup_steps, c.sft.lr = sft_epochs, 64, 5, 3e-3
  c.sft.checkpoint_every_steps = 0
  c.sft.valid_max_rows, c.sft.valid_beams = 100, 10
  c.eval.batch_size = 50
  r = c.rl
  r.group_size, c.ved.width, r.batch_users = 8, 4, 16
  r.steps, r.valid_every, r.checkpoint_every = STEPS, STEPS, 10
  r.value_pretrain_steps = 0  # covered by tests/test_value_pretrain.py
  r.valid_max_rows, r.valid_beams = 150, 10
  r.lr, r.warmup_steps = 3e-4, 0  # picked by the synthetic lr check (1e-5 .. 1e-2) for this model
  return c


@pytest.fixture(scope='module', autouse=True)
def sharded_run(tmp_path_factory):
  """Starts the 4-simulated-device comparison in the background; yields (process, out dir)."""
  out = tmp_path_factory.mktemp('sharded')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  with open(out / 'log.txt', 'w') as log:
    proc = subprocess.Popen([sys.executable, __file__, str(out)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
  yield proc, out
  if proc.poll() is None:
    proc.kill()
    proc.wait()


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """Dataset, config and a briefly SFT-trained tiny decoder."""
  data = small_data()
  config = tiny_config()
  result = sft.train(config, data, tmp_path_factory.mktemp('sft'))
  return data, config, result


@pytest.fixture(scope='module')
def full_run(setup, tmp_path_factory):
  data, config, result = setup
  workdir = tmp_path_factory.mktemp('rl_full')
  return workdir, loop.train(config, data, workdir, result.params, result.cfg)


def _latest_params(workdir, sft_params, config):
  template = loop.state_template(config, sft_params)
  ckpt = checkpoint_lib.Checkpointer(workdir / 'checkpoints' / loop.STAGE,
                                     best_metric=loop.BEST_METRIC)
  state, _ = ckpt.restore_latest(template)
  step = ckpt.latest_step()
  ckpt.close()
  return step, state


def _records(workdir):
  return loop.metrics_log.MetricsLog(workdir).read(loop.STAGE)


def test_resume_after_interruption_is_bit_identical(setup, full_run, tmp_path):
  data, config, result = setup
  full_dir, full = full_run
  cut = loop.train(config, data, tmp_path, result.params, result.cfg, stop_at_step=STOP)
  assert cut.steps == STOP
  # A crash after the last periodic checkpoint: the stop checkpoint is lost, the run resumes
  # from step 10 (saved while later iterations kept running) and re-logs steps 11..13.
  ckpt_dir = tmp_path / 'checkpoints' / loop.STAGE
  assert sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) == [0, 10, STOP]
  shutil.rmtree(ckpt_dir / str(STOP))
  resumed = loop.train(config, data, tmp_path, result.params, result.cfg)
  assert full.steps == resumed.steps == STEPS
  step_full, state_full = _latest_params(full_dir, result.params, config)
  step_cut, state_cut = _latest_params(tmp_path, result.params, config)
  assert step_full == step_cut == STEPS
  jax.tree.map(np.testing.assert_array_equal, state_full, state_cut)
  jax.tree.map(np.testing.assert_array_equal, full.params, resumed.params)
  moved = max(float(jnp.abs(a - b).max()) for a, b in
              zip(jax.tree.leaves(state_full.params), jax.tree.leaves(result.params)))
  assert moved > 1e-3  # not vacuous: RL changed the policy
  # Each iteration is logged once, with the uninterrupted run's values.
  losses = lambda d: [(x['step'], x['loss']) for x in _records(d) if 'loss' in x]
  assert losses(tmp_path) == losses(full_dir)
  assert [x['step'] for x in _records(tmp_path) if loop.BEST_METRIC in x] == [0, STEPS]


def test_rl_raises_rollout_reward_and_valid_hit_rate(setup, full_run):
  data, config, result = setup
  workdir, rl = full_run
  records = _records(workdir)
  train = [x for x in records if 'loss' in x]
  valid = {x['step']: x for x in records if loop.BEST_METRIC in x}
  assert len(train) == STEPS and set(valid) == {0, STEPS}
  for key in ('reward_mean', 'reward_group_std', 'rollout_hit', 'distinct_l1', 'kl', 'value_loss',
              'sibling_loss', 'grpo_loss', 'forwards_per_user', 'wall_s', 'users_per_s'):
    assert all(np.isfinite(x[key]) for x in train), key
  assert all(x['forwards_per_user'] <= 18 for x in train)  # VED budget: floor(2 * (1 + 2 * 4))
  assert valid[STEPS]['valid_HR@10'] > valid[0]['valid_HR@10'] + 0.02, valid
  assert rl.best_valid[loop.BEST_METRIC] == max(v[loop.BEST_METRIC] for v in valid.values())
  assert max(x['kl'] for x in train) < 0.05
  # The users RL trained on: hits in the top 10 of beam search, before and after.
  rows = np.arange(300)
  trie = trie_lib.build_trie(data.item_codes, data.num_codes)
  hr = lambda p: validate.beam_eval(p, result.cfg, trie, data, 'train', rows, 10, 50)[1]['HR@10']
  before, after = hr(result.params), hr(rl.params)
  assert after > before + 0.03, (before, after)


def run_iterations(devices) -> dict:
  """Two RL iterations of the tiny config from a random-init decoder on a mesh of `devices`."""
  data = small_data()
  config = tiny_config()
  r = config.rl
  settings = settings_lib.RlSettings.from_config(config)
  cfg = backbone.model_config(config, data)
  params = decoder.init_params(cfg, jax.random.key(1))
  users = batching.UserRows.from_dataset(data, ('train',))
  mesh = parallel.make_mesh(devices)
  programs = step_lib.make_programs(cfg, settings, mesh)
  trie = parallel.replicate(trie_lib.build_trie(data.item_codes, data.num_codes), mesh)
  state = parallel.replicate(step_lib.init_state(params, settings, config.seed), mesh)
  metrics = []
  for index in range(2):
    batch = users.batch(batching.batch_rows(len(users), r.batch_users, config.seed, 0, index),
                        mesh)
    assert len(batch.history.sharding.device_set) == len(devices)
    state, m = programs.iteration(state, batch, trie, None)
    metrics.append(jax.device_get(m))
  out = {'params/' + jax.tree_util.keystr(k): np.asarray(v)
         for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
  out.update({'initial/' + jax.tree_util.keystr(k): np.asarray(v)
              for k, v in jax.tree_util.tree_leaves_with_path(params)})
  out.update({f'metrics/{key}': np.array([float(m[key]) for m in metrics]) for key in metrics[0]})
  return out


def test_sharded_iteration_equals_single_device(sharded_run):
  proc, out = sharded_run
  one = run_iterations(jax.devices()[:1])
  proc.wait(timeout=600)
  assert proc.returncode == 0, (out / 'log.txt').read_text()[-4000:]
  four = dict(np.load(out / 'four.npz'))
  assert sorted(four) == sorted(one) and len(one) > 20
  for key in one:
    np.testing.assert_allclose(four[key], one[key], rtol=1e-4, atol=1e-6, err_msg=key)
  # Not vacuous: parameters moved, rollouts hit, the sibling path ran.
  moved = max(np.abs(one['params/' + k[len('initial/'):]] - one[k]).max()
              for k in one if k.startswith('initial/'))
  assert moved > 1e-4
  assert one['metrics/rollout_hit'].max() > 0
  assert one['metrics/sibling_frac'].max() > 0
  assert one['metrics/grad_norm'].min() > 0


if __name__ == '__main__':
  assert len(jax.devices()) == 4, jax.devices()
  np.savez(os.path.join(sys.argv[1], 'four.npz'), **run_iterations(jax.devices()))
