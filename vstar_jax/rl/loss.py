"""The Sibling-GRPO objective (paper Sec. 4.3, Eq. 19 + GRPO + KL) and one data-parallel update.

The loss reads a LossBatch and is written against a generic `policy_fn(params, candidates:
model.policy.Candidates) -> (token_logp, values, q)`, so any policy (the decoder through
model.policy.candidate_log_probs, or a toy policy in tests) can be plugged in. `local_update`
is the per-shard optimizer step inside `jax.shard_map(..., check_vma=False)` over the 'data'
axis: every mean uses the global count (parallel.global_mean), so psum-ing the shards'
gradients gives exactly the single-device gradient (tests/test_loss.py checks it on 4
simulated devices).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax import lax

from vstar_jax import parallel
from vstar_jax.model import policy
from vstar_jax.model import value_head

# (params, candidates) -> (token_logp [B, G, L], values [B, G, L+1], q [B, G, L]).
PolicyFn = Callable[[Any, policy.Candidates], tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]]
# What the value loss trains (LossConfig.value_grad).
VALUE_GRADS = ('all', 'heads')


@flax.struct.dataclass
class LossBatch:
  """One scored rollout, the batch of rl_loss (sharded on B like the users).

  Attributes:
    candidates: the users' model inputs and their G candidates (history, cand [B, G, L],
      valid [B, G]): what policy_fn scores.
    old_logp: [B, G, L] float32, rollout-policy log-probs of the candidate tokens.
    group_adv: [B, G] float32 z-scored group advantages (broadcast to all L tokens), or
      [B, G, L] per-token advantages (the alpha-blend of group and sibling advantages).
    sibling_adv: [B, G, L] float32 sibling advantages A(y_<l, y_l).
    value_targets: [B, G, L+1] float32 value-head targets.
    target: [B, L] int32 logged targets (read only when LossConfig.w_sft > 0).
    anchor_history: the anchor's model inputs (history dropout; shaped as candidates.history),
      or None: the anchor then reads candidates.history.
  """
  candidates: policy.Candidates
  old_logp: jnp.ndarray
  group_adv: jnp.ndarray
  sibling_adv: jnp.ndarray
  value_targets: jnp.ndarray
  target: jnp.ndarray
  anchor_history: Optional[jnp.ndarray] = None


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Coefficients of the Sibling-GRPO objective.

  Attributes:
    clip_eps: PPO clip range of the ratio to the rollout policy.
    w_sib: weight of the sibling loss.
    kl_beta: weight of the k3 KL(pi || pi_ref) penalty (MiniOneRec / V-STAR: 1e-3).
    w_value: weight of the value-head MSE.
    w_sft: weight of the supervised anchor, the NLL of each rollout user's logged target
      (0: off, the paper's objective; docs/method.md, "Supervised anchor").
    w_pg: weight of the policy-gradient terms (GRPO and sibling); 0 with w_sft > 0 leaves the
      anchor alone in the RL loop, the supervised control of the same schedule.
    negative_weight: scale of the negative advantages (group and sibling) in the PG terms:
      1 is the paper's objective; 0 keeps only the push up on better-than-group candidates
      (docs/method.md, "Negative advantages").
    value_grad: what the value loss trains: 'all' (the V and Q heads and the shared backbone,
      the paper) or 'heads' (the heads only: its gradient stops at the backbone's hidden
      states, so only the PG, KL and anchor terms move the policy).
  """
  clip_eps: float = 0.2
  w_sib: float = 1.0
  kl_beta: float = 1e-3
  w_value: float = 0.5
  w_sft: float = 0.0
  w_pg: float = 1.0
  negative_weight: float = 1.0
  value_grad: str = 'all'


def weigh_negatives(adv: jnp.ndarray, negative_weight: float) -> jnp.ndarray:
  """Advantages with the negative ones scaled by negative_weight (same shape as adv)."""
  if negative_weight == 1.0:
    return adv
  return jnp.where(adv < 0, negative_weight * adv, adv)


def head_losses(values: jnp.ndarray, q: jnp.ndarray, targets: jnp.ndarray, valid: jnp.ndarray,
                axis_name: Optional[str]) -> tuple[jnp.ndarray, jnp.ndarray]:
  """MSE of V at nodes 0..L (values, targets [B, G, L+1]) and of Q(y_<l, y_l) (q [B, G, L]) on
  target[l + 1], the value of the child it predicts; means over the valid candidates."""
  value_mask = jnp.broadcast_to(valid[..., None], values.shape)
  q_mask = jnp.broadcast_to(valid[..., None], q.shape)
  return (parallel.global_mean((values - targets) ** 2, value_mask, axis_name),
          parallel.global_mean((q - targets[..., 1:]) ** 2, q_mask, axis_name))


def target_nll(params: Any, batch: LossBatch, policy_fn: PolicyFn,
               axis_name: Optional[str]) -> jnp.ndarray:
  """Mean NLL per token of the logged targets [B, L] under the policy: the SFT loss of the
  rollout users' own rows (teacher-forced as one candidate per user), read from
  batch.anchor_history where given (history dropout), else batch.candidates.history."""
  target = batch.target
  history = batch.candidates.history if batch.anchor_history is None else batch.anchor_history
  one = policy.Candidates(history=history, cand=target[:, None, :],
                          valid=jnp.ones(target.shape[:1] + (1,), bool))
  token_logp = policy_fn(params, one)[0]                                    # [B, 1, L]
  return parallel.global_mean(-token_logp, jnp.ones(token_logp.shape, bool), axis_name)


def _clipped_pg(ratio: jnp.ndarray, adv: jnp.ndarray, clip_eps: float) -> jnp.ndarray:
  """PPO clipped surrogate, negated to a per-token loss."""
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  return -jnp.minimum(ratio * adv, clipped * adv)


def rl_loss(params: Any, ref_params: Any, batch: LossBatch, policy_fn: PolicyFn, cfg: LossConfig,
            axis_name: Optional[str] = None):
  """Sibling-GRPO objective: w_pg (GRPO + w_sib * sibling PG) + beta * KL + w_v * value MSE
  (+ w_sft * target NLL).

  Args:
    params: policy parameters (differentiated).
    ref_params: frozen reference parameters for the KL term.
    batch: the scored rollout (LossBatch).
    policy_fn: (params, batch.candidates) -> (token_logp [B, G, L], values [B, G, L+1],
      q [B, G, L]).
    cfg: loss coefficients.
    axis_name: mesh axis the batch is sharded over, or None. With an axis every mean
      uses the global count, so the returned loss and metrics are this shard's share
      and sum to the global values over the axis.

  Returns:
    (loss, metrics) where every term is a mean over valid tokens (GRPO, KL, value and Q
    MSE, clip fraction, nll), the sibling loss a mean over valid tokens with a non-zero
    sibling advantage. `nll` is the mean negative log-prob of the candidate tokens
    (the policy's full entropy is not available from token log-probs); `sft_nll` the mean
    NLL per token of the logged targets (with the anchor on).
  """
  token_logp, values, q = policy_fn(params, batch.candidates)
  if cfg.value_grad == 'heads':
    # The same forward (XLA shares it), the backbone a constant for the heads' loss.
    heads_only = {**lax.stop_gradient(params), **{k: params[k] for k in value_head.HEADS}}
    _, values, q = policy_fn(heads_only, batch.candidates)
  ref_logp = policy_fn(ref_params, batch.candidates)[0]
  ref_logp = lax.stop_gradient(ref_logp)
  valid = batch.candidates.valid
  token_mask = jnp.broadcast_to(valid[..., None], token_logp.shape)
  ratio = jnp.exp(token_logp - batch.old_logp)

  group_adv = batch.group_adv
  if group_adv.ndim == valid.ndim:
    group_adv = group_adv[..., None]
  group_adv = weigh_negatives(jnp.broadcast_to(group_adv, token_logp.shape),
                              cfg.negative_weight)
  grpo = parallel.global_mean(_clipped_pg(ratio, group_adv, cfg.clip_eps), token_mask,
                              axis_name)
  sibling_adv = weigh_negatives(batch.sibling_adv, cfg.negative_weight)
  sibling_mask = token_mask & (batch.sibling_adv != 0)
  sibling = parallel.global_mean(_clipped_pg(ratio, sibling_adv, cfg.clip_eps), sibling_mask,
                                 axis_name)
  log_ratio_ref = ref_logp - token_logp
  kl = parallel.global_mean(jnp.exp(log_ratio_ref) - log_ratio_ref - 1.0, token_mask, axis_name)
  value, q_loss = head_losses(values, q, batch.value_targets, valid, axis_name)
  loss = (cfg.w_pg * (grpo + cfg.w_sib * sibling) + cfg.kl_beta * kl
          + cfg.w_value * (value + q_loss))
  sft_nll = jnp.zeros(())
  if cfg.w_sft:
    sft_nll = target_nll(params, batch, policy_fn, axis_name)
    loss = loss + cfg.w_sft * sft_nll

  clipped = (((ratio < 1.0 - cfg.clip_eps) & (group_adv < 0))
             | ((ratio > 1.0 + cfg.clip_eps) & (group_adv > 0)))
  metrics = {
      'loss': loss,
      'grpo_loss': grpo,
      'sibling_loss': sibling,
      'kl': kl,
      'value_loss': value,
      'q_loss': q_loss,
      'clip_frac': parallel.global_mean(clipped, token_mask, axis_name),
      'sibling_frac': parallel.global_mean(sibling_adv != 0, token_mask, axis_name),
      'nll': parallel.global_mean(-token_logp, token_mask, axis_name),
      'sft_nll': sft_nll,
  }
  return loss, jax.tree.map(lax.stop_gradient, metrics)


def local_update(params: Any, ref_params: Any, opt_state: Any, batch: LossBatch,
                 policy_fn: PolicyFn, optimizer: optax.GradientTransformation, cfg: LossConfig,
                 axis_name: str = parallel.DATA_AXIS) -> tuple[Any, Any, dict]:
  """One optimizer step on this shard's rows -> (params, opt_state, metrics).

  Runs inside `shard_map(..., check_vma=False)` over `axis_name`: grads and metrics are
  `lax.psum`-ed over the axis (see the module docstring), so every shard applies the same
  update and returns the global metrics.
  """
  def loss_fn(p):
    return rl_loss(p, ref_params, batch, policy_fn, cfg, axis_name=axis_name)

  grads, metrics = jax.grad(loss_fn, has_aux=True)(params)
  grads = lax.psum(grads, axis_name)
  metrics = lax.psum(metrics, axis_name)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  metrics['grad_norm'] = optax.tree.norm(grads)
  return optax.apply_updates(params, updates), opt_state, metrics
