"""An oracle value for VED in the known-reward simulator: V and Q from the world's true rewards.

Not a user-facing search: logged data has no hidden user and item vectors. It separates "the
search cannot use a good value" from "the value is not learned" (docs/results/simulator.md,
"Search or value?"): VED (decode.ved) runs unchanged, on the policy's own forwards and
log-probs, but the V(s) and Q(s, .) its selection rule and leaf ranking read come from the
true rewards r(u, i) = sigmoid(u . v_i) of the items under each prefix instead of the value
heads:

  * `max`:  V(s) = max_{i under s} r(u, i), the return of the best continuation (V*);
  * `mean`: V(s) = the mean of r(u, i) over the items under s (a uniform continuation).

Q(s, c) is the same value of the child s.c, so at depth L-1 Q is each leaf's own reward under
both, and value-ranked leaves are the group's items by true reward. `with_oracle` wraps a
model's root_fn / expand_fn (model.policy.ved_policy): the tree node's embedding carries its
trie node beside the model's state (`OracleEmbedding`), every output is a fixed-shape gather
from a [B, N] table of node values (`node_values`), so the search stays one jitted program.

ROLLOUTS has the signature of rl.rollouts.ROLLOUTS (the batch's rewards.RewardInputs carry
the user vectors and the item vectors); the simulator benchmarks run RL with
`{**rollouts.ROLLOUTS, **simulator_oracle.ROLLOUTS}` (loop.train(..., rollouts=...)).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from vstar_jax.decode import ved as ved_lib
from vstar_jax.decode import ved_tree
from vstar_jax.model import backbone
from vstar_jax.model import expansion as expansion_lib
from vstar_jax.rl import rewards
from vstar_jax.rl import rollouts
from vstar_jax.sid import trie as trie_lib

REDUCTIONS = ('max', 'mean')


@flax.struct.dataclass
class OracleEmbedding:
  """A VED node's state under the oracle.

  Attributes:
    model: the model's own embedding of the node ([B, M, ...] leaves).
    node: [B, M] int32, the node's trie node (what its oracle value is read from).
  """
  model: Any
  node: jnp.ndarray


def node_values(trie: trie_lib.Trie, leaf_reward: jnp.ndarray, reduction: str) -> jnp.ndarray:
  """The oracle value of every trie node per user: [B, N] float32.

  Args:
    trie: the catalogue trie (N nodes).
    leaf_reward: [B, N] float32, each user's reward of the item at every depth-L node (read
      only there).
    reduction: 'max' (best item under the node) or 'mean' (mean over the items under it).
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f'reduction must be one of {REDUCTIONS}, got {reduction!r}')
  is_leaf = trie.depth == trie.num_levels                                    # [N]
  children = trie.children                                                   # [N, K]
  has = children >= 0
  safe = jnp.maximum(children, 0)
  total = jnp.where(is_leaf, leaf_reward, 0.0)                               # [B, N]
  count = jnp.broadcast_to(is_leaf.astype(jnp.float32), total.shape)
  best = jnp.where(is_leaf, leaf_reward, -jnp.inf)
  for _ in range(trie.num_levels):   # one level of the trie per pass, leaves upwards
    total = jnp.where(is_leaf, total, jnp.sum(jnp.where(has, total[:, safe], 0.0), -1))
    count = jnp.where(is_leaf, count, jnp.sum(jnp.where(has, count[:, safe], 0.0), -1))
    best = jnp.where(is_leaf, best, jnp.max(jnp.where(has, best[:, safe], -jnp.inf), -1))
  if reduction == 'max':
    return best
  return total / jnp.maximum(count, 1.0)


def preference_values(trie: trie_lib.Trie, user_features: jnp.ndarray, item_vectors: jnp.ndarray,
                      reduction: str) -> jnp.ndarray:
  """node_values of the simulator's true preference: users [B, F], items [I, F] -> [B, N]."""
  leaf_item = jnp.maximum(trie.leaf_items[:, 0], 0)                          # [N]
  leaf_reward = jax.nn.sigmoid(user_features @ item_vectors[leaf_item].T)    # [B, N]
  return node_values(trie, leaf_reward, reduction)


def with_oracle(root_fn: ved_tree.RootFn, expand_fn: ved_tree.ExpandFn, trie: trie_lib.Trie,
                values: jnp.ndarray) -> tuple[ved_tree.RootFn, ved_tree.ExpandFn]:
  """VED callbacks whose V and Q are read from `values` [B, N] (node_values), the log-probs and
  the forwards still the model's."""
  trie = jax.tree.map(jnp.asarray, trie)

  def oracle(out: expansion_lib.Expansion, node: jnp.ndarray) -> expansion_lib.Expansion:
    children = trie.children[jnp.maximum(node, 0)]                           # [B, M, K]
    child_values = jax.vmap(lambda v, c: v[c])(values, jnp.maximum(children, 0))
    return expansion_lib.Expansion(
        log_probs=out.log_probs,
        value=jnp.take_along_axis(values, jnp.maximum(node, 0), axis=1),
        child_values=jnp.where(children >= 0, child_values, 0.0),
        embedding=OracleEmbedding(model=out.embedding, node=node))

  def oracle_root_fn():
    out = root_fn()
    return oracle(out, jnp.zeros(out.value.shape, jnp.int32))

  def oracle_expand_fn(path_states: OracleEmbedding, code, parent_depth):
    parent = jnp.take_along_axis(path_states.node, parent_depth[..., None], axis=-1)[..., 0]
    out = expand_fn(path_states.model, code, parent_depth)
    return oracle(out, trie_lib.step(trie, parent, code))

  return oracle_root_fn, oracle_expand_fn


def oracle_ved(params, cfg, trie: trie_lib.Trie, history, keys, vcfg: ved_lib.VedConfig,
               user_features, item_vectors, reduction: str) -> ved_lib.VedOutput:
  """VED of the policy (params, cfg) for users history [B, T, L] with per-user keys [B], its V and
  Q the oracle's (preference_values of user_features [B, F] and item_vectors [I, F])."""
  trie = jax.tree.map(jnp.asarray, trie)
  root_fn, expand_fn = backbone.ved_policy(params, cfg, history)
  values = preference_values(trie, user_features, item_vectors, reduction)
  root_fn, expand_fn = with_oracle(root_fn, expand_fn, trie, values)
  return ved_lib.ved(root_fn, expand_fn, trie, keys, vcfg)


def _oracle_rollout(reduction: str) -> rollouts.RolloutFn:
  def rollout(params, trie, history, user_index, key, *, cfg, settings,
              inputs: rewards.RewardInputs) -> rollouts.Rollout:
    if inputs is None or inputs.item_emb is None or inputs.user_features is None:
      raise ValueError('the oracle rollout needs the simulator\'s user features and item vectors')
    out = oracle_ved(params, cfg, trie, history, rollouts.user_keys(key, user_index), settings.ved,
                     inputs.user_features, inputs.item_emb, reduction)
    return rollouts.Rollout.create(out.candidates, out.valid, out.scores, out.num_forwards)
  rollout.__name__ = f'oracle_ved_{reduction}'
  return rollout


# VED with the oracle value (V-STAR's search given the true value): rl.rollout='ved_oracle'.
ROLLOUTS: dict[str, rollouts.RolloutFn] = {'ved_oracle': _oracle_rollout('max'),
                                           'ved_oracle_mean': _oracle_rollout('mean')}
