"""Trie-constrained beam search (MiniOneRec's evaluation decoder), at fixed shapes inside jit.

Length penalty 0: a beam's score is the sum of its codes' log-probs. Each step scores every
(beam, code) pair, masks codes the trie does not allow below the beam's prefix, and keeps
the best `num_beams` with one lax.top_k over [W*K]. Level 0 expands a single root beam, so
the kept prefixes are always distinct; where fewer than `num_beams` valid SIDs remain, the
tail has score -inf and codes -1 instead of duplicates.

The model is seen only through `step_fn(state, parent [B, W], code [B, W], level) ->
(log_probs [B, W, K], state)`: make beam w a copy of beam parent[b, w], feed it `code`
(the level-1 choice; ignored at level 0) and return the log-probs of the level-`level`
code (model.policy.beam_policy builds it for the decoder).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from vstar_jax.sid import trie as trie_lib

StepFn = Callable[[Any, jnp.ndarray, jnp.ndarray, int], tuple[jnp.ndarray, Any]]


def beam_search(step_fn: StepFn, state: Any, trie: trie_lib.Trie, batch_size: int,
                num_beams: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Top-`num_beams` valid SIDs per user by sum of log-probs.

  Args:
    step_fn: the model's step (module docstring); `state` its initial state (one beam).
    state: the model's state for one beam per user.
    trie: Trie of the catalogue's SIDs.
    batch_size: B, users.
    num_beams: W (static).

  Returns:
    codes [B, W, L] int32 (distinct valid SIDs, -1 in the tail) and scores [B, W]
    float32 sorted descending (-inf in the tail).
  """
  num_codes = trie.num_codes
  trie = jax.tree.map(jnp.asarray, trie)
  node = jnp.zeros((batch_size, 1), jnp.int32)
  score = jnp.zeros((batch_size, 1), jnp.float32)
  codes = jnp.zeros((batch_size, 1, 0), jnp.int32)
  code = jnp.zeros((batch_size, 1), jnp.int32)
  parent = jnp.zeros((batch_size, 1), jnp.int32)
  for level in range(trie.num_levels):
    log_probs, state = step_fn(state, parent, code, level)
    allowed = trie_lib.valid_codes(trie, node)
    candidates = jnp.where(allowed, score[..., None] + log_probs, -jnp.inf)
    candidates = candidates.reshape(batch_size, -1)
    kept = min(num_beams, candidates.shape[1])
    score, flat = jax.lax.top_k(candidates, kept)
    if kept < num_beams:
      score = jnp.pad(score, ((0, 0), (0, num_beams - kept)), constant_values=-jnp.inf)
      flat = jnp.pad(flat, ((0, 0), (0, num_beams - kept)))
    parent, code = flat // num_codes, flat % num_codes
    codes = jnp.concatenate(
        [jnp.take_along_axis(codes, parent[..., None], axis=1), code[..., None]], axis=-1)
    node = trie_lib.step(trie, jnp.take_along_axis(node, parent, axis=1), code)
  alive = score > -jnp.inf
  return jnp.where(alive[..., None], codes, -1), score
