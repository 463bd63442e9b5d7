"""Tests for vstar_jax.rl.simulator_oracle: node values equal a brute force over the items under
each prefix, and VED with the oracle reads V and Q from them while its log-probs, forwards and
budget stay the policy's (toy policies of test_ved; the decoder through the RL rollout)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import decoder_fixture
import test_ved
from vstar_jax import default_config
from vstar_jax.decode import ved as ved_lib
from vstar_jax.model import decoder
from vstar_jax.rl import rewards
from vstar_jax.rl import rollouts
from vstar_jax.rl import settings as settings_lib
from vstar_jax.rl import simulator_oracle


def brute_force(trie, leaf_reward, reduction):
  """[B, N] max / mean of leaf_reward over the depth-L nodes under each node, in numpy."""
  prefix, depth = np.asarray(trie.prefix), np.asarray(trie.depth)
  leaves = np.flatnonzero(depth == trie.num_levels)
  out = np.zeros(leaf_reward.shape)
  for node in range(len(depth)):
    d = depth[node]
    under = [n for n in leaves if (prefix[n, :d] == prefix[node, :d]).all()]
    values = leaf_reward[:, under]
    out[:, node] = values.max(1) if reduction == 'max' else values.mean(1)
  return out


@pytest.mark.parametrize('reduction', simulator_oracle.REDUCTIONS)
def test_node_values_are_the_max_or_mean_over_the_items_under_each_prefix(reduction):
  p = test_ved.problem(*test_ved.SMALL)
  leaf_reward = np.random.default_rng(0).uniform(size=(2, p.trie.num_nodes)).astype(np.float32)
  got = jax.jit(simulator_oracle.node_values, static_argnums=2)(p.trie, leaf_reward, reduction)
  np.testing.assert_allclose(got, brute_force(p.trie, leaf_reward, reduction), rtol=1e-6)
  with pytest.raises(ValueError, match='reduction'):
    simulator_oracle.node_values(p.trie, leaf_reward, 'median')


def test_preference_values_read_the_true_reward_of_each_leaf_item():
  p = test_ved.problem(*test_ved.SMALL)
  rng = np.random.default_rng(1)
  items = rng.normal(size=(len(p.item_codes), 4)).astype(np.float32)
  users = rng.normal(size=(2, 4)).astype(np.float32)
  got = np.asarray(simulator_oracle.preference_values(p.trie, users, items, 'max'))
  node = np.asarray(p.trie.depth) == p.trie.num_levels
  item = np.asarray(p.trie.leaf_items)[node, 0]
  np.testing.assert_allclose(got[:, node], 1 / (1 + np.exp(-users @ items[item].T)), rtol=1e-5)
  np.testing.assert_allclose(got[:, 0], (1 / (1 + np.exp(-users @ items.T))).max(1), rtol=1e-5)


@pytest.mark.parametrize('reduction', simulator_oracle.REDUCTIONS)
def test_ved_with_the_oracle_reads_v_and_q_from_it_and_keeps_the_policys_forwards(reduction):
  p = test_ved.problem(*test_ved.SMALL)
  batch = test_ved.BATCH
  leaf_reward = np.random.default_rng(2).uniform(size=(batch, p.trie.num_nodes))
  values = brute_force(p.trie, leaf_reward, reduction).astype(np.float32)
  cfg = ved_lib.VedConfig(width=2, multiplier=3.0, group_size=6, selection='ucb',
                          leaf_ranking='value')
  tables = (p.logits, p.values, p.q)

  @jax.jit
  def search(tables, trie, values, keys):
    fns = test_ved.toy_fns(tables, batch)
    return ved_lib.ved(*simulator_oracle.with_oracle(*fns, trie, values), trie, keys, cfg)

  out = jax.device_get(search(tables, p.trie, values, test_ved.keys_of(0)))
  tree = out.tree
  rows = np.arange(batch)[:, None]
  exists = np.asarray(tree.exists)
  node = np.asarray(tree.trie_node)
  np.testing.assert_allclose(np.where(exists, tree.value, 0),
                             np.where(exists, values[rows, np.maximum(node, 0)], 0), rtol=1e-6)
  children = np.asarray(p.trie.children)[np.maximum(node, 0)]                # [B, N, K]
  child_node = np.take_along_axis(children, np.maximum(tree.child_code, 0), axis=-1)
  has_child = exists[..., None] & (np.asarray(tree.child_code) >= 0)
  np.testing.assert_allclose(np.where(has_child, tree.child_value, 0),
                             np.where(has_child, values[rows[..., None], child_node], 0),
                             rtol=1e-6)
  # The log-probs are the policy's: every expanded node's cum log-prob is its prefix's.
  for user in range(batch):
    for slot in np.flatnonzero(exists[user]):
      prefix = tuple(int(c) for c in tree.prefix[user, slot] if c >= 0)
      expected = sum(p.policy(user, prefix[:d])[0][prefix[d]] for d in range(len(prefix)))
      np.testing.assert_allclose(tree.cum_log_prob[user, slot], expected, rtol=1e-4, atol=1e-5)
  assert (np.asarray(out.num_forwards) <= ved_lib.budget(cfg, 3)).all()
  # Value-ranked leaves are the tree's leaves by true reward (Q of a leaf = its own reward).
  leaves = np.asarray(tree.leaves())
  for user in range(batch):
    found = np.sort(np.where(leaves[user], tree.child_value[user], -np.inf).ravel())[::-1]
    got = np.asarray(out.scores[user])[np.asarray(out.valid[user])]
    np.testing.assert_allclose(got, found[:len(got)], rtol=1e-6)
    for cand, score in zip(out.candidates[user][out.valid[user]], got):
      leaf = p.trie.children[0, cand[0]]
      for c in cand[1:]:
        leaf = p.trie.children[leaf, c]
      np.testing.assert_allclose(leaf_reward[user, leaf], score, rtol=1e-6)


def test_the_oracle_rollout_runs_in_the_rl_registry_and_needs_the_simulator_inputs():
  cfg = decoder.DecoderConfig(num_levels=3, num_codes=8, max_history=3, num_layers=1, d_model=16,
                              num_heads=2, d_ff=32, dropout=0.0, item_hash_buckets=0)
  params = decoder_fixture.random_params(cfg)
  p = test_ved.problem(*test_ved.SMALL)
  c = default_config.base_config()
  c.rl.rollout, c.rl.group_size, c.ved.width = 'ved_oracle', 4, 2
  c.ved.selection, c.ved.leaf_ranking = 'ucb', 'value'
  registry = {**rollouts.ROLLOUTS, **simulator_oracle.ROLLOUTS}
  with pytest.raises(settings_lib.ConfigError, match='rl.rollout'):
    settings_lib.RlSettings.from_config(c)               # not a user-facing rollout
  settings = settings_lib.RlSettings.from_config(c, rollouts=registry)
  rng = np.random.default_rng(3)
  items = rng.normal(size=(len(p.item_codes), 4)).astype(np.float32)
  users = rng.normal(size=(2, 4)).astype(np.float32)
  inputs = rewards.RewardInputs(target=np.zeros((2, 3), np.int32),
                                target_item=np.zeros(2, np.int32), trie=p.trie, item_emb=items,
                                user_features=users)
  history = jnp.asarray(p.item_codes[:6].reshape(2, 3, 3))
  ro = jax.jit(lambda h, i: settings.rollout(params, p.trie, h, jnp.arange(2), jax.random.key(0),
                                             cfg=cfg, settings=settings, inputs=i))(history, inputs)
  assert isinstance(ro, rollouts.Rollout) and np.asarray(ro.valid).all()
  reward = np.asarray(rewards.candidate_items(p.trie, ro.candidates))
  true = 1 / (1 + np.exp(-np.einsum('bf,bgf->bg', users, items[reward])))
  np.testing.assert_allclose(ro.rank_score, true, rtol=1e-5)          # ranked by true reward
  assert (np.diff(np.asarray(ro.rank_score), axis=1) <= 0).all()
  assert (np.asarray(ro.forwards) <= ved_lib.budget(settings.ved, 3)).all()
  with pytest.raises(ValueError, match='user features and item vectors'):
    settings.rollout(params, p.trie, history, jnp.arange(2), jax.random.key(0), cfg=cfg,
                     settings=settings, inputs=inputs.replace(user_features=None))
