"""Trie-constrained ancestral sampling: G SIDs per user drawn from the policy (GRPO's rollouts).

Beam search and VED return the policy's *top* sequences, so a policy gradient over them is
not an estimate of the gradient of the expected reward (docs/method.md, "Sampled
rollouts"); sampling is. Each level draws one code per sample from the policy renormalised
over the trie-valid codes below the sample's prefix (temperature 1), so every sample is a
catalogue SID; samples are independent, so a group may hold duplicates (standard GRPO).

The model is seen through the same `step_fn` as decode.beam (model.policy.beam_policy):
level 0 scores the single root beam, every sample then copies it, and from level 1 on
sample g extends its own beam g.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vstar_jax.decode import beam as beam_lib
from vstar_jax.sid import trie as trie_lib


def sample(step_fn: beam_lib.StepFn, state: Any, trie: trie_lib.Trie, batch_size: int,
           num_samples: int, keys: jax.Array) -> tuple[jnp.ndarray, jnp.ndarray]:
  """`num_samples` SIDs per user drawn from the trie-constrained policy.

  Args:
    step_fn: the model's step (decode.beam's contract); `state` its initial state (one beam).
    state: the model's state for one beam per user.
    trie: Trie of the catalogue's SIDs.
    batch_size: B, users.
    num_samples: G (static).
    keys: [B] PRNG keys, one per user (a user's draws do not depend on the batch).

  Returns:
    codes [B, G, L] int32 (valid SIDs) and log_probs [B, G] float32: each sample's sum of
    the policy's (unrenormalised) code log-probs, the score beam search ranks by.
  """
  trie = jax.tree.map(jnp.asarray, trie)
  node = jnp.zeros((batch_size, 1), jnp.int32)
  code = jnp.zeros((batch_size, 1), jnp.int32)
  parent = jnp.zeros((batch_size, 1), jnp.int32)
  score = jnp.zeros((batch_size, num_samples), jnp.float32)
  codes = []
  for level in range(trie.num_levels):
    log_probs, state = step_fn(state, parent, code, level)                  # [B, W, K]
    log_probs = jnp.broadcast_to(log_probs, (batch_size, num_samples, log_probs.shape[-1]))
    node = jnp.broadcast_to(node, (batch_size, num_samples))
    logits = jnp.where(trie_lib.valid_codes(trie, node), log_probs, -jnp.inf)
    level_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, level)
    code = jax.vmap(lambda k, x: jax.random.categorical(k, x, axis=-1))(level_keys, logits)
    score = score + jnp.take_along_axis(log_probs, code[..., None], axis=-1)[..., 0]
    codes.append(code)
    node = trie_lib.step(trie, node, code)
    parent = jnp.zeros_like(code) if level == 0 else jnp.broadcast_to(
        jnp.arange(num_samples), code.shape)
  return jnp.stack(codes, axis=-1), score
