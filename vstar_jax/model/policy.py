"""The decoder seen as a policy by the searches and the RL loss (paper Sec. 4).

The searches (decode.beam, decode.ved) never import the decoder: they are written against
the step functions built here, so any autoregressive model over SID codes can be plugged
in. Candidate scoring gives the token log-probs and values of whole candidate groups, the
policy function of the Sibling-GRPO loss.
"""

from __future__ import annotations

import jax.numpy as jnp

from vstar_jax.model import attention
from vstar_jax.model import decoder


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


def candidate_log_probs(params, batch: dict, *, cfg: decoder.DecoderConfig):
  """Log-probs and values along each user's G candidates (the policy fn of rl.loss.rl_loss).

  The prompt is prefilled once per user and shared by its G candidates; each
  candidate's suffix [SEP, c_0 .. c_{L-1}] is then run by decoder.prefix_forward at
  depths 0..L (the L+1 calls run the same suffix pass, which XLA computes once). This
  equals teacher-forced forward_train on the candidates up to float rounding
  (tests/test_policy.py) at a fraction of the cost: the prompt is not re-encoded G times.

  Args:
    params: decoder params.
    batch: history [B, T, L], cand [B, G, L] (-1 rows where invalid), valid [B, G].
    cfg: the DecoderConfig.

  Returns:
    token log-probs [B, G, L] and values [B, G, L+1] (V of each candidate's prefixes
    of length 0..L); 0 for invalid candidates.
  """
  cand, valid = batch['cand'], batch['valid']
  codes = jnp.maximum(cand, 0)
  prompt = decoder.prefill(params, cfg, batch['history'])
  token_logp, values = [], []
  for depth in range(cfg.num_levels + 1):
    log_probs, value = decoder.prefix_forward(params, cfg, prompt, codes,
                                              jnp.full(codes.shape[:2], depth, jnp.int32))
    if depth < cfg.num_levels:
      token_logp.append(jnp.take_along_axis(log_probs, codes[..., depth, None], axis=-1)[..., 0])
    values.append(value)
  keep = valid[..., None]
  return (jnp.where(keep, jnp.stack(token_logp, axis=-1), 0.0),
          jnp.where(keep, jnp.stack(values, axis=-1), 0.0))
