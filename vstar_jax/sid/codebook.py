"""Semantic-ID codebooks: residual k-means and RQ-VAE as pure functions over a params pytree.

An item embedding x [D] becomes L codes by residual quantization: level l assigns the
residual r_l to a code of codebook C_l [K, E] (r_0 = z, r_{l+1} = r_l - C_l[c_l]), so
level 1 is a coarse semantic cluster and deeper levels refine it. Two ways to learn the
codebooks, sharing every quantization function:
- residual k-means: z = x; each C_l is fitted by Lloyd's algorithm (k-means++ seeding,
  empty clusters re-seeded) on the residuals the levels above leave. Params are
  `{'codebooks': [L, K, D]}`.
- RQ-VAE (sid.rqvae): z = encoder(x), x_hat = decoder(sum_l C_l[c_l]). Params add
  `'encoder'` and `'decoder'` MLPs: residual k-means is an RQ-VAE whose encoder and
  decoder are the identity, so encode / decode here serve both.
Assignment is to the nearest code, or balanced (every code receives about N/K points) by
a Sinkhorn-Knopp optimal-transport solve, the remedy for level-1 codes collapsing onto a
few hubs (the shipped SIDs use 48 of 256). Balanced assignment is computed over a set of
points (a batch, or all items at once when SIDs are produced), not per point; with it,
residual k-means becomes balanced k-means.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class CodebookConfig:
  """Static shape and loss settings of a codebook (hashable: a jit static argument).

  Attributes:
    num_levels: L, codes per SID.
    codebook_size: K, codes per level.
    hidden_dims: RQ-VAE encoder hidden widths (the decoder mirrors them).
    latent_dim: E, RQ-VAE latent width (residual k-means quantizes x itself).
    commitment: beta, weight of the commitment loss ||r_l - sg(C_l[c_l])||^2.
    sinkhorn_iters: Sinkhorn iterations of balanced assignment; 0 = nearest code.
    sinkhorn_eps: entropic temperature of the balanced assignment, in units of the
      standard deviation of the squared distances (smaller = closer to exact OT).
  """
  num_levels: int = 3
  codebook_size: int = 256
  hidden_dims: tuple[int, ...] = (512, 256)
  latent_dim: int = 32
  commitment: float = 0.25
  sinkhorn_iters: int = 0
  sinkhorn_eps: float = 0.05


def sq_distances(x: jnp.ndarray, codes: jnp.ndarray) -> jnp.ndarray:
  """Squared Euclidean distances x [N, E] x codes [K, E] -> [N, K] (clipped at 0)."""
  d = jnp.sum(x * x, axis=-1)[:, None] - 2.0 * x @ codes.T + jnp.sum(codes * codes, axis=-1)
  return jnp.maximum(d, 0.0)


def sinkhorn_assign(dists: jnp.ndarray, eps: float, num_iters: int) -> jnp.ndarray:
  """Balanced assignment: dists [N, K] -> codes [N] int32 with near-uniform code counts.

  Entropic optimal transport between the N points (mass 1/N each) and the K codes (mass
  1/K each) by Sinkhorn-Knopp matrix scaling; each point then takes the code with the
  largest transport mass. Distances are standardized first so `eps` is scale-free; the
  kernel is normalized per row (absorbed by the row scaling) so every row keeps a 1, and
  a code that underflows for every point gets a bounded scale instead of a division by 0.
  """
  n, k = dists.shape
  logits = -(dists - jnp.mean(dists)) / ((jnp.std(dists) + 1e-12) * eps)
  kernel = jnp.exp(logits - jnp.max(logits, axis=1, keepdims=True))

  def body(_, v):
    u = (1.0 / n) / (kernel @ v)
    return (1.0 / k) / jnp.maximum(kernel.T @ u, 1e-30)

  v = jax.lax.fori_loop(0, num_iters, body, jnp.ones((k,), logits.dtype))
  return jnp.argmax(logits + jnp.log(v)[None, :], axis=1).astype(jnp.int32)


def assign(dists: jnp.ndarray, cfg: CodebookConfig) -> jnp.ndarray:
  """Code per point, dists [N, K] -> [N] int32: nearest, or Sinkhorn-balanced if configured."""
  if cfg.sinkhorn_iters > 0:
    return sinkhorn_assign(dists, cfg.sinkhorn_eps, cfg.sinkhorn_iters)
  return jnp.argmin(dists, axis=1).astype(jnp.int32)


def quantize(codebooks: jnp.ndarray, z: jnp.ndarray, cfg: CodebookConfig):
  """Residual quantization of z [N, E] with codebooks [L, K, E] (a scan over levels).

  Returns:
    codes: [N, L] int32, the chosen code per level.
    chosen: [N, L, E], the chosen codewords C_l[c_l] (differentiable in the codebooks).
    residuals: [N, L, E], r_l, the input each level quantized (differentiable in z only:
      the codewords subtracted on the way down are stop-gradient, so each level's losses
      move only its own codebook).
  """
  def level(r, codebook):
    c = assign(sq_distances(jax.lax.stop_gradient(r), jax.lax.stop_gradient(codebook)), cfg)
    q = codebook[c]
    return r - jax.lax.stop_gradient(q), (c, q, r)

  _, (codes, chosen, residuals) = jax.lax.scan(level, z, codebooks)
  return codes.T, jnp.swapaxes(chosen, 0, 1), jnp.swapaxes(residuals, 0, 1)


# ----------------------------------------------------------------------------- k-means


def kmeans_plusplus(key: jax.Array, x: jnp.ndarray, num_codes: int) -> jnp.ndarray:
  """k-means++ seeding (Arthur & Vassilvitskii): x [N, E] -> centroids [K, E].

  Each new centroid is a data point drawn with probability proportional to its squared
  distance to the nearest centroid so far (uniformly once every point is covered).
  """
  n = x.shape[0]
  first_key, key = jax.random.split(key)
  first = x[jax.random.randint(first_key, (), 0, n)]
  centroids = jnp.zeros((num_codes, x.shape[1]), x.dtype).at[0].set(first)
  min_d = sq_distances(x, first[None])[:, 0]

  def body(i, carry):
    centroids, min_d = carry
    covered = jnp.sum(min_d) <= 0.0
    logits = jnp.where(covered, 0.0, jnp.log(jnp.maximum(min_d, 0.0)))
    pick = jax.random.categorical(jax.random.fold_in(key, i), logits)
    centroids = centroids.at[i].set(x[pick])
    return centroids, jnp.minimum(min_d, sq_distances(x, x[pick][None])[:, 0])

  centroids, _ = jax.lax.fori_loop(1, num_codes, body, (centroids, min_d))
  return centroids


def reseed_empty(codebook: jnp.ndarray, counts: jnp.ndarray, points: jnp.ndarray,
                 errors: jnp.ndarray) -> jnp.ndarray:
  """Moves unused codes onto the worst-quantized points.

  Args:
    codebook: [K, E].
    counts: [K], points assigned to each code; codes with 0 are re-seeded.
    points: [N, E], candidate positions (the residuals each code would quantize).
    errors: [N], each point's current quantization error; the j-th unused code moves to
      the point with the j-th largest error (distinct points, so no new duplicate codes).

  Returns:
    The codebook [K, E] with unused codes replaced.
  """
  k = codebook.shape[0]
  top = min(k, points.shape[0])
  _, worst = jax.lax.top_k(errors, top)
  dead = counts <= 0
  rank = jnp.clip(jnp.cumsum(dead) - 1, 0, top - 1)
  return jnp.where(dead[:, None], points[worst[rank]], codebook)


def kmeans_objective(x: jnp.ndarray, centroids: jnp.ndarray, cfg: CodebookConfig) -> jnp.ndarray:
  """Mean squared distance of x [N, E] to its assigned centroid [K, E] (Lloyd's objective)."""
  dists = sq_distances(x, centroids)
  return jnp.mean(jnp.take_along_axis(dists, assign(dists, cfg)[:, None], axis=1))


def lloyd_step(x: jnp.ndarray, centroids: jnp.ndarray, cfg: CodebookConfig):
  """One Lloyd iteration: x [N, E], centroids [K, E] -> (new centroids [K, E], objective).

  Assign every point (nearest centroid, or Sinkhorn-balanced: balanced k-means), move
  each used centroid to the mean of its points and each empty one onto a worst-fitted
  point. With nearest assignment neither move can raise the objective, so it never
  increases across steps. The objective returned is that of the input centroids (the
  assignment computed here), saving a second assignment per step.
  """
  dists = sq_distances(x, centroids)
  assigned = assign(dists, cfg)
  errors = jnp.take_along_axis(dists, assigned[:, None], axis=1)[:, 0]
  one_hot = jax.nn.one_hot(assigned, centroids.shape[0], dtype=x.dtype)
  counts = jnp.sum(one_hot, axis=0)
  means = (one_hot.T @ x) / jnp.maximum(counts, 1.0)[:, None]
  means = jnp.where(counts[:, None] > 0, means, centroids)
  return reseed_empty(means, counts, x, errors), jnp.mean(errors)


@functools.partial(jax.jit, static_argnames=('cfg', 'num_iters'))
def kmeans(key: jax.Array, x: jnp.ndarray, cfg: CodebookConfig, num_iters: int):
  """k-means++ then `num_iters` Lloyd steps on x [N, E], K = cfg.codebook_size.

  Returns:
    centroids: [K, E].
    objectives: [num_iters + 1], the objective at the seeding and after every step.
  """
  centroids, objectives = jax.lax.scan(lambda c, _: lloyd_step(x, c, cfg),
                                       kmeans_plusplus(key, x, cfg.codebook_size), None,
                                       length=num_iters)
  return centroids, jnp.concatenate([objectives, kmeans_objective(x, centroids, cfg)[None]])


@functools.partial(jax.jit, static_argnames='cfg')
def _next_residual(r: jnp.ndarray, centroids: jnp.ndarray, cfg: CodebookConfig) -> jnp.ndarray:
  return r - centroids[assign(sq_distances(r, centroids), cfg)]


def residual_kmeans(key: jax.Array, z: jnp.ndarray, cfg: CodebookConfig,
                    num_iters: int) -> jnp.ndarray:
  """Residual k-means: z [N, E] -> codebooks [L, K, E], each level fitted on the residuals above.

  Lloyd steps and the residual passed down use the configured assignment rule (nearest,
  or balanced k-means), so the codebooks match how `quantize` will encode. (A Python loop
  over levels of jitted steps: all levels share shapes, so one compilation serves all.)
  """
  codebooks = []
  r = z
  start = time.time()
  for level in range(cfg.num_levels):
    centroids, objectives = kmeans(jax.random.fold_in(key, level), r, cfg, num_iters)
    codebooks.append(centroids)
    r = _next_residual(r, centroids, cfg)
    elapsed = time.time() - start
    logging.info('residual k-means level %d/%d: objective %.4f -> %.4f (%.1fs, ETA %.0fs)',
                 level + 1, cfg.num_levels, float(objectives[0]), float(objectives[-1]), elapsed,
                 elapsed / (level + 1) * (cfg.num_levels - level - 1))
  return jnp.stack(codebooks)


# ------------------------------------------- encode / decode (shared with sid.rqvae)


def apply_mlp(layers: Params, x: jnp.ndarray) -> jnp.ndarray:
  """ReLU MLP, linear last layer."""
  for i in range(len(layers)):
    x = x @ layers[f'layer_{i}']['w'] + layers[f'layer_{i}']['b']
    if i < len(layers) - 1:
      x = jax.nn.relu(x)
  return x


@jax.jit
def latents(params: Params, x: jnp.ndarray) -> jnp.ndarray:
  """z = encoder(x) [N, E]; the identity for residual k-means params."""
  return apply_mlp(params['encoder'], x) if 'encoder' in params else x


def reconstruct(params: Params, z_q: jnp.ndarray) -> jnp.ndarray:
  """x_hat = decoder(z_q) [N, D]; the identity for residual k-means params."""
  return apply_mlp(params['decoder'], z_q) if 'decoder' in params else z_q


@functools.partial(jax.jit, static_argnames='cfg')
def encode(params: Params, x: jnp.ndarray, cfg: CodebookConfig) -> jnp.ndarray:
  """Item embeddings x [N, D] -> codes [N, L] int32 (balanced assignment is over these N)."""
  return quantize(params['codebooks'], latents(params, x), cfg)[0]


@jax.jit
def code_distances(params: Params, x: jnp.ndarray, codes: jnp.ndarray) -> jnp.ndarray:
  """Squared distance of each level's residual to every code: -> [N, L, K].

  Residuals follow the given codes [N, L], so row l says how far each alternative code at
  level l is, with the levels above fixed (what collision re-assignment needs).
  """
  def level(r, inputs):
    codebook, c = inputs
    return r - codebook[c], sq_distances(r, codebook)

  _, dists = jax.lax.scan(level, latents(params, x), (params['codebooks'], codes.T))
  return jnp.swapaxes(dists, 0, 1)


@jax.jit
def decode(params: Params, codes: jnp.ndarray) -> jnp.ndarray:
  """Codes [N, L'] -> reconstructed embeddings [N, D], using the first L' <= L levels."""
  codebooks = params['codebooks']
  z_q = sum(codebooks[level][codes[:, level]] for level in range(codes.shape[1]))
  return reconstruct(params, z_q)


@jax.jit
def reconstruction_error(params: Params, x: jnp.ndarray, codes: jnp.ndarray) -> jnp.ndarray:
  """Mean ||x - decode(codes)||^2 over items x [N, D], codes [N, L']."""
  return jnp.mean(jnp.sum((decode(params, codes) - x) ** 2, axis=-1))
