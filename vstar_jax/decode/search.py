"""The decoder's searches, jitted: constrained beam search, sampling and VED, over a batch or a
whole split.

decode.beam and decode.ved are model-agnostic; this module binds them to the decoder
(model.policy), checks that trie and decoder agree on the SID shape, and runs whole splits
in fixed-size batches (one compilation) with a progress line.
"""

from __future__ import annotations

import functools
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.decode import beam as beam_lib
from vstar_jax.decode import sampling as sampling_lib
from vstar_jax.decode import ved as ved_lib
from vstar_jax.model import decoder
from vstar_jax.model import policy
from vstar_jax.sid import trie as trie_lib


def check_trie(cfg: decoder.DecoderConfig, trie: trie_lib.Trie) -> None:
  """Rejects a trie whose SID length or codebook size differs from the decoder's."""
  if (trie.num_levels, trie.num_codes) != (cfg.num_levels, cfg.num_codes):
    raise ValueError(f'trie has L={trie.num_levels}, K={trie.num_codes}; the decoder has '
                     f'L={cfg.num_levels}, K={cfg.num_codes}')


@functools.partial(jax.jit, static_argnames=('cfg', 'num_beams'))
def beam_search(params, cfg: decoder.DecoderConfig, trie: trie_lib.Trie, history: jnp.ndarray,
                num_beams: int):
  """Top-`num_beams` valid SIDs per user of history [B, T, L] (-1 for missing items).

  Returns:
    codes [B, W, L] int32 (distinct valid SIDs, -1 in the tail) and scores [B, W]
    float32 (sum of log-probs) sorted descending (-inf in the tail).
  """
  check_trie(cfg, trie)
  state, step = policy.beam_policy(params, cfg, history)
  return beam_lib.beam_search(step, state, trie, history.shape[0], num_beams)


@functools.partial(jax.jit, static_argnames=('cfg', 'num_samples'))
def sample_search(params, cfg: decoder.DecoderConfig, trie: trie_lib.Trie, history: jnp.ndarray,
                  keys: jnp.ndarray, num_samples: int):
  """`num_samples` SIDs per user of history [B, T, L] drawn from the constrained policy, with
  per-user keys [B] (decode.sampling): codes [B, G, L] int32, log-probs [B, G] float32."""
  check_trie(cfg, trie)
  state, step = policy.beam_policy(params, cfg, history)
  return sampling_lib.sample(step, state, trie, history.shape[0], num_samples, keys)


def user_keys(key: jax.Array, user_index: jnp.ndarray) -> jax.Array:
  """Per-user keys [B]: fold_in(key, each user's index) [B], so a user's draws do not depend on
  the batching or sharding."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, user_index)


@functools.partial(jax.jit, static_argnames=('cfg', 'vcfg', 'keep_tree'))
def ved_search(params, cfg: decoder.DecoderConfig, trie: trie_lib.Trie, history: jnp.ndarray,
               keys: jnp.ndarray, vcfg: ved_lib.VedConfig,
               keep_tree: bool = False) -> ved_lib.VedOutput:
  """VED (paper Sec. 4.2) for users history [B, T, L] with per-user keys [B]: one batched search.

  The search tree is returned only with keep_tree=True (figures, tests): otherwise XLA
  drops every tree field the candidates do not depend on (e.g. Q when neither the rule nor
  the leaf ranking reads it) and the [B, N, ...] arrays never leave the device.
  """
  check_trie(cfg, trie)
  root_fn, expand_fn = policy.ved_policy(params, cfg, history)
  out = ved_lib.ved(root_fn, expand_fn, trie, keys, vcfg)
  return out if keep_tree else out.replace(tree=None)


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
  trie = jax.device_put(trie)
  return _split(lambda h, _: beam_search(params, cfg, trie, h, num_beams), history, batch_size,
                'beam search', log_every_s)


def ved_search_split(params, cfg: decoder.DecoderConfig, trie: trie_lib.Trie, history: np.ndarray,
                     vcfg: ved_lib.VedConfig, batch_size: int, seed: int = 0,
                     log_every_s: float = 30.0):
  """VED over a whole split in fixed-size batches: codes [N, G, L], scores [N, G], forwards [N].

  User i's key is fold_in(key(seed), i), so a row's result does not depend on the batching.
  """
  trie = jax.device_put(trie)
  key = jax.random.key(seed)

  def run(h, first):
    out = ved_search(params, cfg, trie, h, user_keys(key, jnp.arange(h.shape[0]) + first), vcfg)
    return out.candidates, out.scores, out.num_forwards

  return _split(run, history, batch_size, 'VED', log_every_s)


def _split(fn, history: np.ndarray, batch_size: int, name: str, log_every_s: float):
  """fn(history batch, first row) over fixed-size batches (last padded; one compilation), the
  next batch launched before the last one is collected; outputs concatenated in row order."""
  history = np.asarray(history, np.int32)
  num_rows = history.shape[0]
  num_batches = -(-num_rows // batch_size)
  padded = np.concatenate(
      [history, np.repeat(history[-1:], num_batches * batch_size - num_rows, axis=0)])
  outputs = []
  start = last_log = time.perf_counter()

  def collect(result, done):
    nonlocal last_log
    outputs.append(jax.tree.map(np.asarray, result))
    now = time.perf_counter()
    if now - last_log >= log_every_s or done == num_rows:
      last_log = now
      rate = done / (now - start)
      logging.info('%s: %d/%d users, %.1f users/s, ETA %.0f s', name, done, num_rows, rate,
                   (num_rows - done) / rate)

  pending = None
  for i in range(num_batches):
    launched = fn(padded[i * batch_size:(i + 1) * batch_size], i * batch_size)
    if pending is not None:
      collect(pending, i * batch_size)
    pending = launched
  collect(pending, num_rows)
  return tuple(np.concatenate(x)[:num_rows] for x in zip(*outputs))
