"""Sibling-GRPO loss and the data-parallel update step (design Sec. 1.2 and Sec. 6).

The loss is written against a generic `policy_fn(params, batch) -> (token_logp, values)`
so any decoder (or a toy policy in tests) can be plugged in. The update step is one code
path for any number of devices: `jax.shard_map` over a 1-D mesh with a 'data' axis, batch
sharded on its leading axis, parameters and optimizer state replicated.

Gradient scheme (the Sec. 6 trap): the step runs with `check_vma=False`, so a shard's
gradient w.r.t. the replicated parameters is its local gradient only. Every mean in the
loss divides a shard-local sum by the *global* count (`lax.psum` of the counts), so a
shard's loss is its share of the global-batch loss; `lax.psum` of the shards' gradients
(and metrics) is then exactly the single-device gradient of the whole batch, even when
shards hold different numbers of valid tokens. tests/test_update.py checks this equality
on 4 simulated devices. `local_update` is that per-shard step, so a caller that runs more
per-device work in the same `shard_map` (the RL loop: rollout, scoring, then updates) reuses it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'

PolicyFn = Callable[[Any, dict], tuple[jnp.ndarray, jnp.ndarray]]


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Coefficients of the Sibling-GRPO objective.

  Attributes:
    clip_eps: PPO clip range of the ratio to the rollout policy.
    w_sib: weight of the sibling loss.
    kl_beta: weight of the k3 KL(pi || pi_ref) penalty (MiniOneRec / V-STAR: 1e-3).
    w_value: weight of the value-head MSE.
  """
  clip_eps: float = 0.2
  w_sib: float = 1.0
  kl_beta: float = 1e-3
  w_value: float = 0.5


@flax.struct.dataclass
class RLState:
  """Replicated training state; `ref_params` is the frozen reference policy of the KL."""
  step: jnp.ndarray
  params: Any
  ref_params: Any
  opt_state: Any


def init_state(params: Any, optimizer: optax.GradientTransformation,
               ref_params: Optional[Any] = None) -> RLState:
  """Initial state; the reference defaults to a copy of `params` (the SFT policy)."""
  if ref_params is None:
    ref_params = jax.tree.map(jnp.copy, params)
  return RLState(step=jnp.zeros((), jnp.int32), params=params, ref_params=ref_params,
                 opt_state=optimizer.init(params))


def global_mean(x: jnp.ndarray, mask: jnp.ndarray, axis_name: Optional[str]) -> jnp.ndarray:
  """Mean of x over mask across the whole batch; under `axis_name` this shard's share."""
  mask = mask.astype(jnp.float32)
  count = jnp.sum(mask)
  if axis_name is not None:
    count = lax.psum(count, axis_name)
  return jnp.sum(x * mask) / jnp.maximum(lax.stop_gradient(count), 1.0)


def _clipped_pg(ratio: jnp.ndarray, adv: jnp.ndarray, clip_eps: float) -> jnp.ndarray:
  """PPO clipped surrogate, negated to a per-token loss."""
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  return -jnp.minimum(ratio * adv, clipped * adv)


def rl_loss(params: Any, ref_params: Any, batch: dict, policy_fn: PolicyFn, cfg: LossConfig,
            axis_name: Optional[str] = None):
  """Sibling-GRPO objective: GRPO + w_sib * sibling PG + beta * KL + w_v * value MSE.

  Args:
    params: policy parameters (differentiated).
    ref_params: frozen reference parameters for the KL term.
    batch: dict with at least
      cand: [B, G, L] int32 candidates (plus whatever `policy_fn` reads),
      valid: [B, G] bool,
      old_logp: [B, G, L] rollout-policy log-probs of the candidate tokens,
      group_adv: [B, G] z-scored group advantages (broadcast to all L tokens), or
        [B, G, L] per-token advantages (the alpha-blend of group and sibling advantages),
      sibling_adv: [B, G, L] sibling advantages A(y_<l, y_l),
      value_targets: [B, G, L+1] value-head targets.
    policy_fn: (params, batch) -> (token_logp [B, G, L], values [B, G, L+1]).
    cfg: loss coefficients.
    axis_name: mesh axis the batch is sharded over, or None. With an axis every mean
      uses the global count, so the returned loss and metrics are this shard's share
      and sum to the global values over the axis.

  Returns:
    (loss, metrics) where every term is a mean over valid tokens (GRPO, KL, value,
    clip fraction, nll), the sibling loss a mean over valid tokens with a non-zero
    sibling advantage. `nll` is the mean negative log-prob of the candidate tokens
    (the policy's full entropy is not available from token log-probs).
  """
  token_logp, values = policy_fn(params, batch)
  ref_logp, _ = policy_fn(ref_params, batch)
  ref_logp = lax.stop_gradient(ref_logp)
  valid = batch['valid']
  token_mask = jnp.broadcast_to(valid[..., None], token_logp.shape)
  ratio = jnp.exp(token_logp - batch['old_logp'])

  group_adv = batch['group_adv']
  if group_adv.ndim == valid.ndim:
    group_adv = group_adv[..., None]
  group_adv = jnp.broadcast_to(group_adv, token_logp.shape)
  grpo = global_mean(_clipped_pg(ratio, group_adv, cfg.clip_eps), token_mask, axis_name)
  sibling_adv = batch['sibling_adv']
  sibling_mask = token_mask & (sibling_adv != 0)
  sibling = global_mean(_clipped_pg(ratio, sibling_adv, cfg.clip_eps), sibling_mask, axis_name)
  log_ratio_ref = ref_logp - token_logp
  kl = global_mean(jnp.exp(log_ratio_ref) - log_ratio_ref - 1.0, token_mask, axis_name)
  value_mask = jnp.broadcast_to(valid[..., None], values.shape)
  value = global_mean((values - batch['value_targets']) ** 2, value_mask, axis_name)
  loss = grpo + cfg.w_sib * sibling + cfg.kl_beta * kl + cfg.w_value * value

  clipped = (((ratio < 1.0 - cfg.clip_eps) & (group_adv < 0))
             | ((ratio > 1.0 + cfg.clip_eps) & (group_adv > 0)))
  metrics = {
      'loss': loss,
      'grpo_loss': grpo,
      'sibling_loss': sibling,
      'kl': kl,
      'value_loss': value,
      'clip_frac': global_mean(clipped, token_mask, axis_name),
      'sibling_frac': global_mean(sibling_adv != 0, token_mask, axis_name),
      'nll': global_mean(-token_logp, token_mask, axis_name),
  }
  return loss, jax.tree.map(lax.stop_gradient, metrics)


def make_mesh(devices=None) -> Mesh:
  """1-D mesh with a 'data' axis over `devices` (default: all devices of all hosts)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Assembles each host's rows of the batch into global arrays sharded on the leading axis.

  With one process this is a device_put (device-resident rollouts stay on device).
  """
  return jax.make_array_from_process_local_data(NamedSharding(mesh, P(DATA_AXIS)), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Copies a pytree (e.g. the RLState) to every device of the mesh.

  Always a copy, so donating the result to the update step never deletes the caller's
  arrays (e.g. the SFT parameters it started from). The explicit `jnp.copy` is needed:
  in jax 0.10.2 `device_put(..., may_alias=False)` onto several devices still reuses
  the source buffer as the shard on its own device.
  """
  return jax.device_put(jax.tree.map(jnp.copy, tree), NamedSharding(mesh, P()))


def local_update(state: RLState, batch: dict, policy_fn: PolicyFn,
                 optimizer: optax.GradientTransformation, cfg: LossConfig,
                 axis_name: str = DATA_AXIS) -> tuple[RLState, dict]:
  """One optimizer step on this shard's rows, inside `shard_map(..., check_vma=False)` over `axis_name`.

  Grads and metrics are `lax.psum`-ed over the axis (see the module docstring), so every
  shard applies the same update and returns the global metrics.
  """
  def loss_fn(params):
    return rl_loss(params, state.ref_params, batch, policy_fn, cfg, axis_name=axis_name)

  grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
  grads = lax.psum(grads, axis_name)
  metrics = lax.psum(metrics, axis_name)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics['grad_norm'] = optax.tree.norm(grads)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_update_step(policy_fn: PolicyFn, optimizer: optax.GradientTransformation,
                     cfg: LossConfig, mesh: Mesh):
  """Jitted data-parallel step(state, batch) -> (state, metrics); `state` is donated.

  The batch's leading axis (B, the users) is split over the mesh's 'data' axis and must
  be divisible by its size; state and metrics are replicated. See the module docstring
  for why the shards' gradients are psum-ed (not pmean-ed).
  """
  num_shards = mesh.shape[DATA_AXIS]

  def shard_step(state: RLState, batch: dict):
    return local_update(state, batch, policy_fn, optimizer, cfg)

  sharded_step = jax.shard_map(shard_step, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                               out_specs=(P(), P()), check_vma=False)

  def step(state: RLState, batch: dict):
    batch_size = jax.tree.leaves(batch)[0].shape[0]
    if batch_size % num_shards:
      raise ValueError(f'batch size {batch_size} is not divisible by the {num_shards} '
                       f"devices of the '{DATA_AXIS}' mesh axis")
    return sharded_step(state, batch)

  return jax.jit(step, donate_argnums=0)
