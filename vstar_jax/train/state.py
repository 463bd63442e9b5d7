"""Training state shared by SFT and RL: one pytree that holds everything a resume needs.

`TrainState` is a plain pytree of arrays (no optimizer object, no Python ints), so
it can be jitted with donation, sharded, and checkpointed with orbax as a whole.
The optimizer is passed to `apply_gradients` explicitly instead of being stored,
which keeps the state serializable and lets SFT and RL build different optimizers
over the same structure.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training and must survive a restart.

  Attributes:
    step: [] int32, optimizer updates applied so far.
    params: trainable parameters (the policy / decoder).
    opt_state: optax state of `params` (Adam moments, schedule count, ...).
    rng: [2] uint32 raw PRNG key data (default implementation), stored raw so it
      checkpoints as an ordinary array; use `split_rng` to draw keys from it.
    data_epoch: [] int32, passes over the training data completed.
    data_index: [] int32, batches consumed within `data_epoch` (the data
      iterator resumes here).
    extra: name -> pytree, other state that must be saved alongside (e.g.
      reference-policy params for the KL term, value-head params).
  """
  step: jnp.ndarray
  params: PyTree
  opt_state: PyTree
  rng: jnp.ndarray
  data_epoch: jnp.ndarray
  data_index: jnp.ndarray
  extra: dict

  @classmethod
  def create(cls, params: PyTree, optimizer: optax.GradientTransformation, rng: jax.Array,
             extra: dict | None = None) -> TrainState:
    """Fresh state at step 0: optimizer initialised on `params`, data position (0, 0).

    Args:
      params: initial parameters.
      optimizer: the transformation later passed to `apply_gradients`.
      rng: a typed key (`jax.random.key`) or raw uint32 key data.
      extra: other pytrees to carry and checkpoint (default: none).
    """
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
      rng = jax.random.key_data(rng)
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
               rng=jnp.asarray(rng, jnp.uint32), data_epoch=jnp.zeros((), jnp.int32),
               data_index=jnp.zeros((), jnp.int32), extra={} if extra is None else dict(extra))


def apply_gradients(state: TrainState, grads: PyTree,
                    optimizer: optax.GradientTransformation) -> TrainState:
  """One optimizer update of `state.params` with `grads`; increments `step`."""
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state)


def split_rng(state: TrainState) -> tuple[TrainState, jax.Array]:
  """Draws a fresh typed key and advances the stored one, so resumed runs replay the same keys."""
  rng, key = jax.random.split(jax.random.wrap_key_data(state.rng))
  return state.replace(rng=jax.random.key_data(rng)), key


def lr_schedule(lr_peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr_peak` over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
  if total_steps <= 0 or not 0 <= warmup_steps < total_steps:
    raise ValueError(f'need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps}, '
                     f'total_steps={total_steps}')
  return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=lr_peak,
                                            warmup_steps=warmup_steps, decay_steps=total_steps,
                                            end_value=0.0)


FROZEN_PARAMS = ('item_text',)  # inputs kept in params (zero gradient): never decayed


def _decay_mask(params: PyTree) -> PyTree:
  """Weight decay on matrices and embeddings only, not on biases or norm scales (as HF Trainer),
  nor on the frozen input tables of FROZEN_PARAMS."""
  def decays(path, p):
    names = {getattr(k, 'key', None) for k in path}
    return p.ndim >= 2 and not names & set(FROZEN_PARAMS)
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(lr_peak: float, warmup_steps: int, total_steps: int, weight_decay: float = 0.0,
                   clip_norm: float = 1.0, b1: float = 0.9,
                   b2: float = 0.999) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW on the warmup + cosine `lr_schedule`."""
  return optax.chain(
      optax.clip_by_global_norm(clip_norm),
      optax.adamw(lr_schedule(lr_peak, warmup_steps, total_steps), b1=b1, b2=b2,
                  weight_decay=weight_decay, mask=_decay_mask))


def is_finite(tree: PyTree) -> jnp.ndarray:
  """[] bool: whether every floating-point leaf of `tree` is free of NaN and Inf (ints are ignored)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
