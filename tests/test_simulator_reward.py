"""Tests for vstar_jax.rl.simulator_reward: the simulator's true preference as an RL reward."""

import jax
import numpy as np
import pytest

from vstar_jax.rl import rewards
from vstar_jax.rl import rollouts
from vstar_jax.rl import simulator_reward
from vstar_jax.sid import trie as trie_lib

ITEM_CODES = np.array([[0, 1], [1, 0], [1, 1]], np.int32)
ITEM_VECTORS = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
USERS = np.array([[2.0, 0.0], [0.0, -1.0]], np.float32)


def test_preference_is_the_true_reward_of_each_valid_candidate():
  # User 0: items 1, 2 and a SID that is no item; user 1: item 0 and an invalid slot.
  cand = np.array([[[1, 0], [1, 1], [0, 0]], [[0, 1], [0, 1], [-1, -1]]], np.int32)
  valid = np.array([[True, True, True], [True, False, False]])
  ro = rollouts.Rollout.create(cand, valid, np.zeros((2, 3), np.float32), np.zeros(2, np.int32))
  inputs = rewards.RewardInputs(target=np.zeros((2, 2), np.int32),
                                target_item=np.zeros(2, np.int32),
                                trie=trie_lib.build_trie(ITEM_CODES, 2), item_emb=ITEM_VECTORS,
                                user_features=USERS)
  reward = jax.jit(simulator_reward.REWARDS['preference'], static_argnums=2)(
      ro, inputs, rewards.DenseRewardConfig())
  sig = lambda x: 1 / (1 + np.exp(-x))
  np.testing.assert_allclose(reward, [[sig(0.0), sig(2.0), 0.0], [sig(0.0), 0.0, 0.0]],
                             rtol=1e-6)
  assert not set(simulator_reward.REWARDS) & set(rewards.REWARDS)
  with pytest.raises(ValueError, match='user features and item vectors'):
    simulator_reward.REWARDS['preference'](ro, inputs.replace(user_features=None), None)
