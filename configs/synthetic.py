"""Synthetic planted-structure dataset: needs no files; a few-minute smoke run of every stage."""

from vstar_jax import default_config


def get_config(arg=None):
  del arg
  c = default_config.base_config()
  c.dataset = 'synthetic'
  c.sft.epochs = 6
  c.sft.warmup_steps = 50
  c.rl.steps = 40
  c.rl.valid_every = 20
  c.rl.value_pretrain_steps = 20
  return c
