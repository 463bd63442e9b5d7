"""Tests for vstar_jax.rl.rewards on hand-built groups."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax.rl import rewards
from vstar_jax.rl import rollouts
from vstar_jax.sid import trie as trie_lib

TARGET = np.array([[1, 2, 3]], np.int32)
# Hit, L1+L2 match, L1 match, miss.
CAND = np.array([[[1, 2, 3], [1, 2, 0], [1, 0, 3], [0, 2, 3]]], np.int32)
SCORE = np.array([[0.5, 0.9, 0.1, 0.3]], np.float32)  # ranks: 1, 0, 3, 2
VALID = np.ones((1, 4), bool)


def _slot(rank):
  return 1.0 / np.log2(rank + 2.0)


@pytest.mark.parametrize('wrap', [lambda f: f, jax.jit], ids=['eager', 'jit'])
def test_rule_reward(wrap):
  got = wrap(rewards.rule_reward)(CAND, VALID, TARGET)
  np.testing.assert_array_equal(got, [[1.0, 0.0, 0.0, 0.0]])
  got = wrap(rewards.rule_reward)(CAND, np.array([[False, True, True, True]]), TARGET)
  np.testing.assert_array_equal(got, [[0.0, 0.0, 0.0, 0.0]])


def test_candidate_rank_descending_ties_by_index_ignoring_invalid():
  score = np.array([[0.2, 0.9, 0.2, 5.0, 0.1]], np.float32)
  valid = np.array([[True, True, True, False, True]])
  rank = rewards.candidate_rank(score, valid)
  np.testing.assert_array_equal(np.asarray(rank)[valid], [1, 0, 2, 3])


@pytest.mark.parametrize('wrap', [lambda f: f, jax.jit], ids=['eager', 'jit'])
def test_ranking_reward_hand_values(wrap):
  got = np.asarray(wrap(rewards.ranking_reward)(CAND, VALID, TARGET, SCORE))[0]
  table = _slot(np.arange(4))
  table = table / table.sum()
  # Candidate ranks are (1, 0, 3, 2); the hit (rank 1) takes 1 and no penalty.
  want = np.array([1.0, -table[0], -table[3], -table[2]])
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # The penalty table over the group's rank slots sums to -1: the penalties given plus
  # the hit's unused slot.
  np.testing.assert_allclose(got[1:].sum() - table[1], -1.0, rtol=1e-6)
  assert want[1] == pytest.approx(-1.0 / (1 + _slot(1) + _slot(2) + _slot(3)))


def test_ranking_reward_hit_at_rank_zero():
  # Hit at rank 0: the wrong candidates' penalties are the table minus its first entry.
  score = np.array([[0.9, 0.5, 0.3, 0.1]], np.float32)
  got = np.asarray(rewards.ranking_reward(CAND, VALID, TARGET, score))[0]
  table = _slot(np.arange(4))
  np.testing.assert_allclose(got[1:].sum(), -(table[1:].sum() / table.sum()), rtol=1e-6)


def test_ranking_reward_no_hit_group_is_zero():
  valid = np.array([[False, True, True, True]])  # the hit is padding
  got = rewards.ranking_reward(CAND, valid, TARGET, SCORE)
  np.testing.assert_array_equal(got, np.zeros((1, 4)))


def test_ranking_reward_padding_ignored():
  # A padded candidate with the best score and the target's SID changes nothing.
  cand = np.concatenate([CAND, TARGET[:, None, :]], axis=1)
  score = np.concatenate([SCORE, [[10.0]]], axis=1)
  valid = np.concatenate([VALID, [[False]]], axis=1)
  got = rewards.ranking_reward(cand, valid, TARGET, score)
  want = rewards.ranking_reward(CAND, VALID, TARGET, SCORE)
  np.testing.assert_allclose(got[:, :4], want, rtol=1e-6)
  assert float(got[0, 4]) == 0.0


def test_prefix_reward_without_embeddings():
  valid = np.array([[True, True, True, False]])
  level, total = rewards.prefix_reward(CAND, valid, TARGET)
  want = np.array([[[0.3, 0.5, 1.0], [0.3, 0.5, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.0]]])
  np.testing.assert_allclose(level, want, rtol=1e-6)
  np.testing.assert_allclose(total, [[1.8, 0.8, 0.3, 0.0]], rtol=1e-6)


def test_prefix_reward_cosine_penalty():
  item_emb = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [-1.0, 0.0]], np.float32)
  cand_item = np.array([[0, 1, 2, 3]], np.int32)
  target_item = np.array([0], np.int32)
  level, total = rewards.prefix_reward(CAND, VALID, TARGET, item_emb=item_emb,
                                       cand_item=cand_item, target_item=target_item)
  w = np.array([0.3, 0.5, 1.0])
  c1 = 1.0 - 1.0 / np.sqrt(2.0)  # 1 - cos for item 1
  want = np.array([[w,
                    [0.3, 0.5, -1.0 * c1],
                    [0.3, -0.5 * 1.0, -1.0 * 1.0],   # item 2 is orthogonal
                    [-0.3 * 2.0, -0.5 * 2.0, -1.0 * 2.0]]])  # item 3 is opposite
  np.testing.assert_allclose(level, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(total, want.sum(-1), rtol=1e-5, atol=1e-6)


def test_prefix_reward_rejects_wrong_number_of_weights():
  with pytest.raises(ValueError, match='3 level weights'):
    rewards.prefix_reward(CAND, VALID, TARGET, weights=(0.5, 1.0))


def test_value_targets_td_with_terminal_leaf():
  level = np.array([[[0.3, 0.5, 1.0], [0.3, 0.0, 0.0]]], np.float32)
  values = np.array([[[0.1, 0.2, 0.4, 0.8], [1.0, 2.0, 3.0, 4.0]]], np.float32)
  valid = np.array([[True, False]])
  got = rewards.value_targets(level, values, valid, gamma=0.99)
  want = np.array([[[0.99 * 0.2, 0.3 + 0.99 * 0.4, 0.5 + 0.99 * 0.8, 1.0],
                    [0.0, 0.0, 0.0, 0.0]]])
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_value_targets_are_constants_for_the_gradient():
  level = jnp.ones((1, 1, 3))
  values = jnp.arange(4.0).reshape(1, 1, 4)
  valid = jnp.ones((1, 1), bool)
  grad = jax.grad(lambda v: jnp.sum(rewards.value_targets(level, v, valid)))(values)
  chex.assert_trees_all_equal(grad, jnp.zeros_like(values))


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
  ro = rollouts.Rollout.create(cand, valid, np.zeros((1, 4), np.float32), np.zeros(1, np.int32))
  inputs = rewards.RewardInputs(target=target, target_item=target_item, trie=trie, item_emb=emb)
  dense_cfg = rewards.DenseRewardConfig(weights=(0.3, 0.5, 1.0), gamma=0.9,
                                        use_item_embeddings=True)
  targets_fn = jax.jit(rewards.dense_value_targets, static_argnums=3)
  got = targets_fn(ro, inputs, values, dense_cfg)
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
      rewards.candidate_items(trie, cand), [[0, 1, 2, -1]])
  # value_target 'rl_reward': the RL reward paid at the leaf, nothing on the way.
  reward = np.array([[1.0, 0.5, 0.2, 0.7]], np.float32)
  got = targets_fn(ro, inputs, values,
                   dataclasses.replace(dense_cfg, value_target='rl_reward'), reward)
  want[:3] = np.concatenate([0.9 * v[:3, 1:], reward[0, :3, None]], -1)
  np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-6)


def test_registry_rewards_read_the_rollout_and_its_inputs():
  """Each REWARDS entry is its array function on (Rollout, RewardInputs); the simulator's
  'preference' is not among them (rl.simulator_reward)."""
  ro = rollouts.Rollout.create(CAND, VALID, SCORE, np.zeros(1, np.int32))
  inputs = rewards.RewardInputs(target=TARGET, target_item=np.zeros(1, np.int32),
                                trie=trie_lib.build_trie(CAND[0], 4))
  want = {'rule': rewards.rule_reward(CAND, VALID, TARGET),
          'ranking': rewards.ranking_reward(CAND, VALID, TARGET, SCORE),
          'prefix': rewards.prefix_reward(CAND, VALID, TARGET)[1]}
  want['ranking+prefix'] = want['ranking'] + want['prefix']
  assert set(rewards.REWARDS) == set(want)
  for name, fn in rewards.REWARDS.items():
    got = jax.jit(fn, static_argnums=2)(ro, inputs, rewards.DenseRewardConfig())
    np.testing.assert_allclose(got, want[name], rtol=1e-6, err_msg=name)
