"""vstar_jax: V-STAR generative recommendation in JAX/Flax.

  rec = vstar_jax.Recommender.load('workdirs/synthetic')   # vstar_jax.recommender
  rec.recommend([[12, 55, 301]], k=10)
"""


def __getattr__(name):
  """`vstar_jax.Recommender`, imported on first use: `import vstar_jax` stays free of JAX."""
  if name == 'Recommender':
    from vstar_jax.recommender import Recommender  # pylint: disable=g-import-not-at-top
    return Recommender
  raise AttributeError(f'module vstar_jax has no attribute {name!r}')
