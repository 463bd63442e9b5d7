"""Rewards of a group of candidate SIDs and the value head's TD targets (docs/method.md, Rewards).

MiniOneRec's `rule` and `ranking` rewards, V-STAR's dense per-level `prefix` reward (paper
Sec. 4.1) and the TD targets built from it. All functions are pure jnp over fixed shapes: a
group is G candidates of one user, `cand: [B, G, L] int32`, with `valid: [B, G] bool`
marking real candidates (VED may return fewer than G leaves; padding is never rewarded and
never counted).

REWARDS maps each `--config.rl.reward` name to a function of one signature,
`reward(rollout: rollouts.Rollout, inputs: RewardInputs, dense_cfg: DenseRewardConfig)
-> [B, G] float32`, so a new reward is one function and one registry entry. Every reward here
scores the candidates against each user's logged target; the known-reward simulator's true
preference, which reads no target, lives in rl.simulator_reward, and a run chooses its
registry (rl.settings.RlSettings.from_config(..., rewards=...)).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from vstar_jax.data import batching
from vstar_jax.rl import rollouts
from vstar_jax.sid import trie as trie_lib

PREFIX_WEIGHTS = (0.3, 0.5, 1.0)
GAMMA = 0.99


def prefix_match(cand: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """Whether each candidate matches the target's first l+1 codes: -> [B, G, L] bool.

  Args:
    cand: [B, G, L] int32 candidate SIDs.
    target: [B, L] int32 target SIDs.
  """
  return jnp.cumprod(cand == target[:, None, :], axis=-1).astype(bool)


def rule_reward(cand: jnp.ndarray, valid: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """MiniOneRec `rule` reward: 1 for an exact SID match, else 0: -> [B, G] float32."""
  return (prefix_match(cand, target)[..., -1] & valid).astype(jnp.float32)


def candidate_rank(rank_score: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
  """Rank of each valid candidate in descending `rank_score` order: -> [B, G] int32.

  Ties go to the lower candidate index; invalid candidates neither take a rank nor
  push others down (their own rank is meaningless and masked by callers).

  Args:
    rank_score: [B, G] float, higher is better (beam score, VED value or log-prob).
    valid: [B, G] bool.
  """
  s_self = rank_score[:, :, None]
  s_other = rank_score[:, None, :]
  index = jnp.arange(rank_score.shape[1])
  lower_index = index[None, :] < index[:, None]
  ahead = (s_other > s_self) | ((s_other == s_self) & lower_index)
  return jnp.sum(ahead & valid[:, None, :], axis=-1).astype(jnp.int32)


def ranking_reward(cand: jnp.ndarray, valid: jnp.ndarray, target: jnp.ndarray,
                   rank_score: jnp.ndarray) -> jnp.ndarray:
  """MiniOneRec `ranking` reward: rule + NDCG-style rank penalty for wrong candidates.

  As in MiniOneRec's `ndcg_rule_reward`, the penalty table over the group's rank slots
  is -1/log2(r+2) normalized to sum to -1 (here over the n valid slots r = 0..n-1, so
  with all G valid it is MiniOneRec's table exactly). A wrong candidate takes the entry
  of its rank, the hit takes none (its slot's share is dropped, so the penalties given
  sum to -1 + share(hit rank)), and a group without a hit gets all zeros. A candidate's
  rank is its position among the group's valid candidates by descending `rank_score`
  (beam score for beam search; VED's leaf ranking score for VED).

  Args:
    cand: [B, G, L] int32.
    valid: [B, G] bool.
    target: [B, L] int32.
    rank_score: [B, G] float, higher is better.

  Returns:
    [B, G] float32 rewards; 0 for invalid candidates.
  """
  hit = rule_reward(cand, valid, target)
  slot_weight = 1.0 / jnp.log2(candidate_rank(rank_score, valid).astype(jnp.float32) + 2.0)
  slot_weight = jnp.where(valid, slot_weight, 0.0)
  table_sum = jnp.sum(slot_weight, axis=-1, keepdims=True)
  penalty = -slot_weight / jnp.maximum(table_sum, 1e-12)
  any_hit = jnp.any(hit > 0, axis=-1, keepdims=True)
  return hit + jnp.where(any_hit & valid & (hit == 0), penalty, 0.0)


def _cosine(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Cosine similarity over the last axis."""
  norm = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
  return jnp.sum(a * b, axis=-1) / jnp.maximum(norm, 1e-12)


def prefix_reward(cand: jnp.ndarray, valid: jnp.ndarray, target: jnp.ndarray,
                  weights: Sequence[float] = PREFIX_WEIGHTS,
                  item_emb: Optional[jnp.ndarray] = None,
                  cand_item: Optional[jnp.ndarray] = None,
                  target_item: Optional[jnp.ndarray] = None):
  """V-STAR dense per-level reward (Sec. 1.2 value-head targets), also a scalar reward.

  Level l pays w_l when the candidate matches the target's first l+1 codes; otherwise a
  penalty -w_l * (1 - cos(emb(pred item), emb(target item))) as in the V-STAR reference.
  Without item embeddings the penalty is 0 (a miss earns nothing: the reward is then
  sum_l w_l * match_l, which still orders candidates by matched depth).

  Args:
    cand: [B, G, L] int32.
    valid: [B, G] bool.
    target: [B, L] int32.
    weights: L per-level weights w_l.
    item_emb: optional [I, D] float item embeddings.
    cand_item: [B, G] int32 item id of each candidate (needed with item_emb).
    target_item: [B] int32 item id of each target (needed with item_emb).

  Returns:
    (level_rewards [B, G, L] float32, total [B, G] float32) where total is the
    undiscounted sum over levels (exact hit: sum(w) = 1.8 with the default weights);
    invalid candidates get 0 everywhere.
  """
  num_levels = cand.shape[-1]
  if len(weights) != num_levels:
    raise ValueError(f'prefix_reward needs {num_levels} level weights, got {tuple(weights)}')
  w = jnp.asarray(weights, jnp.float32)
  match = prefix_match(cand, target)
  if item_emb is None:
    miss = jnp.zeros(match.shape, jnp.float32)
  else:
    if cand_item is None or target_item is None:
      raise ValueError('prefix_reward with item_emb needs cand_item and target_item')
    num_items = item_emb.shape[0]
    pred = item_emb[jnp.clip(cand_item, 0, num_items - 1)]
    true = item_emb[jnp.clip(target_item, 0, num_items - 1)][:, None, :]
    miss = jnp.broadcast_to(-w * (1.0 - _cosine(pred, true))[..., None], match.shape)
  level = jnp.where(match, w, miss) * valid[..., None]
  return level, jnp.sum(level, axis=-1)


def value_targets(level_rewards: jnp.ndarray, values: jnp.ndarray, valid: jnp.ndarray,
                  gamma: float = GAMMA) -> jnp.ndarray:
  """One-step TD targets for the value head along each candidate's path (Sec. 1.2).

  Node d (d = 0..L) is the candidate's prefix of length d, and V(node d) is the return
  from the rewards collected *at* that node onward: reaching node d (d >= 1) pays the
  level reward r_{d-1}, so
    target[0] = gamma * V[1]                  (the root pays nothing),
    target[d] = r_{d-1} + gamma * V[d+1]      for 1 <= d < L,
    target[L] = r_{L-1}                       (terminal: nothing follows a full SID).
  This makes a leaf's value its own reward, so VED can rank leaves by V. The bootstrap
  values are treated as constants.

  Args:
    level_rewards: [B, G, L] float per-level rewards (e.g. from `prefix_reward`).
    values: [B, G, L+1] float value estimates at nodes 0..L.
    valid: [B, G] bool.
    gamma: discount.

  Returns:
    [B, G, L+1] float32 targets; 0 for invalid candidates.
  """
  bootstrap = jax.lax.stop_gradient(values[..., 1:]).astype(jnp.float32)
  next_value = jnp.concatenate([bootstrap[..., 1:], jnp.zeros_like(bootstrap[..., :1])], -1)
  collected = jnp.concatenate([jnp.zeros_like(bootstrap[..., :1]),
                               level_rewards.astype(jnp.float32)], -1)
  targets = collected + gamma * jnp.concatenate([bootstrap[..., :1], next_value], -1)
  return targets * valid[..., None]


@dataclasses.dataclass(frozen=True)
class DenseRewardConfig:
  """How the dense prefix reward and the value heads' TD targets are built (static).

  Attributes:
    weights: per-level prefix reward weights w_l.
    gamma: TD discount.
    use_item_embeddings: a miss at level l costs -w_l * (1 - cos(emb(pred), emb(target)))
      instead of 0 (needs item embeddings).
    value_target: what the value heads learn to predict (config.rl.value_target):
      'dense_prefix', the dense per-level prefix reward (paper Sec. 4.1: rewards that come
      from matching a logged target), or 'rl_reward', the RL reward itself, paid at the leaf
      (rewards with no target to match, such as the simulator's true preference).
  """
  weights: tuple = PREFIX_WEIGHTS
  gamma: float = GAMMA
  use_item_embeddings: bool = False
  value_target: str = 'dense_prefix'


VALUE_TARGETS = ('dense_prefix', 'rl_reward')


@flax.struct.dataclass
class RewardInputs:
  """What a reward reads besides the rollout (the batch's side of the scoring).

  Attributes:
    target: [B, L] int32, each user's logged target SID.
    target_item: [B] int32, the target's item id.
    trie: the catalogue trie (candidate SID -> item).
    item_emb: [I, D] float32 item vectors, or None (the prefix reward's miss penalty with
      use_item_embeddings; the simulator's hidden item vectors).
    user_features: [B, F] float32, or None (the simulator's hidden user vectors).
  """
  target: jnp.ndarray
  target_item: jnp.ndarray
  trie: trie_lib.Trie
  item_emb: Optional[jnp.ndarray] = None
  user_features: Optional[jnp.ndarray] = None

  @classmethod
  def of(cls, batch: batching.UserBatch, trie: trie_lib.Trie,
         item_emb: Optional[jnp.ndarray]) -> RewardInputs:
    """The reward inputs of a user batch."""
    return cls(target=batch.target, target_item=batch.target_item, trie=trie, item_emb=item_emb,
               user_features=batch.user_features)


def candidate_items(trie: trie_lib.Trie, cand: jnp.ndarray) -> jnp.ndarray:
  """Item id of each candidate SID [B, G, L] -> [B, G] int32 (first of a collision group; -1 if none)."""
  node = trie_lib.lookup(trie, cand)
  return jnp.where(node >= 0, trie.leaf_items[jnp.maximum(node, 0), 0], -1)


def dense_level_rewards(ro: rollouts.Rollout, inputs: RewardInputs, dense_cfg: DenseRewardConfig):
  """prefix_reward of the rollout's candidates as configured: (level [B, G, L], total [B, G]).

  Reads inputs.item_emb only with dense_cfg.use_item_embeddings (then required).
  """
  cand, valid, target = ro.candidates, ro.valid, inputs.target
  if not dense_cfg.use_item_embeddings:
    return prefix_reward(cand, valid, target, dense_cfg.weights)
  return prefix_reward(cand, valid, target, dense_cfg.weights, inputs.item_emb,
                       candidate_items(inputs.trie, cand), inputs.target_item)


def dense_value_targets(ro: rollouts.Rollout, inputs: RewardInputs, values: jnp.ndarray,
                        dense_cfg: DenseRewardConfig,
                        reward: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """TD targets [B, G, L+1] for V along each candidate's path; `values` [B, G, L+1] bootstrap.

  The per-level rewards are the dense prefix reward, or (value_target 'rl_reward') the RL
  reward [B, G] paid at the leaf only.
  """
  if dense_cfg.value_target == 'rl_reward':
    level = jnp.zeros(ro.candidates.shape, jnp.float32).at[..., -1].set(reward * ro.valid)
  else:
    level, _ = dense_level_rewards(ro, inputs, dense_cfg)
  return value_targets(level, values, ro.valid, dense_cfg.gamma)


def _rule(ro: rollouts.Rollout, inputs: RewardInputs, dense_cfg) -> jnp.ndarray:
  del dense_cfg
  return rule_reward(ro.candidates, ro.valid, inputs.target)


def _ranking(ro: rollouts.Rollout, inputs: RewardInputs, dense_cfg) -> jnp.ndarray:
  del dense_cfg
  return ranking_reward(ro.candidates, ro.valid, inputs.target, ro.rank_score)


def _prefix(ro: rollouts.Rollout, inputs: RewardInputs, dense_cfg) -> jnp.ndarray:
  return dense_level_rewards(ro, inputs, dense_cfg)[1]


def _ranking_and_prefix(ro: rollouts.Rollout, inputs: RewardInputs, dense_cfg) -> jnp.ndarray:
  """ranking + prefix: a hit's ranking signal, plus graded credit for prefixes in no-hit groups."""
  return _ranking(ro, inputs, dense_cfg) + _prefix(ro, inputs, dense_cfg)


# (rollout, reward inputs, DenseRewardConfig) -> reward [B, G] float32.
RewardFn = Callable[[rollouts.Rollout, RewardInputs, DenseRewardConfig], jnp.ndarray]
REWARDS: dict[str, RewardFn] = {'rule': _rule, 'ranking': _ranking, 'prefix': _prefix,
                                'ranking+prefix': _ranking_and_prefix}
