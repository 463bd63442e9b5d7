"""Value and Q heads: the MLPs they claim to be, in their own params subtrees, apart from the policy."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.model import decoder
from vstar_jax.model import value_head

CFG = decoder.DecoderConfig(num_levels=3, num_codes=5, max_history=3, num_layers=1, d_model=16,
                            num_heads=2, d_ff=32, dropout=0.0)

forward_train = jax.jit(decoder.forward_train, static_argnums=1)


def test_value_head_is_a_gelu_mlp():
  hidden = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8))
  head = value_head.ValueHead(hidden_dim=6)
  params = head.init(jax.random.PRNGKey(1), hidden)['params']
  values = head.apply({'params': params}, hidden)
  chex.assert_shape(values, (2, 3))
  h, o = params['hidden'], params['out']
  expected = (jax.nn.gelu(hidden @ h['kernel'] + h['bias']) @ o['kernel'] + o['bias'])[..., 0]
  chex.assert_trees_all_close(values, expected, atol=1e-6)


def test_decoder_keeps_value_head_params_apart():
  """Replacing the 'value_head' subtree changes V only; the policy's log-probs stay put."""
  params = jax.jit(decoder.init_params, static_argnums=0)(CFG, jax.random.PRNGKey(0))
  chex.assert_trees_all_equal_structs(
      params['value_head'],
      value_head.ValueHead(CFG.d_model).init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, CFG.d_model)))['params'])
  other = dict(params, value_head=jax.tree.map(lambda x: x + 0.5, params['value_head']))
  history = np.array([[[-1, -1, -1], [0, 1, 2], [3, 4, 0]]] * 2, np.int32)
  target = np.array([[1, 2, 3], [4, 0, 1]], np.int32)
  lp_a, v_a, _ = forward_train(params, CFG, history, target)
  lp_b, v_b, _ = forward_train(other, CFG, history, target)
  chex.assert_trees_all_close(lp_a, lp_b)
  assert np.all(np.abs(v_a - v_b) > 1e-3)


def test_policy_loss_gives_value_head_no_gradient():
  params = jax.jit(decoder.init_params, static_argnums=0)(CFG, jax.random.PRNGKey(1))
  history = np.array([[[0, 1, 2], [1, 2, 3], [3, 4, 0]]], np.int32)
  target = np.array([[1, 2, 3]], np.int32)

  @functools.partial(jax.jit, static_argnums=0)
  def grads(which, p):
    return jax.grad(lambda q: forward_train(q, CFG, history, target)[which].sum())(p)

  policy_grads, value_grads = grads(0, params), grads(1, params)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(policy_grads['value_head']))
  assert all(float(jnp.abs(g).max()) > 0.0 for g in jax.tree.leaves(value_grads['value_head']))


def test_q_head_is_a_gelu_mlp_with_one_value_per_level_code():
  hidden = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 8))
  head = value_head.QHead(num_levels=3, num_codes=5, hidden_dim=6)
  params = head.init(jax.random.PRNGKey(3), hidden, 0)['params']
  params = jax.tree.map(lambda x: x + 0.1 * jnp.arange(x.size).reshape(x.shape) / x.size, params)
  h, o = params['hidden'], params['out']
  every = (jax.nn.gelu(hidden @ h['kernel'] + h['bias']) @ o['kernel'] + o['bias']).reshape(
      2, 4, 3, 5)
  chex.assert_trees_all_close(head.apply({'params': params}, hidden, 1), every[:, :, 1], atol=1e-6)
  level = jnp.array([[0, 1, 2, 2], [2, 1, 0, 0]])
  got = head.apply({'params': params}, hidden, level)
  chex.assert_shape(got, (2, 4, 5))
  chex.assert_trees_all_close(got, jnp.take_along_axis(every, level[..., None, None], 2)[:, :, 0],
                              atol=1e-6)


def test_untrained_q_is_uniform_and_the_policy_gives_it_no_gradient():
  """Q starts at 0 for every code (uninformative: ties fall to the log-prob) and only Q's own
  loss moves it."""
  params = jax.jit(decoder.init_params, static_argnums=0)(CFG, jax.random.PRNGKey(4))
  history = np.array([[[0, 1, 2], [1, 2, 3], [3, 4, 0]]], np.int32)
  target = np.array([[1, 2, 3]], np.int32)
  np.testing.assert_array_equal(forward_train(params, CFG, history, target)[2], 0.0)

  @functools.partial(jax.jit, static_argnums=0)
  def grads(which, p):
    return jax.grad(lambda q: forward_train(q, CFG, history, target)[which].sum())(p)

  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads(0, params)['q_head']))
  assert float(jnp.abs(grads(2, params)['q_head']['out']['kernel']).max()) > 0.0
