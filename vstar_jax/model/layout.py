"""Token layout of the decoder's sequences: SID codes as token ids, prompt and suffix inputs.

Sequence layout (one user):
  prompt  = [BOS, item_0 codes, ..., item_{T-1} codes]   P = 1 + T*L tokens
  suffix  = [SEP, c_0, ..., c_{L-1}]                     L + 1 tokens
Histories are left-padded (most recent item at T-1); padded items become PAD tokens
whose keys are masked out of attention. Token id of (level l, code c) is
NUM_SPECIAL + l*K + c. Every token also gets a SID-level id (l, or L for specials) and a
recency id (0 for the suffix, i.e. the next item; T - t for history slot t, so 1 is the
most recent; max_history + 1 for BOS): recency instead of absolute slot index makes the
output independent of how much left padding a history carries.

`cfg` below is a model.decoder.DecoderConfig (only its sizes are read).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PAD, BOS, SEP, EOS = 0, 1, 2, 3  # EOS is reserved: SIDs have a fixed length L.
NUM_SPECIAL = 4


def code_tokens(cfg, codes: jnp.ndarray, levels: jnp.ndarray) -> jnp.ndarray:
  """Token ids of codes [...] at SID levels [...] (broadcast); PAD where code < 0."""
  return jnp.where(codes >= 0, NUM_SPECIAL + levels * cfg.num_codes + codes, PAD).astype(jnp.int32)


_HASH_MULTIPLIERS = (0x9E3779B1, 0x85EBCA77)


def item_hashes(cfg, history: jnp.ndarray) -> jnp.ndarray:
  """Two hash buckets in [1, item_hash_buckets] per history item: [B, T, L] -> [2, B, T] (0 = no item)."""
  out = []
  for multiplier in _HASH_MULTIPLIERS:
    x = jnp.zeros(history.shape[:-1], jnp.uint32)
    for level in range(history.shape[-1]):
      x = (x ^ (history[..., level] + 1).astype(jnp.uint32)) * jnp.uint32(multiplier)
      x = x ^ (x >> 15)
    bucket = (x % jnp.uint32(cfg.item_hash_buckets)).astype(jnp.int32) + 1
    out.append(jnp.where(history[..., 0] >= 0, bucket, 0))
  return jnp.stack(out)


def sid_keys(codes, num_codes: int):
  """One uint32 key per SID: codes [..., L] -> [...], the SID read as a base-K number.

  Works on numpy and jax arrays alike (the key table is built with numpy).
  """
  xp = jnp if isinstance(codes, jax.Array) else np
  key = xp.zeros(codes.shape[:-1], xp.uint32)
  for level in range(codes.shape[-1]):
    key = key * xp.uint32(num_codes) + xp.maximum(codes[..., level], 0).astype(xp.uint32)
  return key


def item_feature_table(item_codes, num_codes: int, features):
  """(sorted SID keys, table [N, E]) for the frozen item-feature input.

  Args:
    item_codes: [I, L] int item SIDs.
    num_codes: K.
    features: [I, E] float per-item features (row i = item i).

  Items that share a SID (shipped SIDs have a few such groups) share one row: the
  mean of their features.
  """
  item_codes, features = np.asarray(item_codes), np.asarray(features, np.float32)
  if features.ndim != 2 or features.shape[0] != item_codes.shape[0]:
    raise ValueError(f'item features of shape {features.shape} do not match {item_codes.shape[0]} items')
  keys, inverse = np.unique(sid_keys(item_codes, num_codes), return_inverse=True)
  table = np.zeros((len(keys), features.shape[1]), np.float32)
  np.add.at(table, inverse.reshape(-1), features)
  table /= np.bincount(inverse.reshape(-1), minlength=len(keys))[:, None]
  return tuple(int(k) for k in keys), table


def prompt_inputs(cfg, history: jnp.ndarray):
  """history [B, T, L] -> tokens [B, P], level ids [P], recency ids [P]."""
  batch, num_items, num_levels = history.shape
  if num_items > cfg.max_history or num_levels != cfg.num_levels:
    raise ValueError(f'history shape {history.shape} does not fit T<={cfg.max_history}, '
                     f'L={cfg.num_levels}')
  items = code_tokens(cfg, history, jnp.arange(num_levels)).reshape(batch, num_items * num_levels)
  tokens = jnp.concatenate([jnp.full((batch, 1), BOS, jnp.int32), items], axis=1)
  levels = jnp.concatenate([jnp.array([num_levels]), jnp.tile(jnp.arange(num_levels), num_items)])
  recency = jnp.concatenate([jnp.array([cfg.max_history + 1]),
                             jnp.repeat(num_items - jnp.arange(num_items), num_levels)])
  return tokens, levels, recency


def suffix_inputs(cfg, codes: jnp.ndarray):
  """codes [..., S-1] (the codes fed after SEP) -> tokens [..., S], level ids [S]."""
  num_fed = codes.shape[-1]
  sep = jnp.full(codes.shape[:-1] + (1,), SEP, jnp.int32)
  tokens = jnp.concatenate([sep, code_tokens(cfg, codes, jnp.arange(num_fed))], axis=-1)
  levels = jnp.concatenate([jnp.array([cfg.num_levels]), jnp.arange(num_fed)])
  return tokens, levels
