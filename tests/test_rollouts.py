"""Tests for vstar_jax.rl.rollouts: target injection (every group then holds the target once, in
its last slot; groups that already hit are untouched; the policy's own hit rate is reported
without the injected targets) and the sampled rollout."""

import types

import jax
import jax.numpy as jnp
import numpy as np

import test_sampling
from vstar_jax.rl import advantages
from vstar_jax.rl import rewards
from vstar_jax.rl import rollouts
from vstar_jax.rl import step as step_lib

TARGET = np.array([[1, 2, 3], [4, 5, 6], [7, 0, 1]], np.int32)
CAND = np.array([
    [[0, 0, 0], [1, 2, 3], [1, 2, 0], [5, 5, 5]],     # hits at slot 1
    [[4, 5, 0], [4, 0, 0], [1, 1, 1], [2, 2, 2]],     # misses, all valid
    [[7, 0, 2], [3, 3, 3], [-1, -1, -1], [-1, -1, -1]],  # misses, 2 valid (a short VED group)
], np.int32)
VALID = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]], bool)
SCORE = np.where(VALID, -np.arange(4, dtype=np.float32), -np.inf)


def rollout():
  return rollouts.Rollout.create(jnp.asarray(CAND), jnp.asarray(VALID), jnp.asarray(SCORE),
                                 jnp.full((3,), 9, jnp.int32))


def test_missing_targets_take_the_last_slot_and_hits_are_untouched():
  assert not np.asarray(rollout().injected).any()
  out = jax.jit(rollouts.inject_target)(rollout(), jnp.asarray(TARGET))
  assert isinstance(out, rollouts.Rollout)
  np.testing.assert_array_equal(out.injected, [False, True, True])
  np.testing.assert_array_equal(out.candidates[0], CAND[0])
  np.testing.assert_array_equal(out.valid[0], VALID[0])
  for user in (1, 2):
    np.testing.assert_array_equal(out.candidates[user, :3], CAND[user, :3])
    np.testing.assert_array_equal(out.candidates[user, 3], TARGET[user])
  np.testing.assert_array_equal(out.valid[2], [True, True, False, True])
  np.testing.assert_array_equal(out.rank_score, SCORE)
  np.testing.assert_array_equal(out.forwards, [9, 9, 9])
  hits = np.asarray(rewards.rule_reward(out.candidates, out.valid, jnp.asarray(TARGET)))
  np.testing.assert_array_equal(hits.sum(-1), [1, 1, 1])     # exactly one hit per group
  np.testing.assert_array_equal(rollouts.group_hit(CAND, VALID, TARGET), [True, False, False])


def test_every_injected_group_has_advantages_and_the_target_ranks_last():
  target = jnp.asarray(TARGET)
  plain = rewards.ranking_reward(rollout().candidates, rollout().valid, target, SCORE)
  assert not np.asarray(advantages.group_advantages(plain, rollout().valid))[1:].any()
  out = rollouts.inject_target(rollout(), target)
  reward = rewards.ranking_reward(out.candidates, out.valid, target, out.rank_score)
  rank = np.asarray(rewards.candidate_rank(out.rank_score, out.valid))
  assert rank[1, 3] == 3 and rank[2, 3] == 2                # the injected target ranks last
  np.testing.assert_allclose(reward[1, 3], 1.0)
  assert (np.asarray(reward)[1, :3] < 0).all()
  adv = np.asarray(advantages.group_advantages(reward, out.valid))
  assert (adv[:, :][np.asarray(out.valid)] != 0).all()


def test_rollout_hit_counts_the_policys_own_hits_only():
  target = jnp.asarray(TARGET)
  out = rollouts.inject_target(rollout(), target)
  reward = rewards.ranking_reward(out.candidates, out.valid, target, out.rank_score)
  scored = {'reward': reward, 'group_adv': advantages.group_advantages(reward, out.valid)}
  metrics = step_lib.rollout_metrics(out, scored, target, None)
  np.testing.assert_allclose(metrics['rollout_hit'], 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(metrics['target_injected'], 2 / 3, rtol=1e-6)
  np.testing.assert_allclose(metrics['nonzero_adv_groups'], 1.0)
  plain = step_lib.rollout_metrics(rollout(), scored, target, None)
  np.testing.assert_allclose(plain['rollout_hit'], 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(plain['target_injected'], 0.0)


def test_sample_rollout_is_g_sampled_sids_ranked_by_log_prob_at_beam_cost():
  ts = test_sampling
  settings = types.SimpleNamespace(group_size=8)
  ro = jax.jit(lambda h, u, k: rollouts.sample_rollout(ts.PARAMS, ts.TRIE, h, u, k, cfg=ts.CFG,
                                                       settings=settings))(
      ts.histories(2), jnp.arange(2), jax.random.key(0))
  codes, score = ts.draws(2, 8)
  np.testing.assert_array_equal(ro.candidates, codes)
  np.testing.assert_allclose(ro.rank_score, score, rtol=1e-6)
  assert np.asarray(ro.valid).all() and (np.asarray(ro.forwards) == 1 + 2 * 8).all()
  assert not np.asarray(ro.injected).any()
