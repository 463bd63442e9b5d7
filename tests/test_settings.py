"""Tests for vstar_jax.rl.settings: bad settings are rejected naming the flag."""

import pytest

from vstar_jax import default_config
from vstar_jax.rl import settings as settings_lib


@pytest.mark.parametrize('flag,value,match', [
    ('rollout', 'top_p', r'--config.rl.rollout: .*not one of'),
    ('reward', 'hits', r'--config.rl.reward: .*not one of'),
    ('alpha', 1.5, r'--config.rl.alpha'),
    ('group_size', 1, r'--config.rl.group_size'),
    ('valid_beams', 5, r'--config.rl.valid_beams'),
])
def test_bad_values_name_the_flag(flag, value, match):
  r = default_config.rl_config()
  r[flag] = value
  with pytest.raises(default_config.ConfigError, match=match):
    settings_lib.validate_config(r)


def test_target_injection_needs_a_logged_target():
  r = default_config.rl_config()
  r.inject_target, r.reward = True, 'preference'
  with pytest.raises(default_config.ConfigError, match=r'--config.rl.inject_target: .*target'):
    settings_lib.validate_config(r)
  r.reward = 'ranking'
  settings_lib.validate_config(r)
  assert settings_lib.RlSettings.from_config(r).inject_target


def test_ved_settings_are_checked_by_the_ved_config():
  r = default_config.rl_config()
  r.ved.multiplier = 0.5
  with pytest.raises(ValueError, match=r'--config.rl.ved.multiplier: .*base budget'):
    settings_lib.validate_config(r)
  r = default_config.rl_config()
  r.ved.depth = 3
  with pytest.raises(ValueError, match=r'--config.rl.ved: unknown VED setting'):
    settings_lib.validate_config(r)


def test_settings_carry_the_nested_ved_config():
  r = default_config.rl_config()
  r.ved.multiplier, r.group_size = 3.0, 12
  s = settings_lib.RlSettings.from_config(r)
  assert (s.ved.multiplier, s.ved.group_size, s.ved.width) == (3.0, 12, r.ved.width)
  hash(s)  # a jit static argument


def test_epochs_set_the_number_of_iterations():
  r = default_config.rl_config()
  r.batch_users, r.steps = 64, 300
  assert settings_lib.num_steps(r, 2625) == 300
  r.epochs = 2
  assert settings_lib.num_steps(r, 2625) == 2 * 41
  assert settings_lib.RlSettings.from_config(r, 82).total_updates == 82


def test_value_coverage_and_supervised_anchor_are_checked():
  r = default_config.rl_config()
  r.value_coverage = 'everything'
  with pytest.raises(default_config.ConfigError, match=r'--config.rl.value_coverage: .*not one'):
    settings_lib.validate_config(r)
  r.value_coverage, r.value_targets, r.reward = 'catalogue', 'reward', 'ranking'
  with pytest.raises(default_config.ConfigError, match=r'--config.rl.value_coverage: .*rank'):
    settings_lib.validate_config(r)
  r.value_targets = 'prefix'
  settings_lib.validate_config(r)
  r.w_sft = -1.0
  with pytest.raises(default_config.ConfigError, match=r'--config.rl.w_sft: must be >= 0'):
    settings_lib.validate_config(r)
  r.w_sft, r.reward, r.value_targets = 0.5, 'preference', 'reward'
  with pytest.raises(default_config.ConfigError, match=r'--config.rl.w_sft: .*logged target'):
    settings_lib.validate_config(r)
  r.reward = 'ranking+prefix'
  r.value_targets = 'prefix'
  settings_lib.validate_config(r)
  assert settings_lib.RlSettings.from_config(r).loss.w_sft == 0.5
  r.w_pg = -0.5
  with pytest.raises(default_config.ConfigError, match=r'--config.rl.w_pg: must be >= 0'):
    settings_lib.validate_config(r)
  r.w_pg, r.w_sft = 0.0, 0.0
  with pytest.raises(default_config.ConfigError, match=r'--config.rl.w_pg: .*rl.w_sft > 0'):
    settings_lib.validate_config(r)
  r.w_sft = 1.0
  settings_lib.validate_config(r)
  assert settings_lib.RlSettings.from_config(r).loss.w_pg == 0.0
  for flag, bad_values, good, message in (
      ('negative_weight', (-0.1, 1.5), 0.0, 'must be in'),
      ('anchor_history_dropout', (-0.1, 1.0), 0.4, r'must be in \[0, 1\)')):
    for value in bad_values:
      r[flag] = value
      with pytest.raises(default_config.ConfigError, match=rf'--config.rl.{flag}: {message}'):
        settings_lib.validate_config(r)
    r[flag] = good
    settings_lib.validate_config(r)
  settings = settings_lib.RlSettings.from_config(r)
  assert settings.loss.negative_weight == 0.0 and settings.anchor_history_dropout == 0.4
  r.w_sft = 0.0
  r.w_pg = 1.0
  with pytest.raises(default_config.ConfigError,
                     match=r'--config.rl.anchor_history_dropout: needs rl.w_sft > 0'):
    settings_lib.validate_config(r)
