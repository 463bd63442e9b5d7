"""Tests for vstar_jax.rl.value_pretrain: the value loss falls, only the head learns, TD targets
match a hand computation, and the RL loop pretrains once (not again on resume)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax import default_config
from vstar_jax.data import synthetic
from vstar_jax.model import decoder
from vstar_jax.rl import loop
from vstar_jax.rl import update
from vstar_jax.rl import value_pretrain
from vstar_jax.sid import trie as trie_lib
from vstar_jax.train import checkpoint as checkpoint_lib
from vstar_jax.train import metrics_log
from vstar_jax.train import sft

PRETRAIN_STEPS = 40


def tiny_config():
  c = default_config.base_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 1, 32, 2, 64
  c.eval.batch_size = 50
  c.rl = loop.default_rl_config()
  r = c.rl
  r.group_size, r.ved_width, r.batch_users = 8, 4, 16
  r.steps, r.valid_every, r.checkpoint_every = 2, 2, 0
  r.valid_max_rows, r.valid_beams = 50, 10
  return c


@pytest.fixture(scope='module')
def problem():
  data = synthetic.make_dataset(num_items=120, num_users=150, num_codes=8, seq_len=8)
  config = tiny_config()
  cfg = sft.decoder_config(config, data)
  return data, config, cfg, decoder.init_params(cfg, jax.random.key(0))


def test_value_pretraining_lowers_the_loss_and_trains_only_the_head(problem):
  data, config, cfg, params = problem
  r = config.rl
  settings = loop.RlSettings.from_config(r)
  mesh = update.make_mesh()
  users = loop.UserRows.from_dataset(data, ('train',))
  steps_per_epoch = users.history.shape[0] // r.batch_users
  programs = loop.make_programs(cfg, settings, mesh, steps_per_epoch)
  trie = update.replicate(trie_lib.build_trie(data.item_codes, data.num_codes), mesh)
  batches = (users.batch(loop.batch_rows(users.history.shape[0], r.batch_users, 0, 0,
                                         i % steps_per_epoch), mesh)
             for i in range(PRETRAIN_STEPS))
  trained, losses = value_pretrain.pretrain(programs.value, update.replicate(params, mesh),
                                            batches, trie, None, jax.random.key(1), mesh)
  assert len(losses) == PRETRAIN_STEPS and all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses
  head = value_pretrain.HEAD
  backbone = lambda p: {k: v for k, v in p.items() if k != head}
  jax.tree.map(np.testing.assert_array_equal, backbone(trained), backbone(params))
  assert all(float(jnp.abs(a - b).max()) > 1e-4
             for a, b in zip(jax.tree.leaves(trained[head]), jax.tree.leaves(params[head])))


def test_dense_value_targets_by_hand():
  # One user, target item 0 = SID (1, 2, 3); candidates: the exact hit (item 0), a level-2
  # match (item 1 = (1, 2, 0)), a level-1 match (item 2 = (1, 0, 0)) and an invalid slot.
  item_codes = np.array([[1, 2, 3], [1, 2, 0], [1, 0, 0], [0, 0, 0]], np.int32)
  trie = trie_lib.build_trie(item_codes, 4)
  cand = np.array([[[1, 2, 3], [1, 2, 0], [1, 0, 0], [-1, -1, -1]]], np.int32)
  valid = np.array([[True, True, True, False]])
  target, target_item = item_codes[None, 0], np.array([0], np.int32)
  emb = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [1.0, 1.0]], np.float32)
  values = np.arange(16, dtype=np.float32).reshape(1, 4, 4) / 10
  tcfg = value_pretrain.ValueTargetConfig(weights=(0.3, 0.5, 1.0), gamma=0.9,
                                          use_item_embeddings=True)
  got = jax.jit(value_pretrain.dense_value_targets, static_argnums=7)(
      cand, valid, target, target_item, values, trie, emb, tcfg)
  # Level rewards: match pays w_l, a miss -w_l * (1 - cos(emb(pred), emb(target))).
  level = np.array([[0.3, 0.5, 1.0],
                    [0.3, 0.5, -1.0 * (1 - 0.6)],
                    [0.3, -0.5 * (1 - 0.0), -1.0 * (1 - 0.0)]])
  v = values[0]
  want = np.zeros((4, 4), np.float32)
  for g in range(3):
    want[g] = [0.9 * v[g, 1], level[g, 0] + 0.9 * v[g, 2], level[g, 1] + 0.9 * v[g, 3],
               level[g, 2]]
  np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(
      value_pretrain.candidate_items(trie, cand), [[0, 1, 2, -1]])


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
  template = loop.init_state(params, loop.RlSettings.from_config(config.rl), 0)
  ckpt = checkpoint_lib.Checkpointer(tmp_path / 'checkpoints' / loop.STAGE,
                                     best_metric=loop.BEST_METRIC)
  state, _ = ckpt.restore_latest(template)
  ckpt.close()
  assert int(state.extra['value_pretrained']) == 1 and int(state.step) == 2
  jax.tree.map(np.testing.assert_array_equal, state.extra['ref_params'], params)
