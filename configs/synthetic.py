"""Synthetic planted-structure dataset: needs no files; for smoke runs and tests."""

from vstar_jax import default_config


def get_config(arg=None):
  del arg
  c = default_config.base_config()
  c.dataset = 'synthetic'
  return c
