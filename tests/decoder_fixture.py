"""Shared decoder test helper: random O(1) weights that need no training or compile."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.model import decoder


def random_params(cfg, seed=0):
  """O(1) random weights (norm scales near 1): well separated scores, outputs far from uniform."""
  shapes = jax.eval_shape(functools.partial(decoder.init_params, cfg), jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)

  def leaf(path, shape):
    base = 1.0 if path[-1].key == 'scale' else 0.0
    return jnp.asarray(base + 0.3 * rng.standard_normal(shape.shape), shape.dtype)

  return jax.tree_util.tree_map_with_path(leaf, shapes)
