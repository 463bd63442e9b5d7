"""Trie-constrained beam search (MiniOneRec's evaluation decoder), jitted at fixed shapes.

Length penalty 0: a beam's score is the sum of its codes' log-probs. Each step
scores every (beam, code) pair, masks codes the trie does not allow below the
beam's prefix, and keeps the best `num_beams` with one lax.top_k over [W*K].
Level 0 expands a single root beam, so the kept prefixes are always distinct;
where fewer than `num_beams` valid SIDs remain, the tail has score -inf and codes
-1 instead of duplicates. The prompt is prefilled once and its KV cache shared by
all beams; each step feeds one token per beam through decoder.decode_step.
"""

from __future__ import annotations

import functools
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.model import decoder
from vstar_jax.sid import trie as trie_lib


@functools.partial(jax.jit, static_argnames=('cfg', 'num_beams'))
def beam_search(params, cfg: decoder.DecoderConfig, trie: trie_lib.Trie, history: jnp.ndarray,
                num_beams: int):
  """Top-`num_beams` valid SIDs per user by sum of log-probs.

  Args:
    params: decoder params pytree.
    cfg: the DecoderConfig (static).
    trie: Trie of the catalogue's SIDs (same L and K as cfg).
    history: [B, T, L] int32 SID codes, -1 for missing items.
    num_beams: W (static).

  Returns:
    codes [B, W, L] int32 (distinct valid SIDs, -1 in the tail) and scores
    [B, W] float32 sorted descending (-inf in the tail).
  """
  if (trie.num_levels, trie.num_codes) != (cfg.num_levels, cfg.num_codes):
    raise ValueError(f'trie has L={trie.num_levels}, K={trie.num_codes}; the decoder has '
                     f'L={cfg.num_levels}, K={cfg.num_codes}')
  batch = history.shape[0]
  num_codes = cfg.num_codes
  prompt = decoder.prefill(params, cfg, history)
  cache = decoder.init_suffix_cache(cfg, batch, 1)
  node = jnp.zeros((batch, 1), jnp.int32)
  score = jnp.zeros((batch, 1), jnp.float32)
  codes = jnp.zeros((batch, 1, 0), jnp.int32)
  code = jnp.zeros((batch, 1), jnp.int32)
  for level in range(cfg.num_levels):
    log_probs, _, cache = decoder.decode_step(params, cfg, prompt, cache, code, level)
    allowed = trie_lib.valid_codes(trie, node)
    candidates = jnp.where(allowed, score[..., None] + log_probs, -jnp.inf)
    candidates = candidates.reshape(batch, -1)
    kept = min(num_beams, candidates.shape[1])
    score, flat = jax.lax.top_k(candidates, kept)
    if kept < num_beams:
      score = jnp.pad(score, ((0, 0), (0, num_beams - kept)), constant_values=-jnp.inf)
      flat = jnp.pad(flat, ((0, 0), (0, num_beams - kept)))
    parent, code = flat // num_codes, flat % num_codes
    codes = jnp.concatenate(
        [jnp.take_along_axis(codes, parent[..., None], axis=1), code[..., None]], axis=-1)
    node = trie_lib.step(trie, jnp.take_along_axis(node, parent, axis=1), code)
    if level + 1 < cfg.num_levels:
      cache = decoder.reorder_suffix_cache(cache, parent)
  alive = score > -jnp.inf
  return jnp.where(alive[..., None], codes, -1), score


def beam_search_split(params, cfg: decoder.DecoderConfig, trie: trie_lib.Trie,
                      history: np.ndarray, num_beams: int, batch_size: int,
                      log_every_s: float = 30.0):
  """Beam search over a whole split in fixed-size batches (the last one padded).

  Args:
    params: decoder params pytree.
    cfg: the DecoderConfig.
    trie: Trie of the catalogue's SIDs.
    history: [N, T, L] int32 histories of the split's rows.
    num_beams: W.
    batch_size: users per jitted call (one compilation for the whole split).
    log_every_s: seconds between progress lines.

  Returns:
    codes [N, W, L] int32 and scores [N, W] float32 numpy arrays, row order kept.
  """
  history = np.asarray(history, np.int32)
  num_rows = history.shape[0]
  num_batches = -(-num_rows // batch_size)
  padded = np.concatenate(
      [history, np.repeat(history[-1:], num_batches * batch_size - num_rows, axis=0)])
  trie = jax.device_put(trie)
  codes, scores = [], []
  start = last_log = time.perf_counter()

  def collect(result, done):
    nonlocal last_log
    codes.append(np.asarray(result[0]))
    scores.append(np.asarray(result[1]))
    now = time.perf_counter()
    if now - last_log >= log_every_s or done == num_rows:
      last_log = now
      rate = done / (now - start)
      logging.info('beam search: %d/%d users, %.1f users/s, ETA %.0f s', done, num_rows, rate,
                   (num_rows - done) / rate)

  pending = None
  for i in range(num_batches):
    launched = beam_search(params, cfg, trie, padded[i * batch_size:(i + 1) * batch_size],
                           num_beams)
    if pending is not None:
      collect(pending, i * batch_size)
    pending = launched
  collect(pending, num_rows)
  return np.concatenate(codes)[:num_rows], np.concatenate(scores)[:num_rows]
