"""Rollouts: G candidate SIDs per user from the current policy (the "generate" of the RL loop).

ROLLOUTS maps each `--config.rl.rollout` name to a function of one signature,
`rollout(params, trie, history [B, T, L], user_index [B], key, *, cfg, settings, inputs=None)
-> Rollout`. A new rollout method is one function and one registry entry. `inputs` is the
batch's rewards.RewardInputs, which the policy's searches here never read; a search that reads
the reward does (the known-reward simulator's oracle-value VED, rl.simulator_oracle, whose
registry a run passes to the loop: rl.loop.train(..., rollouts=...)).

Randomness: a user's draws come from fold_in(iteration key, the user's position in the
global batch), so they do not depend on how users are sharded.
"""

from __future__ import annotations

from typing import Callable

import flax.struct
import jax.numpy as jnp

from vstar_jax.decode import search


user_keys = search.user_keys  # per-user keys from the users' positions in the global batch


@flax.struct.dataclass
class Rollout:
  """G candidates per user, as the RL iteration scores and trains on them.

  Attributes:
    candidates: [B, G, L] int32 candidate SIDs (-1 rows where invalid).
    valid: [B, G] bool, real candidates (VED may return fewer than G leaves).
    rank_score: [B, G] float32, the score the rollout ranks its candidates by (-inf where
      invalid; the `ranking` reward's rank).
    forwards: [B] int32, backbone forwards spent (prompt prefill excluded).
    injected: [B] bool, the group's last slot holds the injected logged target
      (inject_target; all False otherwise).
  """
  candidates: jnp.ndarray
  valid: jnp.ndarray
  rank_score: jnp.ndarray
  forwards: jnp.ndarray
  injected: jnp.ndarray

  @classmethod
  def create(cls, candidates, valid, rank_score, forwards) -> Rollout:
    """A rollout nothing was injected into."""
    return cls(candidates=candidates, valid=valid, rank_score=rank_score, forwards=forwards,
               injected=jnp.zeros(valid.shape[:1], bool))


def group_hit(candidates: jnp.ndarray, valid: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """Whether each user's group holds the target among its valid candidates: -> [B] bool.

  Args:
    candidates: [B, G, L] int32; valid: [B, G] bool; target: [B, L] int32.
  """
  return jnp.any(jnp.all(candidates == target[:, None, :], axis=-1) & valid, axis=-1)


def _beam_shaped_forwards(history, cfg, settings) -> jnp.ndarray:
  """[B] forwards of G sequences grown level by level: the root, then G per level below it."""
  return jnp.full((history.shape[0],), 1 + (cfg.num_levels - 1) * settings.group_size, jnp.int32)


def beam_rollout(params, trie, history, user_index, key, *, cfg, settings,
                 inputs=None) -> Rollout:
  """MiniOneRec's rollouts: constrained beam search with G beams, ranked by beam score."""
  del user_index, key, inputs
  cand, score = search.beam_search(params, cfg, trie, history, settings.group_size)
  return Rollout.create(cand, score > -jnp.inf, score,
                        _beam_shaped_forwards(history, cfg, settings))


def ved_rollout(params, trie, history, user_index, key, *, cfg, settings,
                inputs=None) -> Rollout:
  """V-STAR's rollouts: Value-Guided Efficient Decoding (paper Sec. 4.2), one batched search."""
  del inputs
  out = search.ved_search(params, cfg, trie, history, user_keys(key, user_index), settings.ved)
  return Rollout.create(out.candidates, out.valid, out.scores, out.num_forwards)


def inject_target(ro: Rollout, target: jnp.ndarray) -> Rollout:
  """Target injection (off-policy guidance; docs/method.md, "Target injection"; not in the paper).

  A group that misses the logged target gets it in its last (lowest-ranked) slot, so every
  group carries a hit to rank against: on held-out users ~86% of groups have none, and a
  group without a hit has zero advantage under the ranking reward. The slot keeps its rank
  score (the target ranks last; -inf for an empty VED slot, also last). Sets `injected` [B];
  groups that already hold the target are unchanged.

  Args:
    ro: a rollout.
    target: [B, L] int32 target SIDs.
  """
  cand, valid = ro.candidates, ro.valid
  missed = ~group_hit(cand, valid, target)                                             # [B]
  last_slot = jnp.arange(cand.shape[1]) == cand.shape[1] - 1                          # [G]
  replace = missed[:, None] & last_slot[None, :]                                      # [B, G]
  return ro.replace(candidates=jnp.where(replace[..., None], target[:, None, :], cand),
                    valid=valid | replace, injected=missed)


def sample_rollout(params, trie, history, user_index, key, *, cfg, settings,
                   inputs=None) -> Rollout:
  """GRPO's own rollouts: G SIDs sampled from the constrained policy (decode.sampling), ranked
  by log-prob; one forward per level per sample, as beam search's G beams."""
  del inputs
  cand, score = search.sample_search(params, cfg, trie, history, user_keys(key, user_index),
                                     settings.group_size)
  return Rollout.create(cand, jnp.ones(score.shape, bool), score,
                        _beam_shaped_forwards(history, cfg, settings))


RolloutFn = Callable[..., Rollout]
ROLLOUTS: dict[str, RolloutFn] = {'ved': ved_rollout, 'beam': beam_rollout,
                                   'sample': sample_rollout}
