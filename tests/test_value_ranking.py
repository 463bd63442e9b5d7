"""What value pretraining reports about the one node whose target is the reward (issue 31, item 2).

value_loss averages V over the L+1 nodes of each path, L of them bootstrapped on V itself, so a
value head that learned nothing about the leaves can still show a low value_loss
(docs/results/simulator.md, "Why a catalogue-fitted value head ranks nothing"); the step also
reports value_loss_leaf, V of the whole SID against the reward alone.
"""

import jax
import jax.numpy as jnp
import numpy as np

import test_loss_value_grad
from vstar_jax import parallel
from vstar_jax.data import batching
from vstar_jax.model import policy
from vstar_jax.rl import rewards
from vstar_jax.rl import rollouts
from vstar_jax.rl import value_pretrain

B, G, L, K, F = 4, 5, 3, 4, test_loss_value_grad.F


def test_value_step_reports_the_leaf_loss_apart_from_the_bootstrapped_nodes():
  rng = np.random.default_rng(0)
  params = test_loss_value_grad._params(rng)  # pylint: disable=protected-access
  cand = rng.integers(0, K, size=(B, G, L)).astype(np.int32)
  valid = rng.random((B, G)) < 0.8
  reward = rng.uniform(size=(B, G)).astype(np.float32)

  def rollout_fn(params, trie, history, user_index, key, inputs=None):
    del params, trie, history, key, inputs
    return rollouts.Rollout.create(jnp.asarray(cand)[user_index], jnp.asarray(valid)[user_index],
                                   jnp.zeros((B, G)), jnp.zeros((B,), jnp.int32))

  def reward_fn(ro, inputs):
    del inputs
    return jnp.where(ro.valid, jnp.asarray(reward), 0.0)

  mesh = parallel.make_mesh(jax.devices()[:1])
  dense = rewards.DenseRewardConfig(value_target='rl_reward')
  trainer = value_pretrain.make_value_step(test_loss_value_grad.headed_policy, rollout_fn,
                                           reward_fn, dense, 1e-3, 1.0, mesh)
  batch = batching.UserBatch(history=rng.normal(size=(B, F)).astype(np.float32),
                             target=np.zeros((B, L), np.int32), target_item=np.zeros(B, np.int32),
                             user_index=np.arange(B, dtype=np.int32))
  opt_state = trainer.optimizer.init(value_pretrain.heads_of(params))
  _, _, metrics = trainer.step(params, opt_state, parallel.shard_batch(batch, mesh), None, None,
                               jax.random.key(0))
  _, values, _ = test_loss_value_grad.headed_policy(
      params, policy.Candidates(history=batch.history, cand=cand, valid=valid))
  leaf = np.asarray(values)[..., -1]
  expected = np.sum(np.where(valid, (leaf - reward) ** 2, 0)) / valid.sum()
  np.testing.assert_allclose(metrics['value_loss_leaf'], expected, rtol=1e-5)
  assert not np.isclose(metrics['value_loss_leaf'], metrics['value_loss'])
