"""Tests for vstar_jax.train.state: creation, updates, RNG threading, optimizer, finiteness guard."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vstar_jax.train import state as state_lib


def _params():
  return {'dense': {'w': jnp.arange(6, dtype=jnp.float32).reshape(2, 3) / 10,
                    'b': jnp.array([0.5, -0.5, 1.0], jnp.float32)}}


def _sgd():
  return optax.sgd(0.1)


def test_create_starts_at_zero_with_raw_key():
  params = _params()
  state = state_lib.TrainState.create(params, _sgd(), jax.random.key(7), extra={'ref': params})
  assert state.step.dtype == jnp.int32 and int(state.step) == 0
  assert int(state.data_epoch) == 0 and int(state.data_index) == 0
  assert state.rng.dtype == jnp.uint32
  np.testing.assert_array_equal(state.rng, jax.random.key_data(jax.random.key(7)))
  chex.assert_trees_all_equal(state.extra['ref'], params)


def test_create_accepts_raw_key_data_and_defaults_extra():
  raw = jax.random.key_data(jax.random.key(3))
  state = state_lib.TrainState.create(_params(), _sgd(), raw)
  np.testing.assert_array_equal(state.rng, raw)
  assert state.extra == {}


@pytest.mark.parametrize('jit', [False, True])
def test_apply_gradients_matches_manual_optax_update(jit):
  optimizer = state_lib.make_optimizer(1e-2, warmup_steps=2, total_steps=10, weight_decay=0.1)
  params = _params()
  state = state_lib.TrainState.create(params, optimizer, jax.random.key(0))
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.3, params)
  apply = jax.jit(state_lib.apply_gradients, static_argnums=2) if jit else state_lib.apply_gradients
  new = apply(state, grads, optimizer)
  updates, opt_state = optimizer.update(grads, optimizer.init(params), params)
  chex.assert_trees_all_close(new.params, optax.apply_updates(params, updates), atol=0, rtol=1e-6)
  chex.assert_trees_all_close(new.opt_state, opt_state, atol=0, rtol=1e-6)
  assert int(new.step) == 1 and new.step.dtype == jnp.int32
  np.testing.assert_array_equal(new.rng, state.rng)


def test_split_rng_advances_and_is_deterministic():
  state = state_lib.TrainState.create(_params(), _sgd(), jax.random.key(11))
  s1, k1 = state_lib.split_rng(state)
  s1_again, k1_again = state_lib.split_rng(state)
  s2, k2 = state_lib.split_rng(s1)
  np.testing.assert_array_equal(jax.random.key_data(k1), jax.random.key_data(k1_again))
  np.testing.assert_array_equal(s1.rng, s1_again.rng)
  assert not np.array_equal(s1.rng, state.rng)
  assert not np.array_equal(jax.random.key_data(k1), jax.random.key_data(k2))
  expected_rng, expected_key = jax.random.split(jax.random.key(11))
  np.testing.assert_array_equal(s1.rng, jax.random.key_data(expected_rng))
  np.testing.assert_array_equal(jax.random.key_data(k1), jax.random.key_data(expected_key))
  assert s2.rng.dtype == jnp.uint32


def test_lr_schedule_warmup_then_cosine():
  peak, warmup, total = 2e-3, 4, 20
  schedule = state_lib.lr_schedule(peak, warmup, total)
  for t in range(total + 3):
    if t < warmup:
      expected = peak * t / warmup
    elif t <= total:
      expected = peak * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))
    else:
      expected = 0.0
    assert float(schedule(t)) == pytest.approx(expected, rel=1e-5, abs=1e-9), t


@pytest.mark.parametrize('warmup,total', [(5, 5), (-1, 10), (0, 0)])
def test_lr_schedule_rejects_bad_lengths(warmup, total):
  with pytest.raises(ValueError, match='warmup_steps'):
    state_lib.lr_schedule(1e-3, warmup, total)


def _reference_clip_adamw(params, grads_seq, lr, wd, clip, b1, b2, eps=1e-8):
  """NumPy clip-by-global-norm + AdamW (decay on ndim >= 2 only), one step per grads entry."""
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v2 = {k: np.zeros_like(v) for k, v in params.items()}
  for t, grads in enumerate(grads_seq, start=1):
    norm = math.sqrt(sum(float(np.sum(np.square(g))) for g in grads.values()))
    scale = min(1.0, clip / norm)
    for k in params:
      g = np.asarray(grads[k], np.float64) * scale
      m[k] = b1 * m[k] + (1 - b1) * g
      v2[k] = b2 * v2[k] + (1 - b2) * g * g
      update = (m[k] / (1 - b1**t)) / (np.sqrt(v2[k] / (1 - b2**t)) + eps)
      if params[k].ndim >= 2:
        update = update + wd * params[k]
      params[k] = params[k] - lr(t - 1) * update
  return params


def test_make_optimizer_matches_numpy_reference():
  lr_peak, warmup, total, wd, clip, b1, b2 = 1e-2, 2, 6, 0.3, 0.5, 0.8, 0.95
  optimizer = state_lib.make_optimizer(lr_peak, warmup, total, weight_decay=wd, clip_norm=clip,
                                       b1=b1, b2=b2)
  schedule = state_lib.lr_schedule(lr_peak, warmup, total)
  params = {'w': jnp.arange(6, dtype=jnp.float32).reshape(2, 3) - 2.0,
            'b': jnp.array([1.0, -2.0, 3.0], jnp.float32)}
  rng = np.random.default_rng(0)
  grads_seq = [{k: rng.normal(size=p.shape).astype(np.float32) * s for k, p in params.items()}
               for s in (3.0, 0.01, 1.0, 5.0, 0.1)]
  state = state_lib.TrainState.create(params, optimizer, jax.random.key(0))
  for grads in grads_seq:
    state = state_lib.apply_gradients(state, jax.tree.map(jnp.asarray, grads), optimizer)
  expected = _reference_clip_adamw(params, grads_seq, lambda t: float(schedule(t)), wd, clip, b1, b2)
  for k in params:
    np.testing.assert_allclose(state.params[k], expected[k], rtol=1e-5, atol=1e-7)


def test_weight_decay_skips_vectors():
  optimizer = state_lib.make_optimizer(1e-1, warmup_steps=0, total_steps=10, weight_decay=0.5)
  params = _params()
  state = state_lib.TrainState.create(params, optimizer, jax.random.key(0))
  zeros = jax.tree.map(jnp.zeros_like, params)
  new = state_lib.apply_gradients(state, zeros, optimizer)
  np.testing.assert_array_equal(new.params['dense']['b'], params['dense']['b'])
  np.testing.assert_allclose(new.params['dense']['w'], params['dense']['w'] * (1 - 0.1 * 0.5),
                             rtol=1e-6)


def test_frozen_feature_table_is_never_decayed_or_moved():
  optimizer = state_lib.make_optimizer(1e-1, warmup_steps=0, total_steps=10, weight_decay=0.5)
  params = dict(_params(), item_text=jnp.ones((3, 4)))
  state = state_lib.TrainState.create(params, optimizer, jax.random.key(0))
  for _ in range(3):
    state = state_lib.apply_gradients(state, jax.tree.map(jnp.zeros_like, params), optimizer)
  np.testing.assert_array_equal(state.params['item_text'], params['item_text'])
  assert not np.allclose(state.params['dense']['w'], params['dense']['w'])


@pytest.mark.parametrize('jit', [False, True])
def test_is_finite(jit):
  check = jax.jit(state_lib.is_finite) if jit else state_lib.is_finite
  tree = {'a': jnp.ones((2, 3)), 'b': jnp.arange(4, dtype=jnp.int32),
          'c': jnp.ones((2,), jnp.bfloat16)}
  assert bool(check(tree))
  assert bool(check({}))
  assert bool(check({'i': jnp.arange(3)}))
  for key, bad in [('a', jnp.nan), ('a', jnp.inf), ('a', -jnp.inf), ('c', jnp.nan)]:
    broken = dict(tree)
    broken[key] = tree[key].at[1].set(bad)
    assert not bool(check(broken)), (key, bad)
