"""Tests for vstar_jax.rl.settings: bad settings are rejected naming the flag."""

import pytest

from vstar_jax import default_config
from vstar_jax.rl import rewards
from vstar_jax.rl import settings as settings_lib
from vstar_jax.rl import simulator_reward

# The simulator's registry: the user-facing rewards and the true preference (reads no target).
SIMULATOR_REWARDS = {**rewards.REWARDS, **simulator_reward.REWARDS}


@pytest.mark.parametrize('flag,value,match', [
    ('rollout', 'top_p', r'--config.rl.rollout: .*not one of'),
    ('reward', 'hits', r'--config.rl.reward: .*not one of'),
    ('alpha', 1.5, r'--config.rl.alpha'),
    ('group_size', 1, r'--config.rl.group_size'),
    ('valid_beams', 5, r'--config.rl.valid_beams'),
])
def test_bad_values_name_the_flag(flag, value, match):
  c = default_config.base_config()
  c.rl[flag] = value
  with pytest.raises(default_config.ConfigError, match=match):
    settings_lib.validate_config(c)


@pytest.mark.parametrize('changes,match', [
    ({'epochs': 2}, r'--config.rl.steps: 300 with rl.epochs=2: set exactly one'),
    ({'steps': 0}, r'--config.rl.steps: 0 with rl.epochs=0: set exactly one'),
    ({'alpha': 0.5}, r'--config.rl.alpha: 0.5 .* set --config.rl.w_sib=0'),
    ({'valid_split': 'test'}, r'--config.rl.valid_split: .*never on test'),
], ids=['steps_and_epochs', 'neither', 'alpha_with_w_sib', 'valid_on_test'])
def test_shadowed_or_unsafe_knobs_are_one_line_errors(changes, match):
  c = default_config.base_config()
  c.rl.update(changes)
  with pytest.raises(default_config.ConfigError, match=match):
    settings_lib.validate_config(c)


def test_each_knob_of_a_conflict_alone_is_accepted():
  for changes in ({'epochs': 2, 'steps': 0}, {'alpha': 0.5, 'w_sib': 0.0}, {'valid_split': 'holdout'}):
    c = default_config.base_config()
    c.rl.update(changes)
    settings_lib.validate_config(c)


def test_target_injection_needs_a_logged_target():
  c = default_config.base_config()
  r = c.rl
  r.inject_target, r.reward = True, 'preference'
  with pytest.raises(default_config.ConfigError, match=r'--config.rl.inject_target: .*target'):
    settings_lib.validate_config(c, SIMULATOR_REWARDS)
  r.reward = 'ranking'
  settings_lib.validate_config(c)
  assert settings_lib.RlSettings.from_config(c).inject_target


def test_the_reward_registry_is_explicit_and_resolved_into_the_settings():
  """'preference' is the simulator's: unknown to the user-facing registry, resolved (to its
  function, in the hashable settings) only where a run passes the simulator's registry."""
  c = default_config.base_config()
  c.rl.reward, c.rl.value_target = 'preference', 'rl_reward'
  for check in (settings_lib.validate_config, settings_lib.RlSettings.from_config):
    with pytest.raises(default_config.ConfigError, match=r'--config.rl.reward: .*not one of'):
      check(c)
  settings_lib.validate_config(c, SIMULATOR_REWARDS)
  s = settings_lib.RlSettings.from_config(c, rewards=SIMULATOR_REWARDS)
  assert s.reward is simulator_reward.REWARDS['preference']
  assert s.dense_reward.value_target == 'rl_reward'
  hash(s)
  c.rl.reward = 'rule'
  assert settings_lib.RlSettings.from_config(c).reward is rewards.REWARDS['rule']


def test_ved_settings_are_checked_by_the_ved_config():
  c = default_config.base_config()
  c.ved.multiplier = 0.5
  with pytest.raises(ValueError, match=r'--config.ved.multiplier: .*base budget'):
    settings_lib.validate_config(c)
  c = default_config.base_config()
  c.ved.depth = 3
  with pytest.raises(ValueError, match=r'--config.ved: unknown VED setting'):
    settings_lib.validate_config(c)


def test_settings_carry_the_nested_ved_config():
  c = default_config.base_config()
  c.ved.multiplier, c.rl.group_size = 3.0, 12
  s = settings_lib.RlSettings.from_config(c)
  assert (s.ved.multiplier, s.ved.group_size, s.ved.width) == (3.0, 12, c.ved.width)
  hash(s)  # a jit static argument


def test_epochs_set_the_number_of_iterations():
  c = default_config.base_config()
  r = c.rl
  r.batch_users, r.steps = 64, 300
  assert settings_lib.num_steps(r, 2625) == 300
  r.epochs, r.steps = 2, 0
  assert settings_lib.num_steps(r, 2625) == 2 * 41
  assert settings_lib.RlSettings.from_config(c, 82).total_updates == 82


def test_value_coverage_and_supervised_anchor_are_checked():
  c = default_config.base_config()
  r = c.rl
  r.value_coverage = 'everything'
  with pytest.raises(default_config.ConfigError, match=r'--config.rl.value_coverage: .*not one'):
    settings_lib.validate_config(c)
  r.value_coverage, r.value_target, r.reward = 'catalogue', 'rl_reward', 'ranking'
  with pytest.raises(default_config.ConfigError, match=r'--config.rl.value_coverage: .*rank'):
    settings_lib.validate_config(c)
  r.value_target = 'reward'
  with pytest.raises(default_config.ConfigError, match=r'--config.rl.value_target: .*not one'):
    settings_lib.validate_config(c)
  r.value_target = 'dense_prefix'
  settings_lib.validate_config(c)
  r.w_sft = -1.0
  with pytest.raises(default_config.ConfigError, match=r'--config.rl.w_sft: must be >= 0'):
    settings_lib.validate_config(c)
  r.w_sft, r.reward, r.value_target = 0.5, 'preference', 'rl_reward'
  with pytest.raises(default_config.ConfigError, match=r'--config.rl.w_sft: .*logged target'):
    settings_lib.validate_config(c, SIMULATOR_REWARDS)
  r.reward = 'ranking+prefix'
  r.value_target = 'dense_prefix'
  settings_lib.validate_config(c)
  assert settings_lib.RlSettings.from_config(c).loss.w_sft == 0.5
  r.w_pg = -0.5
  with pytest.raises(default_config.ConfigError, match=r'--config.rl.w_pg: must be >= 0'):
    settings_lib.validate_config(c)
  r.w_pg, r.w_sft = 0.0, 0.0
  with pytest.raises(default_config.ConfigError, match=r'--config.rl.w_pg: .*rl.w_sft > 0'):
    settings_lib.validate_config(c)
  r.w_sft = 1.0
  settings_lib.validate_config(c)
  assert settings_lib.RlSettings.from_config(c).loss.w_pg == 0.0
  for flag, bad_values, good, message in (
      ('negative_weight', (-0.1, 1.5), 0.0, 'must be in'),
      ('anchor_history_dropout', (-0.1, 1.0), 0.4, r'must be in \[0, 1\)')):
    for value in bad_values:
      r[flag] = value
      with pytest.raises(default_config.ConfigError, match=rf'--config.rl.{flag}: {message}'):
        settings_lib.validate_config(c)
    r[flag] = good
    settings_lib.validate_config(c)
  settings = settings_lib.RlSettings.from_config(c)
  assert settings.loss.negative_weight == 0.0 and settings.anchor_history_dropout == 0.4
  r.w_sft = 0.0
  r.w_pg = 1.0
  with pytest.raises(default_config.ConfigError,
                     match=r'--config.rl.anchor_history_dropout: needs rl.w_sft > 0'):
    settings_lib.validate_config(c)
