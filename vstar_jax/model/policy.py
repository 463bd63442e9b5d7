"""The decoder seen as a policy by the searches and the RL loss (paper Sec. 4).

The searches (decode.beam, decode.ved) never import the decoder: they are written against
the step functions built here, so any autoregressive model over SID codes can be plugged
in. Candidate scoring gives the token log-probs and values of whole candidate groups, the
policy function of the Sibling-GRPO loss.
"""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp

from vstar_jax.model import attention
from vstar_jax.model import decoder
from vstar_jax.model import expansion as expansion_lib
from vstar_jax.model import layout


@flax.struct.dataclass
class Candidates:
  """G candidate SIDs per user, to be scored by the policy (the input of the loss's policy_fn).

  Attributes:
    history: the model input of each user: [B, T, L] int32 history rows for the decoder (for
      another backbone, e.g. prompt tokens [B, P]).
    cand: [B, G, L] int32 candidate SIDs (-1 rows where invalid).
    valid: [B, G] bool, real candidates.
  """
  history: jnp.ndarray
  cand: jnp.ndarray
  valid: jnp.ndarray


def beam_policy(params, cfg: decoder.DecoderConfig, history):
  """(initial state, step_fn) of decode.beam.beam_search for users history [B, T, L].

  The prompt is prefilled once per user and its KV cache shared by all beams; the state is
  the beams' suffix cache. step_fn(cache, parent [B, W], code [B, W], level) first makes
  beam w a copy of beam parent[b, w] (level > 0), then feeds its code of level - 1 (SEP at
  level 0) and returns the level-`level` log-probs [B, W, K] and the grown cache.
  """
  prompt = decoder.prefill(params, cfg, history)

  def step(cache, parent, code, level):
    if level > 0:
      cache = attention.reorder_suffix_cache(cache, parent)
    log_probs, _, cache = decoder.decode_step(params, cfg, prompt, cache, code, level)
    return log_probs, cache

  return attention.init_suffix_cache(cfg, history.shape[0], 1), step


def ved_policy(params, cfg: decoder.DecoderConfig, history):
  """(root_fn, expand_fn) of decode.ved.ved for users history [B, T, L].

  Both return a model.expansion.Expansion (log_probs [B, M, K], value [B, M], child_values
  [B, M, K], embedding).

  A tree node's embedding is the keys and values of its own last token, k and v
  [B, M, layers, H, Dh] (SEP for the root, else the node's code); expanding a child gathers
  its parent's path [B, M, L, ...] into the suffix KV cache (slot j: the depth-j ancestor's
  token) and feeds ONE token on top of it: the cost of a beam step, and a tree stores one
  token's KV per node, not the whole suffix.
  """
  prompt = decoder.prefill(params, cfg, history)
  batch, num_levels = history.shape[0], cfg.num_levels

  def expansion(out) -> expansion_lib.Expansion:
    log_probs, value, q, k, v = out                          # k, v [layers, B, M, H, Dh]
    return expansion_lib.Expansion(log_probs=log_probs, value=value, child_values=q,
                                   embedding=(jnp.moveaxis(k, 0, 2), jnp.moveaxis(v, 0, 2)))

  def root_fn():
    zero = jnp.zeros((batch, 1), jnp.int32)
    empty = jnp.zeros((cfg.num_layers, batch, 1, num_levels, cfg.num_heads, cfg.head_dim),
                      jnp.dtype(cfg.dtype))
    return expansion(decoder.node_forward(params, cfg, prompt, empty, empty, zero,
                                          zero + layout.SEP, zero + num_levels))

  def expand_fn(path_states, code, parent_depth):
    k, v = (jnp.moveaxis(x, 3, 0) for x in path_states)      # [layers, B, M, L, H, Dh]
    tokens = layout.code_tokens(cfg, code, parent_depth)
    return expansion(decoder.node_forward(params, cfg, prompt, k, v, parent_depth + 1, tokens,
                                          parent_depth))

  return root_fn, expand_fn


def candidate_log_probs(params, candidates: Candidates, *, cfg: decoder.DecoderConfig):
  """Log-probs, V and Q along each user's G candidates (the policy fn of rl.loss.rl_loss).

  The prompt is prefilled once per user and shared by its G candidates; each
  candidate's suffix [SEP, c_0 .. c_{L-1}] is then run by decoder.prefix_forward at
  depths 0..L (the L+1 calls run the same suffix pass, which XLA computes once). This
  equals teacher-forced forward_train on the candidates up to float rounding
  (tests/test_policy.py) at a fraction of the cost: the prompt is not re-encoded G times.

  Args:
    params: decoder params.
    candidates: history [B, T, L], cand [B, G, L] (-1 rows where invalid), valid [B, G].
    cfg: the DecoderConfig.

  Returns:
    token log-probs [B, G, L], values [B, G, L+1] (V of each candidate's prefixes of length
    0..L) and q [B, G, L] (Q(y_<l, y_l): the Q head's value of each candidate's own code);
    0 for invalid candidates.
  """
  codes, valid = jnp.maximum(candidates.cand, 0), candidates.valid
  prompt = decoder.prefill(params, cfg, candidates.history)
  token_logp, values, q_taken = [], [], []
  for depth in range(cfg.num_levels + 1):
    log_probs, value, q = decoder.prefix_forward(params, cfg, prompt, codes,
                                                 jnp.full(codes.shape[:2], depth, jnp.int32))
    if depth < cfg.num_levels:
      taken = codes[..., depth, None]
      token_logp.append(jnp.take_along_axis(log_probs, taken, axis=-1)[..., 0])
      q_taken.append(jnp.take_along_axis(q, taken, axis=-1)[..., 0])
    values.append(value)
  keep = valid[..., None]
  return (jnp.where(keep, jnp.stack(token_logp, axis=-1), 0.0),
          jnp.where(keep, jnp.stack(values, axis=-1), 0.0),
          jnp.where(keep, jnp.stack(q_taken, axis=-1), 0.0))
