"""One RL iteration as one jitted program: rollout -> rewards and advantages -> PPO updates.

The program runs per device under `jax.shard_map` over the 'data' mesh axis (users sharded,
params replicated, check_vma=False; see vstar_jax.parallel):
  1. rollout: G candidates per user from the current policy (settings.rollout, resolved in
     rl.rollouts.ROLLOUTS or the registry the run was given);
  2. score: the configured reward (settings.reward, resolved in rl.rewards.REWARDS or the
     registry the run was given), group (GRPO) and sibling advantages (paper Sec. 4.3,
     Eq. 15-18) or their alpha-blend, old log-probs and the value head's TD targets under the
     rollout policy;
  3. update: `updates_per_rollout` PPO-clipped steps of rl.loss.rl_loss (Eq. 19 + GRPO + KL +
     value MSE).
The data cursor (epoch, batch index) is advanced on the host (rl.loop), never in here.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from vstar_jax import parallel
from vstar_jax.data import batching
from vstar_jax.decode import search
from vstar_jax.model import backbone
from vstar_jax.model import policy
from vstar_jax.rl import advantages
from vstar_jax.rl import loss as loss_lib
from vstar_jax.rl import rewards
from vstar_jax.rl import rollouts
from vstar_jax.rl import settings as settings_lib
from vstar_jax.rl import value_pretrain
from vstar_jax.sid import trie as trie_lib
from vstar_jax.train import sft
from vstar_jax.train import state as state_lib


@flax.struct.dataclass
class RlState:
  """Everything an RL run must carry across iterations and restarts (checkpointed whole).

  Attributes:
    step: [] int32, iterations done.
    params: the policy (decoder params, value head included).
    ref_params: the frozen reference policy of the KL term (the SFT policy).
    opt_state: optax state of `params`.
    rng: [2] uint32 raw PRNG key data (train.state.split_rng draws from it).
    data_epoch: [] int32, passes over the rollout users completed.
    data_index: [] int32, batches consumed within `data_epoch`.
    value_pretrained: [] int32, 1 once value-head pretraining is done (not repeated on resume).
  """
  step: jnp.ndarray
  params: Any
  ref_params: Any
  opt_state: Any
  rng: jnp.ndarray
  data_epoch: jnp.ndarray
  data_index: jnp.ndarray
  value_pretrained: jnp.ndarray


def init_state(sft_params, settings: settings_lib.RlSettings, seed: int) -> RlState:
  """RL state at step 0: the policy and a frozen reference copy of the SFT params."""
  params = jax.tree.map(jnp.array, sft_params)
  zero = jnp.zeros((), jnp.int32)
  return RlState(step=zero, params=params, ref_params=jax.tree.map(jnp.array, sft_params),
                 opt_state=settings.optimizer().init(params),
                 rng=jax.random.key_data(jax.random.key(seed)), data_epoch=zero,
                 data_index=zero, value_pretrained=zero)


def score_rollout(ro: rollouts.Rollout, inputs: rewards.RewardInputs, old_values: jnp.ndarray,
                  settings: settings_lib.RlSettings) -> dict:
  """Rewards -> advantages and value targets: the rl_loss batch fields of a rollout.

  Args:
    ro: the rollout.
    inputs: what the reward reads besides the rollout.
    old_values: [B, G, L+1] the rollout policy's values along each candidate (TD bootstrap).
    settings: the reward, advantage and value-target settings.

  Returns:
    reward [B, G]; group_adv [B, G] (or [B, G, L] for the alpha-blend); sibling_adv
    [B, G, L] (zeros for plain GRPO and for the blend, whose sibling part is in
    group_adv); value_targets [B, G, L+1] (TD targets, bootstrapped on the rollout
    policy's values).
  """
  cand, valid = ro.candidates, ro.valid
  reward = settings.reward(ro, inputs, settings.dense_reward)
  group_adv = advantages.group_advantages(reward, valid)
  sibling_adv = jnp.zeros(cand.shape, jnp.float32)
  if settings.alpha >= 0:
    group_adv = advantages.blend(group_adv, advantages.sibling_advantages(cand, reward, valid),
                                 settings.alpha)
  elif settings.w_sib:
    sibling_adv = advantages.sibling_advantages(cand, reward, valid)
  targets = rewards.dense_value_targets(ro, inputs, old_values, settings.dense_reward, reward)
  return {'reward': reward, 'group_adv': group_adv, 'sibling_adv': sibling_adv,
          'value_targets': targets}


def rollout_metrics(ro: rollouts.Rollout, scored: dict, target: jnp.ndarray, axis_name) -> dict:
  """Global rollout statistics (shard sums over global counts, psum-ed when sharded).

  Besides rewards, the policy's own hits (injected targets excluded), the share of injected
  groups and diversity: how much signal the groups carry, the share of groups whose GRPO
  advantages are not all zero and, per level l, the share of valid candidates whose level-l
  token has a non-zero sibling advantage (computed whatever w_sib, as a diagnostic).
  """
  cand, valid, reward = ro.candidates, ro.valid, scored['reward']
  users = jnp.ones(valid.shape[:1], bool)
  count = jnp.maximum(jnp.sum(valid, -1), 1)
  mean = jnp.sum(reward * valid, -1) / count
  group_std = jnp.sqrt(jnp.sum(valid * (reward - mean[:, None]) ** 2, -1) / count)
  hit = rollouts.group_hit(cand, valid, target)
  injected = ro.injected
  index = jnp.arange(cand.shape[1])
  same_l1 = cand[:, :, None, 0] == cand[:, None, :, 0]
  first_l1 = valid & ~jnp.any(same_l1 & valid[:, None, :] & (index[None, :] < index[:, None]), -1)
  mean_of = functools.partial(parallel.global_mean, axis_name=axis_name)
  out = {
      'reward_mean': mean_of(reward, valid),
      'reward_group_std': mean_of(group_std, users),
      'rollout_hit': mean_of(hit & ~injected, users),            # the policy's own hits
      'target_injected': mean_of(injected, users),
      'distinct_l1': mean_of(jnp.sum(first_l1, -1), users),
      'num_valid': mean_of(jnp.sum(valid, -1), users),
      'forwards_per_user': mean_of(ro.forwards, users),
      'nonzero_adv_groups': mean_of(jnp.any(jnp.asarray(scored['group_adv']) != 0,
                                            axis=tuple(range(1, scored['group_adv'].ndim))), users),
  }
  sibling = advantages.sibling_advantages(cand, reward, valid)
  for level in range(cand.shape[-1]):
    out[f'sibling_nonzero_L{level + 1}'] = mean_of(sibling[..., level] != 0, valid)
  return out if axis_name is None else lax.psum(out, axis_name)


def anchor_histories(history: jnp.ndarray, user_index: jnp.ndarray, key: jax.Array,
                     rate: float) -> jnp.ndarray:
  """History dropout for the anchor, [B, T, L]: one key per user (search.user_keys), so a
  user's mask does not depend on how the batch is sharded (sharded = single-device)."""
  drop = lambda k, h: sft.drop_history_items(h[None], rate, k)[0]
  return jax.vmap(drop)(search.user_keys(key, user_index), history)


def _iteration_shard(state: RlState, batch: batching.UserBatch, trie: trie_lib.Trie, item_emb, *,
                     cfg, settings: settings_lib.RlSettings):
  """Per-device body of one RL iteration: rollout, scoring, updates_per_rollout PPO updates."""
  axis = parallel.DATA_AXIS
  policy_fn = functools.partial(backbone.candidate_log_probs, cfg=cfg)
  state, key = state_lib.split_rng(state)
  inputs = rewards.RewardInputs.of(batch, trie, item_emb)
  ro = settings.rollout(state.params, trie, batch.history, batch.user_index, key, cfg=cfg,
                        settings=settings, inputs=inputs)
  if settings.inject_target:
    ro = rollouts.inject_target(ro, batch.target)
  candidates = policy.Candidates(history=batch.history, cand=ro.candidates, valid=ro.valid)
  old_logp, old_values, _ = policy_fn(state.params, candidates)
  scored = score_rollout(ro, inputs, old_values, settings)
  anchor_history = None
  if settings.anchor_history_dropout:
    # A fresh key only when on, so runs without it draw the same rollouts as before.
    state, anchor_key = state_lib.split_rng(state)
    anchor_history = anchor_histories(batch.history, batch.user_index, anchor_key,
                                      settings.anchor_history_dropout)
  loss_batch = loss_lib.LossBatch(
      candidates=candidates, old_logp=old_logp, group_adv=scored['group_adv'],
      sibling_adv=scored['sibling_adv'], value_targets=scored['value_targets'],
      target=batch.target, anchor_history=anchor_history)

  def ppo_update(carry, _):
    params, opt_state = carry
    params, opt_state, metrics = loss_lib.local_update(
        params, state.ref_params, opt_state, loss_batch, policy_fn, settings.optimizer(),
        settings.loss, axis)
    return (params, opt_state), metrics

  (params, opt_state), metrics = lax.scan(ppo_update, (state.params, state.opt_state), None,
                                          length=settings.updates_per_rollout)
  metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
  metrics.update(rollout_metrics(ro, scored, batch.target, axis))
  state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return state, metrics


@dataclasses.dataclass(frozen=True)
class Programs:
  """The jitted, sharded programs of one (decoder, settings, mesh) combination.

  iteration(state, batch: data.batching.UserBatch, trie, item_emb) -> (state, metrics); the
  state is donated.
  value: the value-head pretraining step (value_pretrain.ValueTrainer) over the same rollouts.
  """
  iteration: Callable
  value: value_pretrain.ValueTrainer


@functools.lru_cache(maxsize=8)
def make_programs(cfg, settings: settings_lib.RlSettings,
                  mesh: Mesh) -> Programs:
  """Builds (once per static configuration: re-runs reuse the compiled programs) the RL programs."""
  body = functools.partial(_iteration_shard, cfg=cfg, settings=settings)
  iteration = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS), P(), P()),
                            out_specs=(P(), P()), check_vma=False)
  rollout_fn = functools.partial(settings.rollout, cfg=cfg, settings=settings)
  if settings.value_coverage == 'catalogue':
    rollout_fn = value_pretrain.catalogue_candidates
  reward_fn = functools.partial(settings.reward, dense_cfg=settings.dense_reward)
  value = value_pretrain.make_value_step(functools.partial(backbone.candidate_log_probs, cfg=cfg),
                                         rollout_fn, reward_fn, settings.dense_reward,
                                         settings.value_lr, settings.clip_norm, mesh)
  return Programs(iteration=jax.jit(iteration, donate_argnums=0), value=value)
