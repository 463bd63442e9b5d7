"""vstar_jax: V-STAR generative recommendation in JAX/Flax."""
