"""Value- and Q-head pretraining on rollouts of the frozen SFT policy (paper Sec. 4.1).

VED ranks nodes and leaves by V, Q and G(s) = V(s) + lambda*H(s) (Eq. 11), so the heads
must mean something before RL starts: SFT never trains them. Here only the heads
(model.value_head.HEADS: params['value_head'], params['q_head']) learn (the loss is
differentiated w.r.t. those subtrees alone, so the backbone and the policy are frozen) on
the candidates of the rollout users (the RL holdout: rows the SFT policy has not fit),
regressing V at every node of each candidate's path (depths 0..L) and Q(y_<l, y_l) onto
one-step TD targets built from the dense per-level prefix reward (rewards.prefix_reward,
gamma = 0.99; with rl.value_target='rl_reward', from the RL reward paid at the leaf). The RL
loop's value loss uses the same targets (rewards.dense_value_targets) and the same losses
(rl.loss.head_losses), so pretraining and RL optimise one objective.

Like the RL iteration, `value_step` runs per device under `jax.shard_map` over the
'data' axis (users sharded, params replicated, head grads psum-ed as in rl.loss).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from vstar_jax import parallel
from vstar_jax.data import batching
from vstar_jax.model import policy
from vstar_jax.model import value_head
from vstar_jax.rl import loss as loss_lib
from vstar_jax.rl import rewards
from vstar_jax.rl import rollouts
from vstar_jax.sid import trie as trie_lib

HEADS = value_head.HEADS
# What the value heads learn from (config.rl.value_coverage; docs/method.md, "Value coverage").
COVERAGES = ('rollouts', 'catalogue')

# (params, trie, history [B, T, L], user_index [B], key, inputs=RewardInputs) -> rollouts.Rollout.
RolloutFn = Callable[..., rollouts.Rollout]
# (rollout, reward inputs) -> reward [B, G]: an rl.rewards.RewardFn, its DenseRewardConfig bound.
RewardFn = Callable[[rollouts.Rollout, rewards.RewardInputs], jnp.ndarray]


def catalogue_candidates(params, trie: trie_lib.Trie, history, user_index, key,
                         inputs=None) -> rollouts.Rollout:
  """Every catalogue SID as a candidate of every user: a Rollout for value training.

  The value heads then see every branch of the trie, not only those the policy's own rollouts
  reach (V-STAR's premise is a value that points into branches the policy prunes). Costs no
  search, but one teacher-forced pass over [B, N] candidates (N = trie nodes; the non-leaf
  nodes are masked invalid). Only for rewards a candidate's SID alone determines (not the
  rank-based `ranking`).

  Returns:
    candidates [B, N, L] int32 (-1 for non-leaf nodes), valid [B, N] bool, rank_score [B, N]
    zeros, forwards [B] zeros (no search).
  """
  del params, user_index, key, inputs
  batch, num_levels = history.shape[0], trie.num_levels
  leaf = trie.depth == num_levels                                           # [N]
  cand = jnp.where(leaf[:, None], trie.prefix, -1)                          # [N, L]
  cand = jnp.broadcast_to(cand[None], (batch,) + cand.shape)
  valid = jnp.broadcast_to(leaf[None], (batch, leaf.shape[0]))
  return rollouts.Rollout.create(cand, valid, jnp.zeros(valid.shape, jnp.float32),
                                 jnp.zeros((batch,), jnp.int32))


def heads_of(params) -> dict:
  """The params subtrees of the value heads (what pretraining trains)."""
  return {name: params[name] for name in HEADS}


def _value_step_shard(params, opt_state, batch: batching.UserBatch, trie, item_emb, key, *,
                      policy_fn, rollout_fn, reward_fn, dense_cfg: rewards.DenseRewardConfig,
                      optimizer, axis_name: str):
  """Per-device: rollout, TD targets from the current V, one Adam step on the heads."""
  inputs = rewards.RewardInputs.of(batch, trie, item_emb)
  ro = rollout_fn(params, trie, batch.history, batch.user_index, key, inputs=inputs)
  candidates = policy.Candidates(history=batch.history, cand=ro.candidates, valid=ro.valid)
  reward = reward_fn(ro, inputs)

  def loss_fn(heads):
    _, values, q = policy_fn({**params, **heads}, candidates)
    targets = rewards.dense_value_targets(ro, inputs, values, dense_cfg, reward)
    value, q_loss = loss_lib.head_losses(values, q, targets, ro.valid, axis_name)
    # V of the whole SID alone: the only node whose target is the reward itself, not a
    # bootstrap on V (value_loss averages it with the L bootstrapped nodes, which V can fit
    # by being self-consistent: a low value_loss does not say V ranks anything).
    leaf = parallel.global_mean((values[..., -1] - targets[..., -1]) ** 2, ro.valid, axis_name)
    return value + q_loss, {'value_loss': value, 'q_loss': q_loss, 'value_loss_leaf': leaf}

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(heads_of(params))
  grads = lax.psum(grads, axis_name)
  updates, opt_state = optimizer.update(grads, opt_state, heads_of(params))
  params = {**params, **optax.apply_updates(heads_of(params), updates)}
  metrics = lax.psum(metrics, axis_name)
  metrics['grad_norm'] = optax.tree.norm(grads)
  return params, opt_state, metrics


@dataclasses.dataclass(frozen=True)
class ValueTrainer:
  """The jitted value step and the head optimizer it applies (whose state `pretrain` creates).

  step(params, opt_state, batch, trie, item_emb, key) -> (params, opt_state, metrics).
  """
  step: Callable
  optimizer: optax.GradientTransformation


def make_value_step(policy_fn: loss_lib.PolicyFn, rollout_fn: RolloutFn, reward_fn: RewardFn,
                    dense_cfg: rewards.DenseRewardConfig, lr: float, clip_norm: float,
                    mesh: Mesh) -> ValueTrainer:
  """The sharded value step: rollout, TD targets, one clipped-Adam step on the value heads.

  `batch` is a data.batching.UserBatch (its user_index, the row's position in the global
  batch, seeds its rollout), sharded over the mesh's 'data' axis; params, the heads'
  optimizer state, trie, item_emb and key are replicated. reward_fn(rollout, inputs) is the
  RL reward (for value targets 'rl_reward'). Only the HEADS subtrees change; metrics:
  value_loss, q_loss, value_loss_leaf (V of the whole SID alone; before the step) and
  grad_norm.
  """
  optimizer = optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(lr))
  body = functools.partial(_value_step_shard, policy_fn=policy_fn, rollout_fn=rollout_fn,
                           reward_fn=reward_fn, dense_cfg=dense_cfg, optimizer=optimizer,
                           axis_name=parallel.DATA_AXIS)
  step = jax.jit(jax.shard_map(body, mesh=mesh,
                               in_specs=(P(), P(), P(parallel.DATA_AXIS), P(), P(), P()),
                               out_specs=(P(), P(), P()), check_vma=False))
  return ValueTrainer(step=step, optimizer=optimizer)


def pretrain(trainer: ValueTrainer, params: Any, batches: Iterable[batching.UserBatch],
             trie: trie_lib.Trie, item_emb, key: jax.Array, mesh: Mesh,
             log_fn: Optional[Callable[[int, dict], None]] = None) -> tuple[Any, list[float]]:
  """Runs the value step once per batch; returns params with the trained head and the losses.

  Args:
    trainer: from make_value_step.
    params: the policy params (replicated); only the value head is trained.
    batches: sharded batches (see make_value_step), one per step.
    trie, item_emb: replicated, passed through to the rollouts and targets.
    key: PRNG key; step i uses fold_in(key, i).
    mesh: the mesh of the step (the head's optimizer state is replicated on it).
    log_fn: called as log_fn(step, metrics) with host metrics after each step.
  """
  opt_state = parallel.replicate(trainer.optimizer.init(heads_of(params)), mesh)
  losses = []
  for i, batch in enumerate(batches):
    params, opt_state, metrics = trainer.step(params, opt_state, batch, trie, item_emb,
                                              jax.random.fold_in(key, i))
    metrics = jax.device_get(metrics)
    losses.append(float(metrics['value_loss']))
    if log_fn is not None:
      log_fn(i + 1, metrics)
  return params, losses
