"""The static settings of the RL stage (hashable: a jit static argument) and their validation."""

from __future__ import annotations

import dataclasses

import ml_collections

from vstar_jax.default_config import ConfigError
from vstar_jax.decode import ved as ved_lib
from vstar_jax.rl import loss as loss_lib
from vstar_jax.rl import rewards
from vstar_jax.rl import rollouts
from vstar_jax.rl import value_pretrain
from vstar_jax.train import state as state_lib


def validate_config(r: ml_collections.ConfigDict) -> None:
  """Rejects impossible config.rl settings, naming the flag."""
  def bad(flag, msg):
    raise ConfigError(f'rl.{flag}', msg)
  if r.rollout not in rollouts.ROLLOUTS:
    bad('rollout', f'{r.rollout!r} is not one of {tuple(rollouts.ROLLOUTS)}')
  if r.reward not in rewards.REWARDS:
    bad('reward', f'{r.reward!r} is not one of {tuple(rewards.REWARDS)}')
  for split in r.train_splits:
    if split not in ('train', 'valid', 'holdout'):
      bad('train_splits', f'{split!r} is not train, valid or holdout')
  if r.group_size < 2:
    bad('group_size', f'must be >= 2 (advantages are relative within a group), got {r.group_size}')
  if not (r.alpha == -1 or 0 <= r.alpha <= 1):
    bad('alpha', f'must be -1 (off) or in [0, 1], got {r.alpha}')
  for flag in ('batch_users', 'steps', 'updates_per_rollout', 'log_every', 'valid_every'):
    if r[flag] < 1:
      bad(flag, f'must be >= 1, got {r[flag]}')
  if r.valid_beams < 10:
    bad('valid_beams', f'must be >= 10 (validation selects by NDCG@10), got {r.valid_beams}')
  if r.epochs < 0:
    bad('epochs', f'must be >= 0 (0: use rl.steps), got {r.epochs}')
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
  if r.w_sft and r.reward == 'preference':
    bad('w_sft', "needs a logged target; reward 'preference' has none")
  if r.inject_target and r.reward == 'preference':
    bad('inject_target', "needs a logged target; reward 'preference' has none")
  if r.value_targets not in ('prefix', 'reward'):
    bad('value_targets', f"{r.value_targets!r} is not 'prefix' or 'reward'")
  if r.value_coverage not in value_pretrain.COVERAGES:
    bad('value_coverage', f'{r.value_coverage!r} is not one of {value_pretrain.COVERAGES}')
  if r.value_coverage == 'catalogue' and r.value_targets == 'reward' and 'ranking' in r.reward:
    bad('value_coverage', f"'catalogue' gives candidates no rank: value targets of reward "
        f"{r.reward!r} need rl.value_targets=prefix")
  ved_config(r)


def num_steps(r: ml_collections.ConfigDict, num_rows: int) -> int:
  """Iterations of the run: rl.epochs passes over the rollout rows when set, else rl.steps."""
  return r.epochs * (num_rows // r.batch_users) if r.epochs else r.steps


def ved_config(r: ml_collections.ConfigDict) -> ved_lib.VedConfig:
  """decode.ved.VedConfig from config.rl.ved (and the group size); errors name the flag."""
  try:
    return ved_lib.VedConfig(group_size=r.group_size, **r.ved.to_dict())
  except TypeError as e:
    raise ConfigError('rl.ved', f'unknown VED setting ({e}); the settings are '
                      f'{[f.name for f in dataclasses.fields(ved_lib.VedConfig)]}') from None
  except ValueError as e:
    raise ConfigError(f'rl.ved.{getattr(e, "field", "")}'.rstrip('.'), str(e)) from None


@dataclasses.dataclass(frozen=True)
class RlSettings:
  """The static part of config.rl that the jitted programs depend on (hashable)."""
  rollout: str
  group_size: int
  ved: ved_lib.VedConfig
  reward: str
  inject_target: bool
  w_sib: float
  alpha: float
  loss: loss_lib.LossConfig
  targets: rewards.ValueTargetConfig
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
  def from_config(cls, r: ml_collections.ConfigDict, steps: int | None = None) -> RlSettings:
    """The settings of config.rl for a run of `steps` iterations (default rl.steps)."""
    total = (steps or r.steps) * r.updates_per_rollout
    return cls(
        rollout=r.rollout, group_size=r.group_size, ved=ved_config(r),
        reward=r.reward, inject_target=r.inject_target, w_sib=r.w_sib, alpha=r.alpha,
        loss=loss_lib.LossConfig(clip_eps=r.clip_eps, w_sib=r.w_sib, kl_beta=r.kl_beta,
                                 w_value=r.w_value, w_sft=r.w_sft,
                                 w_pg=r.w_pg, negative_weight=r.negative_weight),
        targets=rewards.ValueTargetConfig(weights=tuple(r.prefix_weights), gamma=r.gamma,
                                          use_item_embeddings=r.use_item_embeddings,
                                          source=r.value_targets),
        updates_per_rollout=r.updates_per_rollout, lr=r.lr,
        warmup_steps=min(r.warmup_steps, total - 1), weight_decay=r.weight_decay,
        clip_norm=r.clip_norm, total_updates=total, value_lr=r.value_pretrain_lr,
        value_coverage=r.value_coverage, anchor_history_dropout=r.anchor_history_dropout)

  def optimizer(self):
    """Clipped AdamW with warmup + cosine decay over all PPO updates."""
    return state_lib.make_optimizer(self.lr, self.warmup_steps, self.total_updates,
                                    self.weight_decay, self.clip_norm)
