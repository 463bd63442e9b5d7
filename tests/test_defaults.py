"""One source of defaults: the dataclasses a notebook user builds by hand equal what the CLI's
config resolves to, so `VedConfig()` or `DecoderConfig()` is the system the CLI runs."""

import dataclasses

import numpy as np

from vstar_jax import default_config
from vstar_jax.data import types
from vstar_jax.decode import ved as ved_lib
from vstar_jax.model import backbone
from vstar_jax.model import decoder
from vstar_jax.rl import loss as loss_lib
from vstar_jax.rl import rewards
from vstar_jax.rl import settings as settings_lib


def _catalogue(num_levels=3, num_codes=256, max_history=10) -> types.Dataset:
  """A dataset of the default SID shape (only the shapes matter here)."""
  split = types.Split('train', np.array(['u']), np.zeros((1, max_history), np.int32),
                      np.ones(1, np.int32), np.zeros(1, np.int32))
  return types.Dataset('shape', np.zeros((2, num_levels), np.int32), num_codes,
                       np.array(['a', 'b']), {'train': split}, {'train': np.array(['x'])})


def test_decoder_config_defaults_are_the_configs():
  config = default_config.base_config()
  assert backbone.model_config(config, _catalogue()) == decoder.DecoderConfig()


def test_ved_config_defaults_are_the_configs():
  config = default_config.base_config()
  assert settings_lib.ved_config(config) == ved_lib.VedConfig()


def test_loss_and_reward_defaults_are_the_configs():
  settings = settings_lib.RlSettings.from_config(default_config.base_config())
  assert settings.loss == loss_lib.LossConfig()
  assert settings.dense_reward == rewards.DenseRewardConfig()


def test_the_check_can_fail():
  config = default_config.base_config()
  config.ved.width = 4
  assert settings_lib.ved_config(config) != ved_lib.VedConfig()
  assert dataclasses.replace(decoder.DecoderConfig(), d_model=64) != decoder.DecoderConfig()
