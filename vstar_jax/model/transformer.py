"""The decoder's Flax module: embeddings, transformer blocks, policy / value / Q heads, cached passes.

Its methods are the passes training and decoding use (model.decoder wraps them as pure
functions): the teacher-forced pass (SFT, RL scoring), the prompt prefill, the beam step
over per-beam suffix caches, the prefix pass (recomputing a short suffix) and the node
pass of VED (one token per tree node on top of its parent's cached suffix).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vstar_jax.model import attention
from vstar_jax.model import layout
from vstar_jax.model import value_head
from vstar_jax.model.layout import NUM_SPECIAL, PAD, SEP


class Decoder(nn.Module):
  """The transformer; its methods are the passes used by training and decoding."""
  cfg: DecoderConfig

  def setup(self):
    cfg = self.cfg
    init = nn.initializers.normal(0.02)
    self.token_embed = nn.Embed(cfg.vocab_size, cfg.d_model, embedding_init=init)
    self.level_embed = nn.Embed(cfg.num_levels + 1, cfg.d_model, embedding_init=init)
    self.recency_embed = nn.Embed(cfg.max_history + 2, cfg.d_model, embedding_init=init)
    if cfg.item_hash_buckets:
      self.item_embed_a = nn.Embed(cfg.item_hash_buckets + 1, cfg.d_model, embedding_init=init)
      self.item_embed_b = nn.Embed(cfg.item_hash_buckets + 1, cfg.d_model, embedding_init=init)
    if cfg.item_feature_dim:
      # Frozen input (stop_gradient here, no weight decay in train.state); the trainer fills it.
      self.item_text = self.param('item_text', nn.initializers.zeros,
                                  (len(cfg.item_feature_keys), cfg.item_feature_dim))
      self.item_text_proj = nn.Dense(cfg.d_model, use_bias=False, kernel_init=init)
    self.blocks = [attention.Block(cfg) for _ in range(cfg.num_layers)]
    self.final_norm = nn.RMSNorm(dtype=jnp.dtype(cfg.dtype))
    if not cfg.tie_embeddings:
      self.head = self.param('head', init, (cfg.num_levels, cfg.num_codes, cfg.d_model))
    self.value_head = value_head.ValueHead(cfg.d_model, jnp.dtype(cfg.dtype))
    self.q_head = value_head.QHead(cfg.num_levels, cfg.num_codes, cfg.d_model, jnp.dtype(cfg.dtype))
    self.drop = nn.Dropout(cfg.dropout)

  def _embed(self, tokens, levels, recency, deterministic: bool, history=None):
    x = self.token_embed(tokens) + self.level_embed(levels) + self.recency_embed(recency)
    if history is not None and self.cfg.item_hash_buckets:
      buckets = layout.item_hashes(self.cfg, history)                        # [2, B, T]
      per_item = self.item_embed_a(buckets[0]) + self.item_embed_b(buckets[1])  # [B, T, D]
      per_token = jnp.repeat(per_item, self.cfg.num_levels, axis=1)  # [B, T*L, D]
      x = x.at[:, 1:1 + per_token.shape[1]].add(per_token)
    if history is not None and self.cfg.item_feature_dim:
      per_token = jnp.repeat(self._item_features(history), self.cfg.num_levels, axis=1)
      x = x.at[:, 1:1 + per_token.shape[1]].add(per_token)
    return self.drop(x.astype(jnp.dtype(self.cfg.dtype)), deterministic=deterministic)

  def _item_features(self, history):
    """history [B, T, L] -> [B, T, D] projected frozen features (0 for PAD / unknown SIDs)."""
    keys = jnp.asarray(self.cfg.item_feature_keys, jnp.uint32)              # [N]
    query = layout.sid_keys(history, self.cfg.num_codes)                           # [B, T]
    row = jnp.clip(jnp.searchsorted(keys, query), 0, keys.shape[0] - 1)
    found = (keys[row] == query) & (history[..., 0] >= 0)
    features = jax.lax.stop_gradient(self.item_text)[row] * found[..., None]
    return self.item_text_proj(features)

  def _head_weights(self):
    """[L, K, D] output embeddings of the code tokens, per level."""
    cfg = self.cfg
    if cfg.tie_embeddings:
      codes = self.token_embed.embedding[NUM_SPECIAL:]
      return codes.reshape(cfg.num_levels, cfg.num_codes, cfg.d_model)
    return self.head

  def _outputs(self, hidden, level):
    """hidden [..., D] (before final norm) -> level-restricted log-probs [..., K], V [...], Q [..., K].

    `level` is a static int, or an int array [...] (one level per row).
    """
    h = self.final_norm(hidden)
    if isinstance(level, int):
      logits = h @ self._head_weights()[level].T.astype(h.dtype)
    else:
      logits = jnp.einsum('...d,lkd->...lk', h, self._head_weights().astype(h.dtype))
      logits = jnp.take_along_axis(logits, level[..., None, None], axis=-2)[..., 0, :]
    return (jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), self.value_head(h),
            self.q_head(h, level))

  def teacher_forced(self, history, target, deterministic: bool):
    """Teacher-forced full-sequence pass -> log-probs [B, L, K], V [B, L+1], Q [B, L, K]."""
    cfg = self.cfg
    p_tokens, p_levels, p_recency = layout.prompt_inputs(cfg, history)
    s_tokens, s_levels = layout.suffix_inputs(cfg, target)
    tokens = jnp.concatenate([p_tokens, s_tokens], axis=1)
    levels = jnp.concatenate([p_levels, s_levels])
    recency = jnp.concatenate([p_recency, jnp.zeros_like(s_levels)])
    length = tokens.shape[1]
    causal = jnp.tril(jnp.ones((length, length), bool))
    mask = causal[None] & (tokens != PAD)[:, None, :]
    x = self._embed(tokens, levels, recency, deterministic, history)
    for block in self.blocks:
      k, v = block.keys_values(x)
      x = block.update(x, attention.attention(block.queries(x), k, v, mask), deterministic)
    h = self.final_norm(x[:, p_tokens.shape[1]:])
    logits = jnp.einsum('bld,lkd->blk', h[:, :cfg.num_levels],
                        self._head_weights().astype(h.dtype))
    q = self.q_head(h[:, :cfg.num_levels], jnp.broadcast_to(jnp.arange(cfg.num_levels),
                                                            h.shape[:1] + (cfg.num_levels,)))
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), self.value_head(h), q

  def prefill(self, history) -> attention.PromptCache:
    """Prompt keys/values of every layer; the last layer's prompt outputs are never read."""
    tokens, levels, recency = layout.prompt_inputs(self.cfg, history)
    key_mask = tokens != PAD
    mask = jnp.tril(jnp.ones((tokens.shape[1],) * 2, bool))[None] & key_mask[:, None, :]
    x = self._embed(tokens, levels, recency, deterministic=True, history=history)
    ks, vs = [], []
    for i, block in enumerate(self.blocks):
      k, v = block.keys_values(x)
      ks.append(k)
      vs.append(v)
      if i + 1 < len(self.blocks):
        x = block.update(x, attention.attention(block.queries(x), k, v, mask), deterministic=True)
    return attention.PromptCache(k=jnp.stack(ks), v=jnp.stack(vs), mask=key_mask)

  def suffix(self, prompt: attention.PromptCache, past_k, past_v, tokens, levels):
    """Runs Q new suffix tokens per beam after S0 cached ones.

    Args:
      prompt: the users' attention.PromptCache.
      past_k, past_v: [num_layers, B, W, S0, H, Dh] keys/values of earlier suffix tokens.
      tokens: [B, W, Q] int32 new tokens (suffix indices S0 .. S0+Q-1).
      levels: [Q] int32 their SID-level ids.

    Returns:
      hidden [B, W, Q, D] (before final norm), past and new keys and values
      [num_layers, B, W, S0+Q, H, Dh].
    """
    num_past, num_new = past_k.shape[3], tokens.shape[2]
    mask = jnp.tril(jnp.ones((num_new, num_past + num_new), bool), k=num_past)
    x = self._embed(tokens, levels, jnp.zeros_like(levels), deterministic=True)
    beams = tokens.shape
    x = x.reshape(-1, x.shape[-1])  # Dense layers on [B*W*Q, D]: plain 2-D matmuls.
    all_k, all_v = [], []
    for i, block in enumerate(self.blocks):
      k, v = block.keys_values(x)
      k, v = k.reshape(beams + k.shape[-2:]), v.reshape(beams + v.shape[-2:])
      all_k.append(jnp.concatenate([past_k[i], k], axis=2))
      all_v.append(jnp.concatenate([past_v[i], v], axis=2))
      attended = attention.shared_prompt_attention(block.queries(x).reshape(k.shape), prompt.k[i],
                                          prompt.v[i], prompt.mask, all_k[i], all_v[i], mask)
      x = block.update(x, attended.reshape(x.shape[:1] + k.shape[-2:]), deterministic=True)
    return x.reshape(beams + x.shape[-1:]), jnp.stack(all_k), jnp.stack(all_v)

  def decode(self, prompt: attention.PromptCache, cache: attention.SuffixCache, codes_prev, level: int):
    """One incremental step at suffix index `level` (static) for every beam."""
    if level == 0:
      tokens = jnp.full(codes_prev.shape + (1,), SEP, jnp.int32)
      levels = jnp.array([self.cfg.num_levels])
    else:
      tokens = layout.code_tokens(self.cfg, codes_prev, level - 1)[..., None]
      levels = jnp.array([level - 1])
    hidden, k, v = self.suffix(prompt, cache.k, cache.v, tokens, levels)
    log_probs, values, _ = self._outputs(hidden[:, :, 0], level)
    return log_probs, values, attention.SuffixCache(k=k, v=v)

  def prefix(self, prompt: attention.PromptCache, prefix, depth):
    """Next-level log-probs [B, W, K], V [B, W], Q [B, W, K] of prefixes [B, W, L] of depth [B, W]."""
    cfg = self.cfg
    tokens, levels = layout.suffix_inputs(cfg, prefix)
    empty = attention.init_suffix_cache(cfg, *tokens.shape[:2])
    hidden, _, _ = self.suffix(prompt, empty.k, empty.v, tokens, levels)
    h = jnp.take_along_axis(hidden, depth[..., None, None], axis=2)[:, :, 0]
    return self._outputs(h, jnp.minimum(depth, cfg.num_levels - 1))

  def node(self, prompt: attention.PromptCache, past_k, past_v, position, tokens, levels):
    """One new suffix token per tree node, each at its own suffix position (VED expansions).

    Args:
      prompt: the users' PromptCache.
      past_k, past_v: [num_layers, B, W, S, H, Dh], each node's parent suffix keys/values in
        slots 0 .. position-1 (later slots are ignored).
      position: [B, W] int32 suffix index of the new token (0: SEP, the root).
      tokens: [B, W] int32 the new tokens; levels: [B, W] int32 their SID-level ids.

    Returns:
      log-probs [B, W, K] of the level-`position` code, V [B, W], Q [B, W, K], and the new
      token's keys/values [num_layers, B, W, H, Dh] (what a tree node stores).
    """
    cfg = self.cfg
    slots = jnp.arange(past_k.shape[3])
    write = (slots == position[..., None])[..., None, None]             # [B, W, S, 1, 1]
    mask = (slots <= position[..., None])[:, :, None, None, :]          # [B, W, 1, 1, S]
    x = self._embed(tokens, levels, jnp.zeros_like(levels), deterministic=True)
    beams = tokens.shape
    x = x.reshape(-1, x.shape[-1])
    new_k, new_v = [], []
    for i, block in enumerate(self.blocks):
      k, v = block.keys_values(x)
      k, v = k.reshape(beams + (1,) + k.shape[-2:]), v.reshape(beams + (1,) + v.shape[-2:])
      new_k.append(k[:, :, 0])
      new_v.append(v[:, :, 0])
      attended = attention.shared_prompt_attention(
          block.queries(x).reshape(k.shape), prompt.k[i], prompt.v[i], prompt.mask,
          jnp.where(write, k, past_k[i]), jnp.where(write, v, past_v[i]), mask)
      x = block.update(x, attended.reshape(x.shape[:1] + k.shape[-2:]), deterministic=True)
    level = jnp.minimum(position, cfg.num_levels - 1)
    log_probs, value, q = self._outputs(x.reshape(beams + x.shape[-1:]), level)
    return log_probs, value, q, jnp.stack(new_k), jnp.stack(new_v)
