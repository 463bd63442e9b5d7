"""Value head: the MLP it claims to be, in its own params subtree, separable from the policy."""

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
  lp_a, v_a = forward_train(params, CFG, history, target)
  lp_b, v_b = forward_train(other, CFG, history, target)
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
