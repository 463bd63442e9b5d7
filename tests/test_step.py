"""Tests for vstar_jax.rl.step: scoring a rollout gives zero policy gradient without a hit."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import decoder_fixture
from vstar_jax import default_config
from vstar_jax.data import batching
from vstar_jax.data import synthetic
from vstar_jax.model import backbone
from vstar_jax.model import policy
from vstar_jax.rl import loss as loss_lib
from vstar_jax.rl import rewards
from vstar_jax.rl import rollouts
from vstar_jax.rl import settings as settings_lib
from vstar_jax.rl import step as step_lib
from vstar_jax.sid import trie as trie_lib
from vstar_jax.train import sft


@functools.lru_cache(maxsize=None)
def _problem():
  data = synthetic.make_dataset(num_items=120, num_users=150, num_codes=8, seq_len=8)
  config = default_config.base_config()
  config.model.num_layers, config.model.d_model, config.model.num_heads = 1, 32, 2
  config.model.d_ff, config.rl.group_size = 64, 8
  cfg = backbone.model_config(config, data)
  return data, config, cfg, decoder_fixture.random_params(cfg)


@functools.partial(jax.jit, static_argnums=2)
def _policy(params, batch, cfg):
  return policy.candidate_log_probs(params, batch, cfg=cfg)


@functools.partial(jax.jit, static_argnums=2)
def _pg_grad(params, loss_batch, cfg):
  """Gradient of the policy-gradient terms only (GRPO + sibling; no KL, no value loss)."""
  pg_only = loss_lib.LossConfig(clip_eps=0.2, w_sib=1.0, kl_beta=0.0, w_value=0.0)
  policy_fn = functools.partial(policy.candidate_log_probs, cfg=cfg)
  return jax.grad(lambda p: loss_lib.rl_loss(p, params, loss_batch, policy_fn, pg_only)[0])(params)


@pytest.mark.parametrize('reward', ['rule', 'ranking'])
def test_no_hit_batch_gives_zero_policy_gradient(reward):
  data, config, cfg, params = _problem()
  config.rl.reward = reward
  settings = settings_lib.RlSettings.from_config(config)
  users = batching.UserRows.from_dataset(data, ('train',))
  rng = np.random.default_rng(0)
  num_users, group = 8, config.rl.group_size
  # Candidate groups: distinct catalogue SIDs, best first, with an invalid tail on some users.
  cand = np.stack([data.item_codes[rng.choice(data.num_items, group, replace=False)]
                   for _ in range(num_users)])
  valid = np.arange(group)[None, :] < rng.integers(3, group + 1, size=(num_users, 1))
  cand = np.where(valid[..., None], cand, -1)
  ro = rollouts.Rollout.create(
      cand, valid, np.where(valid, -np.arange(group, dtype=np.float32), -np.inf),
      np.zeros(num_users, np.int32))
  candidates = policy.Candidates(history=users.history[:num_users], cand=cand, valid=valid)
  old_logp, old_values, _ = _policy(params, candidates, cfg)
  trie = trie_lib.build_trie(data.item_codes, data.num_codes)

  def pg_grad(target):
    inputs = rewards.RewardInputs(target=target, target_item=users.target_item[:num_users],
                                  trie=trie)
    scored = jax.jit(lambda: step_lib.score_rollout(ro, inputs, old_values, settings))()
    loss_batch = loss_lib.LossBatch(
        candidates=candidates, old_logp=old_logp, group_adv=scored['group_adv'],
        sibling_adv=scored['sibling_adv'], value_targets=scored['value_targets'], target=target)
    return _pg_grad(params, loss_batch, cfg), scored

  no_hit = np.full((num_users, 3), data.num_codes, np.int32)  # code K exists nowhere
  grads, scored = pg_grad(no_hit)
  assert not np.asarray(scored['group_adv']).any() and not np.asarray(scored['sibling_adv']).any()
  chex.assert_trees_all_equal(grads, jax.tree.map(jnp.zeros_like, grads))
  # Control: the same groups with a hit (each user's second candidate) have a gradient.
  grads, scored = pg_grad(cand[:, 1])
  assert np.asarray(scored['group_adv']).any() and np.asarray(scored['sibling_adv']).any()
  assert float(optax.tree.norm(grads)) > 1e-3


def test_anchor_history_dropout_changes_only_the_anchor():
  """rl.anchor_history_dropout masks history items in the anchor's NLL only: one iteration from
  the same state draws the same rollouts (same reward, hits, advantages) with and without it,
  while the anchor's NLL is read from the masked histories; the anchor of target_nll reads
  batch.anchor_history when given."""
  from vstar_jax import parallel
  data, config, cfg, params = _problem()
  users = batching.UserRows.from_dataset(data, ('train',))
  mesh = parallel.make_mesh(jax.devices()[:1])
  trie = parallel.replicate(trie_lib.build_trie(data.item_codes, data.num_codes), mesh)
  batch = users.batch(batching.batch_rows(len(users), 16, 0, 0, 0), mesh)

  def one_iteration(rate):
    c = config.copy_and_resolve_references()
    c.rl.w_sft, c.rl.anchor_history_dropout, c.rl.batch_users = 1.0, rate, 16
    settings_lib.validate_config(c)
    settings = settings_lib.RlSettings.from_config(c)
    state = parallel.replicate(step_lib.init_state(params, settings, 0), mesh)
    _, metrics = step_lib.make_programs(cfg, settings, mesh).iteration(state, batch, trie, None)
    return jax.device_get(metrics)

  off, on = one_iteration(0.0), one_iteration(0.6)
  for key in ('reward_mean', 'rollout_hit', 'nonzero_adv_groups', 'distinct_l1', 'grpo_loss'):
    np.testing.assert_allclose(on[key], off[key], rtol=1e-6, err_msg=key)
  assert abs(float(on['sft_nll']) - float(off['sft_nll'])) > 1e-3

  policy_fn = functools.partial(policy.candidate_log_probs, cfg=cfg)
  history, target = np.asarray(batch.history), np.asarray(batch.target)
  masked = sft.drop_history_items(history, 0.6, jax.random.key(3))
  assert (np.asarray(masked) != history).any()

  def loss_batch(history, anchor_history=None):   # target_nll reads only these fields
    rows = target.shape[0]
    return loss_lib.LossBatch(
        candidates=policy.Candidates(history=history, cand=target[:, None],
                                     valid=np.ones((rows, 1), bool)),
        old_logp=None, group_adv=None, sibling_adv=None, value_targets=None, target=target,
        anchor_history=anchor_history)

  nll = jax.jit(lambda b: loss_lib.target_nll(params, b, policy_fn, None))
  plain = loss_batch(history)
  np.testing.assert_allclose(nll(loss_batch(history, history)), nll(plain), rtol=1e-6)
  np.testing.assert_allclose(nll(loss_batch(history, masked)), nll(loss_batch(masked)), rtol=1e-6)
  assert abs(float(nll(loss_batch(history, masked))) - float(nll(plain))) > 1e-3


def test_anchor_histories_do_not_depend_on_the_batch_split():
  """Each user's anchor mask comes from its own key: a batch of 16 gives the same rows as its two
  halves (what each of 2 shards sees), and masking happens (the check can fail)."""
  data, _, _, _ = _problem()
  users = batching.UserRows.from_dataset(data, ('train',))
  from vstar_jax import parallel
  rows = batching.batch_rows(len(users), 16, 0, 0, 0)
  batch = jax.device_get(users.batch(rows, parallel.make_mesh(jax.devices()[:1])))
  key = jax.random.key(5)
  whole = np.asarray(step_lib.anchor_histories(batch.history, batch.user_index, key, 0.6))
  halves = np.concatenate([np.asarray(step_lib.anchor_histories(
      batch.history[i:i + 8], batch.user_index[i:i + 8], key, 0.6)) for i in (0, 8)])
  np.testing.assert_array_equal(whole, halves)
  assert (whole != np.asarray(batch.history)).any()
  np.testing.assert_array_equal(whole[:, -1], np.asarray(batch.history)[:, -1])
