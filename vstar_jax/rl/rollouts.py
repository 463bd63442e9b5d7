"""Rollouts: G candidate SIDs per user from the current policy (the "generate" of the RL loop).

ROLLOUTS maps each `--config.rl.rollout` name to a function of one signature,
`rollout(params, trie, history [B, T, L], user_index [B], key, *, cfg, settings) -> dict`
with cand [B, G, L] int32 (-1 rows where invalid), valid [B, G] bool, rank_score [B, G]
float32 (the score the rollout ranks its candidates by, -inf where invalid; the `ranking`
reward's rank) and forwards [B] int32 (backbone forwards spent, prompt prefill excluded).
A new rollout method is one function and one registry entry.

Randomness: a user's draws come from fold_in(iteration key, the user's position in the
global batch), so they do not depend on how users are sharded.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from vstar_jax.decode import search
from vstar_jax.rl import rewards


user_keys = search.user_keys  # per-user keys from the users' positions in the global batch


def _beam_shaped_forwards(history, cfg, settings) -> jnp.ndarray:
  """[B] forwards of G sequences grown level by level: the root, then G per level below it."""
  return jnp.full((history.shape[0],), 1 + (cfg.num_levels - 1) * settings.group_size, jnp.int32)


def beam_rollout(params, trie, history, user_index, key, *, cfg, settings) -> dict:
  """MiniOneRec's rollouts: constrained beam search with G beams, ranked by beam score."""
  del user_index, key
  cand, score = search.beam_search(params, cfg, trie, history, settings.group_size)
  return {'cand': cand, 'valid': score > -jnp.inf, 'rank_score': score,
          'forwards': _beam_shaped_forwards(history, cfg, settings)}


def ved_rollout(params, trie, history, user_index, key, *, cfg, settings) -> dict:
  """V-STAR's rollouts: Value-Guided Efficient Decoding (paper Sec. 4.2), one batched search."""
  out = search.ved_search(params, cfg, trie, history, user_keys(key, user_index), settings.ved)
  return {'cand': out.candidates, 'valid': out.valid, 'rank_score': out.scores,
          'forwards': out.num_forwards}


def inject_target(ro: dict, target: jnp.ndarray) -> dict:
  """Target injection (off-policy guidance; docs/method.md, "Target injection"; not in the paper).

  A group that misses the logged target gets it in its last (lowest-ranked) slot, so every
  group carries a hit to rank against: on held-out users ~86% of groups have none, and a
  group without a hit has zero advantage under the ranking reward. The slot keeps its rank
  score (the target ranks last; -inf for an empty VED slot, also last). Adds `injected`
  [B] bool; groups that already hold the target are unchanged.

  Args:
    ro: a rollout (cand [B, G, L], valid [B, G], rank_score [B, G], forwards [B]).
    target: [B, L] int32 target SIDs.
  """
  cand, valid = ro['cand'], ro['valid']
  missed = ~rewards.group_hit(cand, valid, target)                                    # [B]
  last_slot = jnp.arange(cand.shape[1]) == cand.shape[1] - 1                          # [G]
  replace = missed[:, None] & last_slot[None, :]                                      # [B, G]
  return dict(ro, cand=jnp.where(replace[..., None], target[:, None, :], cand),
              valid=valid | replace, injected=missed)


def sample_rollout(params, trie, history, user_index, key, *, cfg, settings) -> dict:
  """GRPO's own rollouts: G SIDs sampled from the constrained policy (decode.sampling), ranked
  by log-prob; one forward per level per sample, as beam search's G beams."""
  cand, score = search.sample_search(params, cfg, trie, history, user_keys(key, user_index),
                                     settings.group_size)
  return {'cand': cand, 'valid': jnp.ones(score.shape, bool), 'rank_score': score,
          'forwards': _beam_shaped_forwards(history, cfg, settings)}


RolloutFn = Callable[..., dict]
ROLLOUTS: dict[str, RolloutFn] = {'ved': ved_rollout, 'beam': beam_rollout,
                                   'sample': sample_rollout}
