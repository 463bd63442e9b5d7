"""The static settings of the RL stage (hashable: a jit static argument) and their validation."""

from __future__ import annotations

import dataclasses
from typing import Mapping

import ml_collections

from vstar_jax.default_config import ConfigError
from vstar_jax.decode import ved as ved_lib
from vstar_jax.rl import loss as loss_lib
from vstar_jax.rl import rewards as rewards_lib
from vstar_jax.rl import rollouts as rollouts_lib
from vstar_jax.rl import value_pretrain
from vstar_jax.train import state as state_lib


def validate_config(c: ml_collections.ConfigDict,
                    rewards: Mapping[str, rewards_lib.RewardFn] = rewards_lib.REWARDS,
                    rollouts: Mapping[str, rollouts_lib.RolloutFn] = rollouts_lib.ROLLOUTS) -> None:
  """Rejects impossible config.rl (and config.ved) settings, naming the flag.

  `rewards` is the registry rl.reward names one of (rl.rewards.REWARDS; the simulator adds
  rl.simulator_reward.REWARDS). A reward outside rl.rewards.REWARDS reads no logged target.
  `rollouts` is the registry rl.rollout names one of (rl.rollouts.ROLLOUTS; the simulator adds
  rl.simulator_oracle.ROLLOUTS).
  """
  r = c.rl
  target_free = r.reward not in rewards_lib.REWARDS

  def bad(flag, msg):
    raise ConfigError(f'rl.{flag}', msg)
  rollout_fn(r, rollouts)
  reward_fn(r, rewards)
  for split in r.train_splits:
    if split not in ('train', 'valid', 'holdout'):
      bad('train_splits', f'{split!r} is not train, valid or holdout')
  if r.group_size < 2:
    bad('group_size', f'must be >= 2 (advantages are relative within a group), got {r.group_size}')
  if not (r.alpha == -1 or 0 <= r.alpha <= 1):
    bad('alpha', f'must be -1 (off) or in [0, 1], got {r.alpha}')
  for flag in ('batch_users', 'updates_per_rollout', 'log_every', 'valid_every'):
    if r[flag] < 1:
      bad(flag, f'must be >= 1, got {r[flag]}')
  if r.valid_split not in ('train', 'valid', 'holdout'):
    bad('valid_split', f'{r.valid_split!r} is not train, valid or holdout (checkpoints are '
        'chosen on it: never on test)')
  if r.valid_beams < 10:
    bad('valid_beams', f'must be >= 10 (validation selects by NDCG@10), got {r.valid_beams}')
  if r.epochs < 0 or r.steps < 0:
    bad('epochs' if r.epochs < 0 else 'steps', 'must be >= 0')
  if bool(r.epochs) == bool(r.steps):
    bad('steps', f'{r.steps} with rl.epochs={r.epochs}: set exactly one of them (the other 0), '
        'e.g. --config.rl.steps=100 --config.rl.epochs=0')
  if r.alpha >= 0 and r.w_sib:
    bad('alpha', f'{r.alpha} blends the sibling advantages into the group term, which '
        f'rl.w_sib={r.w_sib} would count again: set --config.rl.w_sib=0 with it')
  if r.value_pretrain_steps < 0:
    bad('value_pretrain_steps', f'must be >= 0, got {r.value_pretrain_steps}')
  if len(r.prefix_weights) < 1:
    bad('prefix_weights', 'needs one weight per SID level')
  if r.w_sft < 0:
    bad('w_sft', f'must be >= 0, got {r.w_sft}')
  if r.w_pg < 0:
    bad('w_pg', f'must be >= 0, got {r.w_pg}')
  if not 0 <= r.negative_weight <= 1:
    bad('negative_weight', f'must be in [0, 1] (1: the paper; 0: positive advantages only), '
        f'got {r.negative_weight}')
  if not 0 <= r.anchor_history_dropout < 1:
    bad('anchor_history_dropout', f'must be in [0, 1), got {r.anchor_history_dropout}')
  if r.anchor_history_dropout and not r.w_sft:
    bad('anchor_history_dropout', 'needs rl.w_sft > 0: it regularises the supervised anchor')
  if r.w_pg == 0 and r.w_sft == 0:
    bad('w_pg', '0 needs rl.w_sft > 0: with neither term nothing trains the policy')
  if r.w_sft and target_free:
    bad('w_sft', f'needs a logged target; reward {r.reward!r} has none')
  if r.inject_target and target_free:
    bad('inject_target', f'needs a logged target; reward {r.reward!r} has none')
  if r.get('value_grad', loss_lib.LossConfig.value_grad) not in loss_lib.VALUE_GRADS:
    bad('value_grad', f'{r.value_grad!r} is not one of {loss_lib.VALUE_GRADS}')
  if r.value_target not in rewards_lib.VALUE_TARGETS:
    bad('value_target', f'{r.value_target!r} is not one of {rewards_lib.VALUE_TARGETS}')
  if r.value_coverage not in value_pretrain.COVERAGES:
    bad('value_coverage', f'{r.value_coverage!r} is not one of {value_pretrain.COVERAGES}')
  if r.value_coverage == 'catalogue' and r.value_target == 'rl_reward' and 'ranking' in r.reward:
    bad('value_coverage', f"'catalogue' gives candidates no rank: value targets of reward "
        f"{r.reward!r} need rl.value_target=dense_prefix")
  ved_config(c)


def reward_fn(r: ml_collections.ConfigDict,
              rewards: Mapping[str, rewards_lib.RewardFn]) -> rewards_lib.RewardFn:
  """The reward function rl.reward names in the registry `rewards`."""
  if r.reward not in rewards:
    raise ConfigError('rl.reward', f'{r.reward!r} is not one of {tuple(rewards)}')
  return rewards[r.reward]


def rollout_fn(r: ml_collections.ConfigDict,
               rollouts: Mapping[str, rollouts_lib.RolloutFn]) -> rollouts_lib.RolloutFn:
  """The rollout function rl.rollout names in the registry `rollouts`."""
  if r.rollout not in rollouts:
    raise ConfigError('rl.rollout', f'{r.rollout!r} is not one of {tuple(rollouts)}')
  return rollouts[r.rollout]


def num_steps(r: ml_collections.ConfigDict, num_rows: int) -> int:
  """Iterations of the run: rl.epochs passes over the rollout rows when set, else rl.steps."""
  return r.epochs * (num_rows // r.batch_users) if r.epochs else r.steps


def ved_config(c: ml_collections.ConfigDict) -> ved_lib.VedConfig:
  """The rollouts' decode.ved.VedConfig: config.ved with G = rl.group_size."""
  return ved_lib.VedConfig.from_settings(c.ved.to_dict(), c.rl.group_size)


@dataclasses.dataclass(frozen=True)
class RlSettings:
  """The static part of config.rl that the jitted programs depend on (hashable).

  `rollout` and `reward` are the resolved rollout and reward functions (names of the
  registries from_config was given); `dense_reward` configures the dense prefix reward and the
  value heads' TD targets.
  """
  rollout: rollouts_lib.RolloutFn
  group_size: int
  ved: ved_lib.VedConfig
  reward: rewards_lib.RewardFn
  inject_target: bool
  w_sib: float
  alpha: float
  loss: loss_lib.LossConfig
  dense_reward: rewards_lib.DenseRewardConfig
  updates_per_rollout: int
  lr: float
  warmup_steps: int
  weight_decay: float
  clip_norm: float
  total_updates: int
  value_lr: float
  value_coverage: str = 'rollouts'
  anchor_history_dropout: float = 0.0

  @classmethod
  def from_config(cls, c: ml_collections.ConfigDict, steps: int | None = None,
                  rewards: Mapping[str, rewards_lib.RewardFn] = rewards_lib.REWARDS,
                  rollouts: Mapping[str, rollouts_lib.RolloutFn] = rollouts_lib.ROLLOUTS
                  ) -> RlSettings:
    """The settings of config.rl (and config.ved) for a run of `steps` iterations (default
    rl.steps), rl.reward resolved in `rewards` and rl.rollout in `rollouts` (see
    validate_config)."""
    r = c.rl
    total = (steps or r.steps or 1) * r.updates_per_rollout
    return cls(
        rollout=rollout_fn(r, rollouts), group_size=r.group_size, ved=ved_config(c),
        reward=reward_fn(r, rewards), inject_target=r.inject_target, w_sib=r.w_sib, alpha=r.alpha,
        loss=loss_lib.LossConfig(clip_eps=r.clip_eps, w_sib=r.w_sib, kl_beta=r.kl_beta,
                                 w_value=r.w_value, w_sft=r.w_sft,
                                 w_pg=r.w_pg, negative_weight=r.negative_weight,
                                 value_grad=r.get('value_grad', loss_lib.LossConfig.value_grad)),
        dense_reward=rewards_lib.DenseRewardConfig(
            weights=tuple(r.prefix_weights), gamma=r.gamma,
            use_item_embeddings=r.use_item_embeddings, value_target=r.value_target),
        updates_per_rollout=r.updates_per_rollout, lr=r.lr,
        warmup_steps=min(r.warmup_steps, total - 1), weight_decay=r.weight_decay,
        clip_norm=r.clip_norm, total_updates=total, value_lr=r.value_pretrain_lr,
        value_coverage=r.value_coverage, anchor_history_dropout=r.anchor_history_dropout)

  def optimizer(self):
    """Clipped AdamW with warmup + cosine decay over all PPO updates."""
    return state_lib.make_optimizer(self.lr, self.warmup_steps, self.total_updates,
                                    self.weight_decay, self.clip_norm)
