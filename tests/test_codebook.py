"""Tests for vstar_jax.sid.codebook: k-means, Sinkhorn assignment, RQ-VAE."""

import dataclasses
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vstar_jax.sid import codebook
from vstar_jax.sid import rqvae


def _clustered(num_points=240, dim=16, num_clusters=12, noise=0.15, seed=0):
  """Points around random unit centres, [N, D] float32."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((num_clusters, dim))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  labels = rng.integers(0, num_clusters, num_points)
  return (centres[labels] + noise * rng.standard_normal((num_points, dim))).astype(np.float32)


# Jitted wrappers: eager calls would compile every primitive separately.
_kmeans_pp = jax.jit(codebook.kmeans_plusplus, static_argnums=2)
_NEAREST = codebook.CodebookConfig(codebook_size=16)
_lloyd_step = jax.jit(codebook.lloyd_step, static_argnums=2)
_objective = jax.jit(codebook.kmeans_objective, static_argnums=2)


def test_sq_distances_match_brute_force():
  rng = np.random.default_rng(0)
  x, c = rng.standard_normal((7, 5)), rng.standard_normal((4, 5))
  want = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
  chex.assert_trees_all_close(codebook.sq_distances(jnp.asarray(x), jnp.asarray(c)), want,
                              atol=1e-5)


def test_kmeans_plusplus_picks_distinct_data_points():
  x = jnp.asarray(_clustered())
  centroids = np.asarray(_kmeans_pp(jax.random.PRNGKey(1), x, 16))
  rows = {tuple(r) for r in np.asarray(x).tolist()}
  assert all(tuple(c) in rows for c in centroids.tolist())
  assert len({tuple(c) for c in centroids.tolist()}) == 16


def test_kmeans_plusplus_with_fewer_distinct_points_than_codes():
  x = jnp.asarray(np.repeat(np.eye(3, dtype=np.float32), 4, axis=0))
  centroids = np.asarray(_kmeans_pp(jax.random.PRNGKey(0), x, 8))
  assert np.all(np.isfinite(centroids))
  assert {tuple(c) for c in centroids.tolist()} == {tuple(r) for r in np.eye(3).tolist()}


def test_lloyd_step_matches_numpy_reference():
  x = _clustered(num_points=60, dim=4, num_clusters=3)
  init = x[:5].copy()
  nearest = ((x[:, None] - init[None]) ** 2).sum(-1).argmin(1)
  want = np.stack([x[nearest == k].mean(0) for k in range(5)])
  assert all(np.any(nearest == k) for k in range(5))
  chex.assert_trees_all_close(_lloyd_step(jnp.asarray(x), jnp.asarray(init), _NEAREST)[0], want,
                              atol=1e-5)


def test_lloyd_step_reseeds_empty_cluster_on_worst_point():
  x = jnp.asarray([[0.0], [0.1], [5.0], [9.0]])
  init = jnp.asarray([[0.05], [5.0], [100.0]])  # code 2 is empty.
  new, objective = _lloyd_step(x, init, _NEAREST)
  np.testing.assert_allclose(objective, (0.05**2 * 2 + 16.0) / 4, rtol=1e-5)
  # Point 9.0 (error 16 from 5.0) is worst: the empty code moves onto it.
  chex.assert_trees_all_close(new, np.array([[0.05], [7.0], [9.0]], np.float32), atol=1e-6)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_kmeans_objective_never_increases(seed):
  x = jnp.asarray(_clustered(seed=seed))
  _, objectives = codebook.kmeans(jax.random.PRNGKey(seed), x, _NEAREST, 15)
  objectives = np.asarray(objectives)
  assert objectives.shape == (16,)
  assert np.all(np.diff(objectives) <= 1e-6 * objectives[0])
  assert objectives[-1] < objectives[0]


def test_kmeans_objective_never_increases_with_empty_clusters():
  x = jnp.asarray(_clustered(num_points=100, dim=3))
  c = jnp.concatenate([x[:4], jnp.full((4, 3), 50.0)])  # four codes far from everything.
  previous = float(_objective(x, c, _NEAREST))
  for _ in range(10):
    c, objective = _lloyd_step(x, c, _NEAREST)
    np.testing.assert_allclose(objective, previous, rtol=1e-5)
    current = float(_objective(x, c, _NEAREST))
    assert current <= previous + 1e-6
    previous = current
  assert np.all(np.asarray(c) < 50.0)


def test_sinkhorn_recovers_optimal_assignment():
  rng = np.random.default_rng(3)
  dists = rng.random((5, 5)).astype(np.float32)
  best = min(itertools.permutations(range(5)), key=lambda p: sum(dists[i, p[i]] for i in range(5)))
  got = codebook.sinkhorn_assign(jnp.asarray(dists), eps=0.01, num_iters=500)
  np.testing.assert_array_equal(got, best)


def test_sinkhorn_balances_a_collapsed_assignment():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((512, 8)).astype(np.float32)
  codes = np.concatenate([np.zeros((1, 8)), rng.standard_normal((15, 8)) * 3]).astype(np.float32)
  dists = codebook.sq_distances(jnp.asarray(x), jnp.asarray(codes))
  nearest = np.bincount(np.asarray(jnp.argmin(dists, 1)), minlength=16)
  balanced = np.bincount(np.asarray(codebook.sinkhorn_assign(dists, 0.05, 100)), minlength=16)
  assert nearest.max() > 200  # the code at the origin takes most points.
  assert balanced.min() > 0 and balanced.max() <= 2 * 512 // 16


def test_balanced_kmeans_evens_out_cluster_sizes():
  x = jnp.asarray(_clustered(num_clusters=3))  # 3 true clusters for 16 codes.
  balanced = codebook.CodebookConfig(codebook_size=16, sinkhorn_iters=50)
  sizes = {}
  for name, cfg in (('nearest', _NEAREST), ('balanced', balanced)):
    centroids, _ = codebook.kmeans(jax.random.PRNGKey(0), x, cfg, 15)
    one_level = dataclasses.replace(cfg, num_levels=1)
    codes = codebook.encode({'codebooks': centroids[None]}, x, one_level)
    sizes[name] = np.bincount(np.asarray(codes[:, 0]), minlength=16)
  assert sizes['balanced'].min() > 0
  spread = {name: s.max() - s.min() for name, s in sizes.items()}
  assert spread['balanced'] < spread['nearest']
  assert sizes['balanced'].max() <= 2 * 240 // 16


def test_residual_quantization_error_falls_with_levels():
  x = jnp.asarray(_clustered(noise=0.3))
  cfg = codebook.CodebookConfig(num_levels=3, codebook_size=16)
  params = {'codebooks': codebook.residual_kmeans(jax.random.PRNGKey(0), x, cfg, 15)}
  codes = codebook.encode(params, x, cfg)
  chex.assert_shape(codes, (240, 3))
  errors = [float(codebook.reconstruction_error(params, x, codes[:, :l])) for l in range(1, 4)]
  first = float(jnp.mean(jnp.sum((x - x.mean(0)) ** 2, -1)))
  assert first > errors[0] > errors[1] > errors[2]


def _small_rqvae(sinkhorn_iters=0):
  return codebook.CodebookConfig(num_levels=3, codebook_size=16, hidden_dims=(32,), latent_dim=8,
                                 sinkhorn_iters=sinkhorn_iters)


# Jitted, so the tests do not pay op-by-op compilation; one shape for every RQ-VAE test.
_loss_grad = jax.jit(jax.grad(rqvae.rqvae_loss, has_aux=True), static_argnums=2)
_RQ_X = _clustered(num_points=256, noise=0.3)


def test_straight_through_gradients_are_finite_and_reach_the_encoder():
  x = jnp.asarray(_RQ_X)
  cfg = _small_rqvae()
  params = rqvae.init_rqvae(jax.random.PRNGKey(0), x.shape[1], cfg)
  grads, metrics = _loss_grad(params, x, cfg)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert np.isfinite(float(metrics['loss']))
  # The reconstruction term reaches the encoder only through the straight-through path,
  # and never the codebooks (they learn from the codebook loss).
  recon_grads = jax.jit(jax.grad(lambda p: rqvae.rqvae_loss(p, x, cfg)[1]['recon']))(params)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(recon_grads['encoder']))
  assert float(jnp.abs(recon_grads['codebooks']).max()) == 0.0


def test_rqvae_training_lowers_loss_and_reconstruction_improves_with_levels():
  x = jnp.asarray(_RQ_X)
  cfg = _small_rqvae(sinkhorn_iters=20)
  params, history = rqvae.fit_rqvae(jax.random.PRNGKey(0), x, cfg, steps=300, batch_size=128,
                                       learning_rate=3e-3, kmeans_iters=10, reseed_every=100,
                                       log_every=100)
  assert history['step'] == [100, 200, 300]
  assert history['loss'][-1] < history['loss'][0]
  codes = codebook.encode(params, x, cfg)
  errors = [float(codebook.reconstruction_error(params, x, codes[:, :l])) for l in range(1, 4)]
  assert errors[0] > errors[1] > errors[2]


def test_train_step_matches_manual_adam_update():
  x = jnp.asarray(_RQ_X)
  cfg = _small_rqvae()
  params = rqvae.init_rqvae(jax.random.PRNGKey(0), x.shape[1], cfg)
  optimizer = optax.adam(1e-2)
  grads, _ = _loss_grad(params, x, cfg)
  opt_state = jax.jit(optimizer.init)(params)
  want = jax.jit(lambda p, g, s: optax.apply_updates(p, optimizer.update(g, s, p)[0]))(
      params, grads, opt_state)
  step = rqvae.make_train_step(cfg, optimizer)
  got, _, metrics = step(params, opt_state, x)  # Donates params and opt_state.
  chex.assert_trees_all_close(got, want, atol=1e-6)
  assert set(metrics) == {'loss', 'recon', 'codebook', 'commit', 'batch_usage'}


def test_reseed_dead_codes_moves_unused_codes_onto_worst_points():
  x = jnp.asarray(_clustered())
  cfg = codebook.CodebookConfig(num_levels=2, codebook_size=16)
  codebooks = codebook.residual_kmeans(jax.random.PRNGKey(0), x, cfg, 15)
  codebooks = codebooks.at[0, 3].set(1e3)  # level-1 code 3 is now dead.
  params, reseeded = rqvae.reseed_dead_codes({'codebooks': codebooks}, x, cfg)
  np.testing.assert_array_equal(reseeded, [1, 0])
  codes = codebook.encode({'codebooks': codebooks}, x, cfg)
  errors = np.sum((np.asarray(x) - np.asarray(codebooks)[0][np.asarray(codes)[:, 0]]) ** 2, -1)
  chex.assert_trees_all_close(params['codebooks'][0, 3], x[np.argmax(errors)])
  assert 3 in np.asarray(codebook.encode(params, x, cfg)[:, 0])


def test_code_distances_follow_the_given_codes():
  x = _clustered()
  cfg = codebook.CodebookConfig(num_levels=2, codebook_size=16)
  params = {'codebooks': codebook.residual_kmeans(jax.random.PRNGKey(0), jnp.asarray(x), cfg, 15)}
  codes = codebook.encode(params, jnp.asarray(x), cfg)
  dists = np.asarray(codebook.code_distances(params, jnp.asarray(x), codes))
  chex.assert_shape(dists, (240, 2, 16))
  books = np.asarray(params['codebooks'])
  residual = x - books[0][np.asarray(codes)[:, 0]]
  want = ((residual[:, None, :] - books[1][None]) ** 2).sum(-1)
  np.testing.assert_allclose(dists[:, 1], want, atol=1e-4)
  np.testing.assert_array_equal(jnp.argmin(dists, -1), codes)
