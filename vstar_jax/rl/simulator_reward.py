"""The known-reward simulator's reward: each candidate's true preference (data.simulator).

Not a user-facing reward: logged data has no hidden user and item vectors. REWARDS has the
signature of rl.rewards.REWARDS; the simulator benchmarks run RL with
`{**rewards.REWARDS, **simulator_reward.REWARDS}` (rl.settings.RlSettings.from_config(...,
rewards=...), rl.loop.train(..., rewards=...)). Its reward reads no logged target.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vstar_jax.rl import rewards
from vstar_jax.rl import rollouts
from vstar_jax.sid import trie as trie_lib


def preference_reward(cand: jnp.ndarray, valid: jnp.ndarray, user_features: jnp.ndarray,
                      item_emb: jnp.ndarray, trie: trie_lib.Trie) -> jnp.ndarray:
  """The true preference sigmoid(u . v_item) of each candidate: [B, G] float32.

  Args:
    cand: [B, G, L]; valid: [B, G]; user_features: [B, F] hidden user vectors u;
    item_emb: [I, F] hidden item vectors v (data.simulator.World); trie: the catalogue trie.
  """
  items = rewards.candidate_items(trie, cand)
  vectors = item_emb[jnp.maximum(items, 0)]                                 # [B, G, F]
  score = jax.nn.sigmoid(jnp.einsum('bf,bgf->bg', user_features, vectors))
  return jnp.where(valid & (items >= 0), score, 0.0)


def _preference(ro: rollouts.Rollout, inputs: rewards.RewardInputs, dense_cfg) -> jnp.ndarray:
  del dense_cfg
  if inputs.item_emb is None or inputs.user_features is None:
    raise ValueError("reward 'preference' needs the simulator's user features and item vectors")
  return preference_reward(ro.candidates, ro.valid, inputs.user_features, inputs.item_emb,
                           inputs.trie)


REWARDS: dict[str, rewards.RewardFn] = {'preference': _preference}
