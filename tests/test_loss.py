"""Tests for vstar_jax.rl.loss: loss terms, zero gradient of no-hit groups, sharding.

Run as a script (`python tests/test_loss.py OUT_DIR`) this module performs the
sharded-vs-single-device comparison on 4 simulated CPU devices and saves the results;
`test_sharded_update_equals_single_device` starts it in a subprocess because
XLA_FLAGS must be set before jax initializes.
"""

import dataclasses
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vstar_jax.rl import advantages
from vstar_jax.rl import rewards
from jax.sharding import PartitionSpec as P

from vstar_jax import parallel
from vstar_jax.model import policy
from vstar_jax.rl import loss as loss_lib

B, G, L, K, F = 8, 6, 3, 4, 5
CFG = loss_lib.LossConfig(clip_eps=0.2, w_sib=0.7, kl_beta=0.1, w_value=0.5)
# The sharded comparison also runs the supervised anchor (its NLL mean must be global too).
SHARDED_CFG = loss_lib.LossConfig(clip_eps=0.2, w_sib=0.7, kl_beta=0.1, w_value=0.5, w_sft=0.3)
NUM_STEPS = 3


def toy_policy(params, candidates: policy.Candidates):
  """Tiny autoregressive policy: logits from user features (its `history`: [B, F] float) plus the
  previous code."""
  cand, feat = candidates.cand, candidates.history
  prev = jnp.concatenate([jnp.zeros_like(cand[..., :1]), cand[..., :-1]], axis=-1)
  logits = (jnp.einsum('bf,flk->blk', feat, params['w'])[:, None]
            + params['u'][jnp.arange(L), prev])
  token_logp = jnp.take_along_axis(jax.nn.log_softmax(logits), cand[..., None], -1)[..., 0]
  depth_code = jnp.concatenate([jnp.zeros_like(cand[..., :1]), jnp.cumsum(cand, -1)], -1) / K
  values = (jnp.einsum('bf,fd->bd', feat, params['v'])[:, None]
            + params['c'] * depth_code)
  q = values[..., 1:] * (1.0 + 0.1 * cand)
  return token_logp, values, q


def _params(rng, scale=1.0):
  shapes = {'w': (F, L, K), 'u': (L, K, K), 'v': (F, L + 1), 'c': (L + 1,)}
  return {k: jnp.asarray(scale * rng.normal(size=s), jnp.float32) for k, s in shapes.items()}


def make_problem(seed=0):
  """Params, reference params and a scored rollout batch with ragged validity."""
  rng = np.random.default_rng(seed)
  params = _params(rng)
  ref_params = jax.tree.map(lambda p, n: p + n, params, _params(rng, 0.2))
  old_params = jax.tree.map(lambda p, n: p + n, params, _params(rng, 0.3))
  cand = rng.integers(0, K, size=(B, G, L)).astype(np.int32)
  valid = rng.random((B, G)) < 0.75
  valid[:, 0] = True
  valid[1] = [True, False, False, False, False, False]  # shards get unequal token counts
  target = rng.integers(0, K, size=(B, L)).astype(np.int32)
  hit_users = rng.random(B) < 0.6
  target[hit_users] = cand[hit_users, 0]
  candidates = policy.Candidates(history=rng.normal(size=(B, F)).astype(np.float32), cand=cand,
                                 valid=valid)
  return params, ref_params, jax.device_get(_score_rollout(old_params, candidates, target))


@jax.jit
def _score_rollout(old_params, candidates, target) -> loss_lib.LossBatch:
  """Rollout log-probs, advantages and value targets, as the RL loop computes them."""
  cand, valid = candidates.cand, candidates.valid
  old_logp, old_values, _ = toy_policy(old_params, candidates)
  reward = rewards.ranking_reward(cand, valid, target, old_logp.sum(-1))
  level, _ = rewards.prefix_reward(cand, valid, target)
  return loss_lib.LossBatch(candidates=candidates, old_logp=old_logp,
                            group_adv=advantages.group_advantages(reward, valid),
                            sibling_adv=advantages.sibling_advantages(cand, reward, valid),
                            value_targets=rewards.value_targets(level, old_values, valid),
                            target=target)


def _loss_reference(params, ref_params, batch, cfg):
  """The objective written out in numpy, token by token."""
  logp, values, q = jax.device_get(jax.jit(toy_policy)(params, batch.candidates))
  ref_logp = jax.device_get(jax.jit(toy_policy)(ref_params, batch.candidates)[0])
  terms = {'grpo': [], 'sib': [], 'kl': [], 'value': [], 'q': []}
  for b in range(B):
    for g in range(G):
      if not batch.candidates.valid[b, g]:
        continue
      terms['value'].extend((values[b, g] - batch.value_targets[b, g]) ** 2)
      terms['q'].extend((q[b, g] - batch.value_targets[b, g, 1:]) ** 2)   # Q(y_<l, y_l) ~ V(l+1)
      for l in range(L):
        ratio = np.exp(logp[b, g, l] - batch.old_logp[b, g, l])
        clipped = np.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps)
        a = batch.group_adv[b, g]
        terms['grpo'].append(-min(ratio * a, clipped * a))
        s = batch.sibling_adv[b, g, l]
        if s != 0:
          terms['sib'].append(-min(ratio * s, clipped * s))
        d = ref_logp[b, g, l] - logp[b, g, l]
        terms['kl'].append(np.exp(d) - d - 1)
  means = {k: np.mean(v) for k, v in terms.items()}
  total = (means['grpo'] + cfg.w_sib * means['sib'] + cfg.kl_beta * means['kl']
           + cfg.w_value * (means['value'] + means['q']))
  return total, means


def test_rl_loss_matches_reference_terms():
  params, ref_params, batch = make_problem()
  loss, metrics = jax.jit(loss_lib.rl_loss, static_argnums=(3, 4))(
      params, ref_params, batch, toy_policy, CFG)
  total, means = _loss_reference(params, ref_params, batch, CFG)
  np.testing.assert_allclose(loss, total, rtol=1e-5)
  for key, name in [('grpo', 'grpo_loss'), ('sib', 'sibling_loss'), ('kl', 'kl'),
                    ('value', 'value_loss'), ('q', 'q_loss')]:
    np.testing.assert_allclose(metrics[name], means[key], rtol=1e-5, err_msg=name)
  assert 0.0 < float(metrics['clip_frac']) < 1.0
  assert 0.0 < float(metrics['sibling_frac']) < 1.0


def _pg_grad(params, ref_params, batch, rows):
  """Gradient of the policy-gradient terms (GRPO + sibling) on a subset of users."""
  cfg = loss_lib.LossConfig(clip_eps=0.2, w_sib=1.0, kl_beta=0.0, w_value=0.0)
  sub = jax.tree.map(lambda x: x[rows], batch)
  return jax.jit(jax.grad(lambda p: loss_lib.rl_loss(p, ref_params, sub, toy_policy, cfg)[0]))(
      params)


def test_no_hit_group_has_zero_policy_gradient():
  params, ref_params, batch = make_problem()
  cand, valid = batch.candidates.cand, batch.candidates.valid
  target = cand[:, 0].copy()
  target[0] = K  # code K never occurs: user 0 has no hit, user 2 hits
  reward = jax.jit(rewards.ranking_reward)(cand, valid, target, batch.old_logp.sum(-1))
  batch = batch.replace(
      group_adv=np.asarray(jax.jit(advantages.group_advantages)(reward, valid)),
      sibling_adv=np.asarray(jax.jit(advantages.sibling_advantages)(cand, reward, valid)))
  assert not batch.group_adv[0].any() and not batch.sibling_adv[0].any()
  no_hit = _pg_grad(params, ref_params, batch, np.array([0]))
  chex.assert_trees_all_equal(no_hit, jax.tree.map(jnp.zeros_like, no_hit))
  hit = _pg_grad(params, ref_params, batch, np.array([2]))
  assert float(optax.tree.norm(hit)) > 1e-3


def _reference_updates(params, ref_params, batch, optimizer):
  """Plain (unsharded, un-shard_mapped) steps: the single-device ground truth."""
  opt_state = optimizer.init(params)
  grad_fn = jax.jit(jax.grad(lambda p: loss_lib.rl_loss(p, ref_params, batch, toy_policy,
                                                        SHARDED_CFG),
                             has_aux=True))
  metrics = []
  for _ in range(NUM_STEPS):
    grads, m = grad_fn(params)
    m['grad_norm'] = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics.append(m)
  return params, metrics


def _optimizer():
  return optax.sgd(0.1, momentum=0.9)  # not scale-invariant: a wrong grad scale shows


def _sharded_step(mesh):
  """local_update under shard_map over the mesh's 'data' axis, as the RL iteration runs it."""
  def shard_step(state, ref_params, batch):
    params, opt_state = state
    params, opt_state, metrics = loss_lib.local_update(params, ref_params, opt_state, batch,
                                                       toy_policy, _optimizer(), SHARDED_CFG)
    return (params, opt_state), metrics

  return jax.jit(jax.shard_map(shard_step, mesh=mesh, in_specs=(P(), P(), P(parallel.DATA_AXIS)),
                               out_specs=(P(), P()), check_vma=False))


def run_sharded_comparison(out_dir):
  """Runs NUM_STEPS updates unsharded, on a 1-device mesh and on a 4-device mesh."""
  devices = jax.devices()
  assert len(devices) == 4, devices
  params, ref_params, batch = make_problem()
  results = {}
  final, metrics = _reference_updates(params, ref_params, batch, _optimizer())
  results['reference'] = (final, metrics)
  for name, devs in [('one', devices[:1]), ('four', devices)]:
    mesh = parallel.make_mesh(devs)
    step = _sharded_step(mesh)
    state = parallel.replicate((params, _optimizer().init(params)), mesh)
    sharded_batch = parallel.shard_batch(batch, mesh)
    metrics = []
    for _ in range(NUM_STEPS):
      state, m = step(state, parallel.replicate(ref_params, mesh), sharded_batch)
      metrics.append(m)
    assert len(sharded_batch.candidates.cand.sharding.device_set) == len(devs)
    results[name] = (state[0], metrics)
  arrays = {'initial/' + k: np.asarray(v) for k, v in params.items()}
  for name, (final, metrics) in results.items():
    arrays.update({f'{name}/params/{k}': np.asarray(v) for k, v in final.items()})
    for key in metrics[0]:
      arrays[f'{name}/metrics/{key}'] = np.array([float(m[key]) for m in metrics])
  np.savez(os.path.join(out_dir, 'results.npz'), **arrays)


def test_sharded_update_equals_single_device(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  res = dict(np.load(tmp_path / 'results.npz'))
  keys = [k.split('/', 1)[1] for k in res if k.startswith('reference/')]
  assert len(keys) == 4 + 11
  for name in ('one', 'four'):
    for key in keys:
      np.testing.assert_allclose(res[f'{name}/{key}'], res[f'reference/{key}'], rtol=2e-5,
                                 atol=1e-6, err_msg=f'{name}/{key}')
  # The comparison is not vacuous: parameters moved and the clipped / sibling paths ran.
  moved = max(np.abs(res[f'four/params/{k}'] - res[f'initial/{k}']).max() for k in 'wuvc')
  assert moved > 1e-2
  assert res['four/metrics/clip_frac'].max() > 0
  assert res['four/metrics/sibling_frac'].min() > 0


def test_supervised_anchor_adds_the_target_nll():
  """w_sft adds w_sft * (mean NLL per token of each user's logged target), computed token by
  token here, to the otherwise unchanged objective; its gradient raises the targets' log-prob."""
  params, ref_params, batch = make_problem()
  anchored = loss_lib.LossConfig(clip_eps=0.2, w_sib=0.7, kl_beta=0.1, w_value=0.5, w_sft=0.3)
  loss_fn = jax.jit(loss_lib.rl_loss, static_argnums=(3, 4))
  base, _ = loss_fn(params, ref_params, batch, toy_policy, CFG)
  loss, metrics = loss_fn(params, ref_params, batch, toy_policy, anchored)
  one = policy.Candidates(history=batch.candidates.history, cand=batch.target[:, None, :],
                          valid=np.ones((B, 1), bool))
  target_logp = np.asarray(jax.jit(toy_policy)(params, one)[0])            # [B, 1, L]
  nll = -np.mean(target_logp)
  np.testing.assert_allclose(metrics['sft_nll'], nll, rtol=1e-5)
  np.testing.assert_allclose(loss, base + 0.3 * nll, rtol=1e-5)
  only_anchor = loss_lib.LossConfig(clip_eps=0.2, w_sib=0.0, kl_beta=0.0, w_value=0.0, w_sft=1.0)
  zero_adv = batch.replace(group_adv=np.zeros_like(batch.group_adv),
                           sibling_adv=np.zeros_like(batch.sibling_adv))
  grads = jax.jit(jax.grad(lambda p: loss_lib.rl_loss(p, ref_params, zero_adv, toy_policy,
                                                      only_anchor)[0]))(params)
  stepped = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
  assert np.mean(np.asarray(jax.jit(toy_policy)(stepped, one)[0])) > -nll


def test_policy_gradient_weight_scales_only_the_pg_terms():
  """w_pg multiplies GRPO + w_sib * sibling and nothing else: at w_pg = 0 (the anchor-only
  control) the loss and its gradient do not depend on the advantages; at w_pg = 2 the loss
  grows by exactly the PG terms once more."""
  params, ref_params, batch = make_problem()
  loss_fn = jax.jit(loss_lib.rl_loss, static_argnums=(3, 4))
  base, metrics = loss_fn(params, ref_params, batch, toy_policy, CFG)
  pg = metrics['grpo_loss'] + CFG.w_sib * metrics['sibling_loss']
  assert abs(float(pg)) > 1e-4                      # the check below can fail
  doubled, _ = loss_fn(params, ref_params, batch, toy_policy, dataclasses.replace(CFG, w_pg=2.0))
  np.testing.assert_allclose(doubled, base + pg, rtol=1e-5, atol=1e-6)
  control = dataclasses.replace(CFG, w_pg=0.0, w_sft=1.0)
  flipped = batch.replace(group_adv=-batch.group_adv, sibling_adv=3.0 * batch.sibling_adv)
  assert_same_loss_and_grad(params, ref_params, control, batch, flipped)


def assert_same_loss_and_grad(params, ref_params, cfg, batch, other):
  """rl_loss under cfg gives the same value and gradient on both batches."""
  def loss(p, b):
    return loss_lib.rl_loss(p, ref_params, b, toy_policy, cfg)[0]
  loss_and_grad = jax.jit(jax.value_and_grad(loss))
  (value, grads), (other_value, other_grads) = loss_and_grad(params, batch), loss_and_grad(
      params, other)
  np.testing.assert_allclose(value, other_value, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               grads, other_grads)


def test_negative_weight_scales_only_the_negative_advantages():
  """negative_weight w equals handing the paper's loss advantages whose negative entries are
  multiplied by w; at w = 0 loss and gradient ignore the negative advantages entirely."""
  params, ref_params, batch = make_problem()
  assert (batch.group_adv < 0).any() and (batch.sibling_adv < 0).any()
  loss_fn = jax.jit(loss_lib.rl_loss, static_argnums=(3, 4))

  def scaled(b, w):
    return b.replace(**{k: np.where(getattr(b, k) < 0, w * getattr(b, k), getattr(b, k))
                        for k in ('group_adv', 'sibling_adv')})

  half = dataclasses.replace(CFG, negative_weight=0.5)
  manual, _ = loss_fn(params, ref_params, scaled(batch, 0.5), toy_policy, CFG)
  np.testing.assert_allclose(loss_fn(params, ref_params, batch, toy_policy, half)[0], manual,
                             rtol=1e-6)
  assert abs(float(manual) - float(loss_fn(params, ref_params, batch, toy_policy, CFG)[0])) > 1e-5
  positive_only = dataclasses.replace(CFG, negative_weight=0.0)
  deeper = scaled(batch, 7.0)                        # only the negative advantages change
  assert_same_loss_and_grad(params, ref_params, positive_only, batch, deeper)


if __name__ == '__main__':
  run_sharded_comparison(sys.argv[1])
