"""RQ-VAE (the TIGER / MiniOneRec SID tokenizer): an MLP autoencoder around residual quantization.

z = encoder(x), x_hat = decoder(sum_l C_l[c_l]); trained with reconstruction + codebook +
commitment losses through the straight-through estimator, codebooks initialized by residual
k-means on the initial latents (sid.codebook), dead codes re-seeded from the points quantized
worst. The params add 'encoder' and 'decoder' MLPs to codebook's {'codebooks': [L, K, E]}, so
codebook.encode / decode / code_distances serve both.
"""

from __future__ import annotations

import functools
import math
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vstar_jax.sid.codebook import (CodebookConfig, Params, apply_mlp, reconstruct, latents,
                                    quantize, reseed_empty, residual_kmeans)


def _normals(key: jax.Array, shapes: list[tuple[int, ...]]) -> list[jnp.ndarray]:
  """Standard-normal arrays of the given shapes, sliced from one draw.

  One random-bit kernel to compile instead of one per shape (XLA:CPU compiles them slowly).
  """
  sizes = [math.prod(s) for s in shapes]
  flat = jax.random.normal(key, (sum(sizes),))
  offsets = np.cumsum([0] + sizes)
  return [flat[a:b].reshape(s) for a, b, s in zip(offsets[:-1], offsets[1:], shapes)]


def _mlp(normals: list[jnp.ndarray]) -> Params:
  """He-normal weights (from standard normals [fan_in, fan_out]), zero biases, of a ReLU MLP."""
  return {f'layer_{i}': {'w': n * math.sqrt(2.0 / n.shape[0]), 'b': jnp.zeros((n.shape[1],))}
          for i, n in enumerate(normals)}


@functools.partial(jax.jit, static_argnames=('input_dim', 'cfg'))
def init_rqvae(key: jax.Array, input_dim: int, cfg: CodebookConfig) -> Params:
  """RQ-VAE params: encoder D -> hidden -> E, decoder mirrored, codebooks [L, K, E] (random)."""
  widths = (input_dim, *cfg.hidden_dims, cfg.latent_dim)
  enc = list(zip(widths[:-1], widths[1:]))
  dec = [(b, a) for a, b in reversed(enc)]
  normals = _normals(key, enc + dec + [(cfg.num_levels, cfg.codebook_size, cfg.latent_dim)])
  return {'encoder': _mlp(normals[:len(enc)]), 'decoder': _mlp(normals[len(enc):-1]),
          'codebooks': normals[-1] / math.sqrt(cfg.latent_dim)}


def rqvae_loss(params: Params, x: jnp.ndarray, cfg: CodebookConfig):
  """RQ-VAE loss on a batch x [B, D] -> (loss, metrics).

  loss = mean ||x - decoder(z + sg(z_q - z))||^2                 (reconstruction, straight-through)
       + sum_l mean ||sg(r_l) - C_l[c_l]||^2                     (codebook)
       + beta * sum_l mean ||r_l - sg(C_l[c_l])||^2              (commitment)
  """
  z = latents(params, x)
  codes, chosen, residuals = quantize(params['codebooks'], z, cfg)
  z_q = jnp.sum(chosen, axis=1)
  z_st = z + jax.lax.stop_gradient(z_q - z)
  recon = jnp.mean(jnp.sum((reconstruct(params, z_st) - x) ** 2, axis=-1))
  sg = jax.lax.stop_gradient
  codebook_loss = jnp.sum(jnp.mean(jnp.sum((sg(residuals) - chosen) ** 2, axis=-1), axis=0))
  commit = jnp.sum(jnp.mean(jnp.sum((residuals - sg(chosen)) ** 2, axis=-1), axis=0))
  loss = recon + codebook_loss + cfg.commitment * commit
  usage = jnp.mean(jnp.max(jax.nn.one_hot(codes, cfg.codebook_size), axis=0))
  return loss, {'loss': loss, 'recon': recon, 'codebook': codebook_loss, 'commit': commit,
                'batch_usage': usage}


def make_train_step(cfg: CodebookConfig, optimizer: optax.GradientTransformation):
  """Jitted (params, opt_state, x [B, D]) -> (params, opt_state, metrics), params donated."""

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, x):
    grads, metrics = jax.grad(rqvae_loss, has_aux=True)(params, x, cfg)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  return train_step


@functools.partial(jax.jit, static_argnames='cfg')
def reseed_dead_codes(params: Params, x: jnp.ndarray, cfg: CodebookConfig):
  """Re-seeds codes no item uses (over all items x [N, D]) from high-residual points.

  At level l a dead code moves onto the residual r_l of an item whose level-l quantization
  error ||r_l - C_l[c_l]||^2 is among the largest, so that item (and its neighbours)
  adopt it. Returns (params, number of codes re-seeded per level [L]).
  """
  codes, chosen, residuals = quantize(params['codebooks'], latents(params, x), cfg)
  counts = jnp.sum(jax.nn.one_hot(codes, cfg.codebook_size), axis=0)  # [L, K]
  errors = jnp.sum((residuals - chosen) ** 2, axis=-1)  # [N, L]
  codebooks = jax.vmap(reseed_empty, in_axes=(0, 0, 1, 1))(params['codebooks'], counts, residuals,
                                                          errors)
  return {**params, 'codebooks': codebooks}, jnp.sum(counts <= 0, axis=1)


@functools.partial(jax.jit, static_argnames=('num_items', 'batch_size', 'steps'))
def batch_indices(key: jax.Array, num_items: int, batch_size: int, steps: int) -> jnp.ndarray:
  """[steps, B] item ids: epoch after epoch of a fresh permutation, remainders dropped."""
  per_epoch = num_items // batch_size
  epochs = -(-steps // per_epoch)
  perms = jax.vmap(lambda k: jax.random.permutation(k, num_items))(jax.random.split(key, epochs))
  return perms[:, :per_epoch * batch_size].reshape(-1, batch_size)[:steps]


def fit_rqvae(key: jax.Array, x: jnp.ndarray, cfg: CodebookConfig, *, steps: int,
              batch_size: int, learning_rate: float, kmeans_iters: int, reseed_every: int,
              log_every: int = 500):
  """Trains an RQ-VAE on item embeddings x [N, D] with Adam (cosine-decayed learning rate).

  Codebooks start from residual k-means on the initial latents; every `reseed_every`
  steps (0 = never) dead codes are re-seeded. Batches are drawn without replacement,
  epoch by epoch, from seeded permutations.

  Returns:
    params, and a history dict of per-log-step metrics.
  """
  init_key, kmeans_key, data_key = jax.random.split(key, 3)
  params = init_rqvae(init_key, x.shape[1], cfg)
  params['codebooks'] = residual_kmeans(kmeans_key, latents(params, x), cfg, kmeans_iters)
  optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05))
  opt_state = jax.jit(optimizer.init)(params)
  train_step = make_train_step(cfg, optimizer)
  x_host = np.asarray(x)
  batches = np.asarray(batch_indices(data_key, x.shape[0], min(batch_size, x.shape[0]), steps))
  history = {'step': [], 'loss': [], 'recon': [], 'batch_usage': [], 'reseeded': []}
  reseeded_total = 0
  start = time.time()
  for step in range(steps):
    params, opt_state, metrics = train_step(params, opt_state, x_host[batches[step]])
    if reseed_every and (step + 1) % reseed_every == 0 and step + 1 < steps:
      params, reseeded = reseed_dead_codes(params, x, cfg)
      reseeded_total += int(np.sum(reseeded))
    if (step + 1) % log_every == 0 or step + 1 == steps:
      rate = (step + 1) / (time.time() - start)
      history['step'].append(step + 1)
      for name in ('loss', 'recon', 'batch_usage'):
        history[name].append(float(metrics[name]))
      history['reseeded'].append(reseeded_total)
      logging.info('rqvae step %d/%d loss %.4f recon %.4f batch usage %.3f reseeded %d '
                   '(%.1f steps/s, ETA %.0fs)', step + 1, steps, history['loss'][-1],
                   history['recon'][-1], history['batch_usage'][-1], reseeded_total, rate,
                   (steps - step - 1) / rate)
  return params, history
