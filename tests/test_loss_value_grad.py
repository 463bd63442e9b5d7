"""rl.loss with value_grad='heads': the value loss trains the V and Q heads only, its gradient
stopped at the backbone (issue 31's KL experiment, LossConfig.value_grad)."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np

import test_loss
from vstar_jax.model import policy
from vstar_jax.rl import loss as loss_lib

B, L, K, F, D = test_loss.B, test_loss.L, test_loss.K, test_loss.F, 6


def headed_policy(params, candidates: policy.Candidates):
  """A toy policy whose V and Q heads ('value_head', 'q_head') read a shared hidden state."""
  cand, feat = candidates.cand, candidates.history
  hidden = jnp.tanh(feat @ params['backbone']['w'])                               # [B, D]
  prev = jnp.concatenate([jnp.zeros_like(cand[..., :1]), cand[..., :-1]], axis=-1)
  logits = (jnp.einsum('bd,dlk->blk', hidden, params['backbone']['out'])[:, None]
            + params['backbone']['u'][jnp.arange(L), prev])
  token_logp = jnp.take_along_axis(jax.nn.log_softmax(logits), cand[..., None], -1)[..., 0]
  depth_code = jnp.concatenate([jnp.zeros_like(cand[..., :1]), jnp.cumsum(cand, -1)], -1) / K
  values = (hidden @ params['value_head']['v'])[:, None] + params['value_head']['c'] * depth_code
  q = (hidden @ params['q_head']['v'])[:, None] * (1.0 + 0.1 * cand)
  return token_logp, values, q


def _params(rng, scale=1.0):
  normal = lambda *s: jnp.asarray(scale * rng.normal(size=s), jnp.float32)
  return {'backbone': {'w': normal(F, D), 'out': normal(D, L, K), 'u': normal(L, K, K)},
          'value_head': {'v': normal(D, L + 1), 'c': normal(L + 1)},
          'q_head': {'v': normal(D, L)}}


def test_heads_only_value_loss_leaves_the_backbone_gradient_to_the_other_terms():
  rng = np.random.default_rng(0)
  _, _, batch = test_loss.make_problem()
  params, ref_params = _params(rng), _params(rng, 0.2)
  cfg = test_loss.CFG
  grad = jax.jit(jax.grad(lambda p, c: loss_lib.rl_loss(p, ref_params, batch, headed_policy,
                                                        c)[0]), static_argnums=1)
  heads = grad(params, dataclasses.replace(cfg, value_grad='heads'))
  every = grad(params, cfg)
  no_value = grad(params, dataclasses.replace(cfg, w_value=0.0))
  # The backbone gets only the PG and KL gradients; the heads get all of the value loss's.
  chex.assert_trees_all_close(heads['backbone'], no_value['backbone'], rtol=1e-5, atol=1e-6)
  assert not np.allclose(every['backbone']['w'], no_value['backbone']['w'])
  for head in ('value_head', 'q_head'):
    chex.assert_trees_all_close(heads[head], every[head], rtol=1e-5, atol=1e-6)
  # The loss and its metrics do not change.
  loss = lambda c: loss_lib.rl_loss(params, ref_params, batch, headed_policy, c)
  chex.assert_trees_all_close(loss(dataclasses.replace(cfg, value_grad='heads')), loss(cfg),
                              rtol=1e-6)
