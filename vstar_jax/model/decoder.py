"""Decoder-only transformer over SID code tokens: the policy that V-STAR trains.

The hidden state at suffix index d (model.layout: prompt [BOS, history codes], suffix
[SEP, c_0 .. c_{L-1}]) predicts the level-d code (output head restricted to that level's
K codes) and gives V(prefix of length d) through the value head. Embeddings: token +
SID level + recency, plus (optional) two hashed item-identity tables and a projected
frozen item-feature table. Decoding prefills the prompt once per user and shares its KV
cache across beams and tree nodes (model.attention).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.model import attention
from vstar_jax.model import layout
from vstar_jax.model import value_head
from vstar_jax.model.layout import BOS, NUM_SPECIAL, PAD, SEP


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Static decoder hyper-parameters (hashable: a static argument of jit).

  Attributes:
    num_levels: L, codes per SID.
    num_codes: K, codebook size per level.
    max_history: T, history items per prompt.
    num_layers: transformer blocks.
    d_model: D, residual width.
    num_heads: H, attention heads (D must divide by H).
    d_ff: MLP hidden width.
    dropout: dropout rate on embeddings and residual branches (train only).
    tie_embeddings: output head = the code tokens' input embeddings.
    dtype: activation / matmul dtype name ('float32' or 'bfloat16'); params
      and log-softmax stay float32.
    item_hash_buckets: 0, or the size of each of two hashed item-identity
      embedding tables: every history token also gets the sum of two
      embeddings indexed by two hashes of its item's whole SID, so the model
      can memorise item-to-item transitions without first composing the L
      codes (a hash embedding: collisions in both tables are rare).
    item_feature_keys: sorted SID keys (sid_keys) of the rows of a frozen
      item-feature table (params['item_text'], [N, item_feature_dim]), e.g.
      the items' text embeddings; every history item found there gets a learned
      projection of its features added to its tokens. Empty: no such input.
    item_feature_dim: E, width of that table (0 when item_feature_keys is empty).
  """
  num_levels: int = 3
  num_codes: int = 256
  max_history: int = 10
  num_layers: int = 4
  d_model: int = 256
  num_heads: int = 4
  d_ff: int = 1024
  dropout: float = 0.1
  tie_embeddings: bool = True
  dtype: str = 'float32'
  item_hash_buckets: int = 0
  item_feature_keys: tuple = dataclasses.field(default=(), repr=False)
  item_feature_dim: int = 0

  def __post_init__(self):
    if self.d_model % self.num_heads:
      raise ValueError(f'd_model={self.d_model} is not divisible by num_heads={self.num_heads}')
    if bool(self.item_feature_keys) != bool(self.item_feature_dim):
      raise ValueError('item_feature_keys and item_feature_dim must be set together')
    if self.item_feature_keys and self.num_codes ** self.num_levels > 2 ** 32:
      raise ValueError(f'item features need num_codes**num_levels <= 2**32 (SID keys are uint32), '
                       f'got {self.num_codes}**{self.num_levels}')

  @property
  def vocab_size(self) -> int:
    return NUM_SPECIAL + self.num_levels * self.num_codes

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def prompt_len(self) -> int:
    return 1 + self.max_history * self.num_levels


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

  def _outputs(self, hidden, level: int):
    """hidden [..., D] (before final norm) -> level-restricted log-probs [..., K], V [...]."""
    h = self.final_norm(hidden)
    logits = h @ self._head_weights()[level].T.astype(h.dtype)
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), self.value_head(h)

  def teacher_forced(self, history, target, deterministic: bool):
    """Teacher-forced full-sequence pass -> log-probs [B, L, K], values [B, L+1]."""
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
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), self.value_head(h)

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
    log_probs, values = self._outputs(hidden[:, :, 0], level)
    return log_probs, values, attention.SuffixCache(k=k, v=v)

  def prefix(self, prompt: attention.PromptCache, prefix, depth):
    """Next-level log-probs [B, W, K] and V [B, W] for prefixes [B, W, L] of depth [B, W]."""
    cfg = self.cfg
    tokens, levels = layout.suffix_inputs(cfg, prefix)
    empty = attention.init_suffix_cache(cfg, *tokens.shape[:2])
    hidden, _, _ = self.suffix(prompt, empty.k, empty.v, tokens, levels)
    h = jnp.take_along_axis(hidden, depth[..., None, None], axis=2)[:, :, 0]
    h = self.final_norm(h)
    logits = jnp.einsum('bwd,lkd->bwlk', h, self._head_weights().astype(h.dtype))
    level = jnp.minimum(depth, cfg.num_levels - 1)
    logits = jnp.take_along_axis(logits, level[..., None, None], axis=2)[:, :, 0]
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), self.value_head(h)


def init_params(cfg: DecoderConfig, rng: jax.Array, item_features=None):
  """Fresh params pytree (the 'params' collection; its 'value_head' subtree is V).

  item_features: [N, E] table from item_feature_table (rows in cfg.item_feature_keys
  order); required when cfg.item_feature_dim, else zeros are left (a restore template).
  """
  history = jnp.full((1, cfg.max_history, cfg.num_levels), -1, jnp.int32)
  target = jnp.zeros((1, cfg.num_levels), jnp.int32)
  params = Decoder(cfg).init(rng, history, target, True, method=Decoder.teacher_forced)['params']
  if item_features is not None:
    if not cfg.item_feature_dim:
      raise ValueError('item_features given but cfg.item_feature_dim is 0')
    expected = params['item_text'].shape
    if tuple(item_features.shape) != expected:
      raise ValueError(f'item_features has shape {tuple(item_features.shape)}, expected {expected}')
    params = dict(params, item_text=jnp.asarray(item_features, jnp.float32))
  return params


def forward_train(params, cfg: DecoderConfig, history, target, *, rng=None, train: bool = False):
  """Teacher-forced pass (SFT / RL likelihoods).

  Args:
    params: params pytree from init_params.
    cfg: the DecoderConfig.
    history: [B, T, L] int32 SID codes, -1 for missing items (T <= max_history).
    target: [B, L] int32 codes of the next item.
    rng: dropout key, required when train.
    train: apply dropout.

  Returns:
    log_probs [B, L, K] float32, log-softmax over level l's codes given the
    prompt and target[:, :l]; values [B, L+1] float32, V(target[:, :d]).
  """
  if train and rng is None:
    raise ValueError('forward_train(train=True) needs a dropout rng')
  rngs = {'dropout': rng} if train else None
  return Decoder(cfg).apply({'params': params}, history, target, not train,
                            method=Decoder.teacher_forced, rngs=rngs)


def prefill(params, cfg: DecoderConfig, history) -> attention.PromptCache:
  """Prompt KV cache for history [B, T, L], computed once per user."""
  return Decoder(cfg).apply({'params': params}, history, method=Decoder.prefill)


def decode_step(params, cfg: DecoderConfig, prompt_cache: attention.PromptCache, suffix_cache: attention.SuffixCache,
                codes_prev, level: int):
  """Feeds suffix index `level` (SEP at 0, else the level-1 code) for every beam.

  Args:
    params: params pytree.
    cfg: the DecoderConfig.
    prompt_cache: from prefill, shared by all beams.
    suffix_cache: k, v [num_layers, B, W, level, H, Dh], one slot per earlier step.
    codes_prev: [B, W] int32 code chosen at level-1 (ignored at level 0).
    level: static SID level to predict, 0 <= level < L.

  Returns:
    log_probs [B, W, K] of the level-`level` code, values [B, W] = V(prefix of
    length `level`), and the suffix cache grown to level + 1 slots.
  """
  if not 0 <= level < cfg.num_levels:
    raise ValueError(f'level must lie in [0, {cfg.num_levels}), got {level}')
  if suffix_cache.k.shape[3] != level:
    raise ValueError(f'decode_step(level={level}) needs a suffix cache of {level} slots, '
                     f'got {suffix_cache.k.shape[3]}')
  return Decoder(cfg).apply({'params': params}, prompt_cache, suffix_cache, codes_prev, level,
                            method=Decoder.decode)


def prefix_forward(params, cfg: DecoderConfig, prompt_cache: attention.PromptCache, prefix, depth):
  """One backbone forward per tree node (VED): recomputes the short suffix.

  Args:
    params: params pytree.
    cfg: the DecoderConfig.
    prompt_cache: from prefill.
    prefix: [B, W, L] int32 codes; entries at index >= depth are ignored.
    depth: [B, W] int32 prefix length in [0, L].

  Returns:
    log_probs [B, W, K] of the level-`depth` code (level L-1 where depth == L,
    not meaningful there) and values [B, W] = V(prefix[:depth]).
  """
  return Decoder(cfg).apply({'params': params}, prompt_cache, prefix, depth,
                            method=Decoder.prefix)
