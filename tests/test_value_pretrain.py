"""Tests for vstar_jax.rl.value_pretrain: the value loss falls, only the head learns, and the RL
loop pretrains once (not again on resume)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax import default_config
from vstar_jax import parallel
from vstar_jax.data import batching
from vstar_jax.data import synthetic
from vstar_jax.model import backbone
from vstar_jax.model import decoder
from vstar_jax.rl import loop
from vstar_jax.rl import settings as settings_lib
from vstar_jax.rl import step as step_lib
from vstar_jax.rl import value_pretrain
from vstar_jax.sid import trie as trie_lib
from vstar_jax.train import checkpoint as checkpoint_lib
from vstar_jax.train import metrics_log

PRETRAIN_STEPS = 40


def tiny_config():
  c = default_config.base_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 1, 32, 2, 64
  c.eval.batch_size = 50
  r = c.rl
  r.group_size, c.ved.width, r.batch_users = 8, 4, 16
  r.steps, r.valid_every, r.checkpoint_every = 2, 2, 0
  r.valid_max_rows, r.valid_beams = 50, 10
  return c


@pytest.fixture(scope='module')
def problem():
  data = synthetic.make_dataset(num_items=120, num_users=150, num_codes=8, seq_len=8)
  config = tiny_config()
  cfg = backbone.model_config(config, data)
  return data, config, cfg, decoder.init_params(cfg, jax.random.key(0))


def test_value_pretraining_lowers_the_loss_and_trains_only_the_head(problem):
  data, config, cfg, params = problem
  r = config.rl
  settings = settings_lib.RlSettings.from_config(config)
  mesh = parallel.make_mesh()
  users = batching.UserRows.from_dataset(data, ('train',))
  steps_per_epoch = len(users) // r.batch_users
  programs = step_lib.make_programs(cfg, settings, mesh)
  trie = parallel.replicate(trie_lib.build_trie(data.item_codes, data.num_codes), mesh)
  batches = (users.batch(batching.batch_rows(len(users), r.batch_users, 0, 0,
                                             i % steps_per_epoch), mesh)
             for i in range(PRETRAIN_STEPS))
  trained, losses = value_pretrain.pretrain(programs.value, parallel.replicate(params, mesh),
                                            batches, trie, None, jax.random.key(1), mesh)
  assert len(losses) == PRETRAIN_STEPS and all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses
  heads = value_pretrain.HEADS
  backbone = lambda p: {k: v for k, v in p.items() if k not in heads}
  jax.tree.map(np.testing.assert_array_equal, backbone(trained), backbone(params))
  assert all(float(jnp.abs(a - b).max()) > 1e-4
             for a, b in zip(jax.tree.leaves(value_pretrain.heads_of(trained)),
                             jax.tree.leaves(value_pretrain.heads_of(params))))


def test_loop_pretrains_once_and_records_it(problem, tmp_path):
  data, _, cfg, params = problem
  config = tiny_config()
  config.rl.value_pretrain_steps = 5
  loop.train(config, data, tmp_path, params, cfg, stop_at_step=1)
  log = metrics_log.MetricsLog(tmp_path)
  assert [x['step'] for x in log.read(loop.VALUE_STAGE)] == [1, 2, 3, 4, 5]
  result = loop.train(config, data, tmp_path, params, cfg)  # resumes: no second pretraining
  assert result.steps == 2
  assert [x['step'] for x in log.read(loop.VALUE_STAGE)] == [1, 2, 3, 4, 5]
  ckpt = checkpoint_lib.Checkpointer(tmp_path / 'checkpoints' / loop.STAGE,
                                     best_metric=loop.BEST_METRIC)
  state, _ = ckpt.restore_latest(loop.state_template(config, params))
  ckpt.close()
  assert int(state.value_pretrained) == 1 and int(state.step) == 2
  jax.tree.map(np.testing.assert_array_equal, state.ref_params, params)


def test_catalogue_candidates_are_every_item_sid_once(problem):
  data = problem[0]
  trie = trie_lib.build_trie(data.item_codes, data.num_codes)
  history = jnp.zeros((3, 4, trie.num_levels), jnp.int32)
  out = value_pretrain.catalogue_candidates(None, trie, history, None, None)
  cand, valid = np.asarray(out.candidates), np.asarray(out.valid)
  assert cand.shape == (3, trie.num_nodes, trie.num_levels) and valid.shape == cand.shape[:2]
  np.testing.assert_array_equal(cand[0], cand[2])           # the same catalogue for every user
  sids = {tuple(c) for c in cand[0][valid[0]].tolist()}
  assert sids == {tuple(c) for c in data.item_codes.tolist()}
  assert valid[0].sum() == len(sids)                          # each SID once, leaves only
  assert (cand[0][~valid[0]] == -1).all()


def test_catalogue_coverage_fits_the_heads_on_every_item(problem):
  """With value_coverage='catalogue' the pretraining step regresses V on every item's path:
  the loss falls and the heads alone change, as with rollouts."""
  data, config, cfg, params = problem
  config = tiny_config()
  config.rl.value_coverage = 'catalogue'
  settings = settings_lib.RlSettings.from_config(config)
  assert settings.value_coverage == 'catalogue'
  mesh = parallel.make_mesh()
  users = batching.UserRows.from_dataset(data, ('train',))
  per_epoch = len(users) // config.rl.batch_users
  programs = step_lib.make_programs(cfg, settings, mesh)
  trie = parallel.replicate(trie_lib.build_trie(data.item_codes, data.num_codes), mesh)
  batches = (users.batch(batching.batch_rows(len(users), config.rl.batch_users, 0, 0,
                                             i % per_epoch), mesh) for i in range(20))
  trained, losses = value_pretrain.pretrain(programs.value, parallel.replicate(params, mesh),
                                            batches, trie, None, jax.random.key(1), mesh)
  assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:2]), losses
  backbone = lambda p: {k: v for k, v in p.items() if k not in value_pretrain.HEADS}
  jax.tree.map(np.testing.assert_array_equal, backbone(trained), backbone(params))
