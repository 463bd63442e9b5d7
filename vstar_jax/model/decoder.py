"""Decoder-only transformer over SID code tokens: the policy that V-STAR trains.

Sequence layout (one user):
  prompt  = [BOS, item_0 codes, ..., item_{T-1} codes]   P = 1 + T*L tokens
  suffix  = [SEP, c_0, ..., c_{L-1}]                     L + 1 tokens
Histories are left-padded (most recent item at T-1); padded items become PAD
tokens whose keys are masked out of attention. The hidden state at suffix index d
predicts the level-d code (output head restricted to that level's K codes) and
gives V(prefix of length d) through the value head.

Token id of (level l, code c) is NUM_SPECIAL + l*K + c. Every token also gets a
SID-level embedding (l, or L for specials) and a recency embedding (0 for the
suffix, i.e. the next item; T - t for history slot t, so 1 is the most recent;
max_history + 1 for BOS). Recency instead of absolute slot index makes the
output independent of how much left padding a history carries.

Decoding shares one prompt KV cache per user across all beams: attention of a
beam's query is a single softmax over the prompt keys [B, P] and that beam's own
suffix keys [B, W, S], so the prompt is never copied per beam.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.model import value_head

PAD, BOS, SEP, EOS = 0, 1, 2, 3  # EOS is reserved: SIDs have a fixed length L.
NUM_SPECIAL = 4
_NEG = -1e30


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


@flax.struct.dataclass
class PromptCache:
  """Per-layer keys/values of the prompt, computed once per user.

  Attributes:
    k, v: [num_layers, B, P, H, Dh].
    mask: [B, P] bool, False at PAD keys.
  """
  k: jnp.ndarray
  v: jnp.ndarray
  mask: jnp.ndarray


@flax.struct.dataclass
class SuffixCache:
  """Per-layer keys/values of the suffix tokens each beam has fed so far.

  It grows by one slot per decode_step (slot d holds SEP for d = 0, else c_{d-1}),
  so reordering beams never moves empty slots.

  Attributes:
    k, v: [num_layers, B, W, S, H, Dh], S = number of decode steps taken.
  """
  k: jnp.ndarray
  v: jnp.ndarray


def code_tokens(cfg: DecoderConfig, codes: jnp.ndarray, levels: jnp.ndarray) -> jnp.ndarray:
  """Token ids of codes [...] at SID levels [...] (broadcast); PAD where code < 0."""
  return jnp.where(codes >= 0, NUM_SPECIAL + levels * cfg.num_codes + codes, PAD).astype(jnp.int32)


_HASH_MULTIPLIERS = (0x9E3779B1, 0x85EBCA77)


def item_hashes(cfg: DecoderConfig, history: jnp.ndarray) -> jnp.ndarray:
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


def _prompt_inputs(cfg: DecoderConfig, history: jnp.ndarray):
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


def _suffix_inputs(cfg: DecoderConfig, codes: jnp.ndarray):
  """codes [..., S-1] (the codes fed after SEP) -> tokens [..., S], level ids [S]."""
  num_fed = codes.shape[-1]
  sep = jnp.full(codes.shape[:-1] + (1,), SEP, jnp.int32)
  tokens = jnp.concatenate([sep, code_tokens(cfg, codes, jnp.arange(num_fed))], axis=-1)
  levels = jnp.concatenate([jnp.array([cfg.num_levels]), jnp.arange(num_fed)])
  return tokens, levels


def _attention(q, k, v, mask):
  """Masked softmax attention. q [B, Q, H, Dh], k/v [B, S, H, Dh], mask [B, Q, S]."""
  logits = jnp.einsum('bqhd,bshd->bhqs', q, k, preferred_element_type=jnp.float32)
  logits = jnp.where(mask[:, None], logits * q.shape[-1] ** -0.5, _NEG)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum('bhqs,bshd->bqhd', weights, v)


def _shared_prompt_attention(q, prompt_k, prompt_v, prompt_mask, suffix_k, suffix_v, suffix_mask):
  """One softmax over shared prompt keys and per-beam suffix keys.

  Args:
    q: [B, W, Q, H, Dh] queries of Q new suffix tokens per beam.
    prompt_k, prompt_v: [B, P, H, Dh], shared by the W beams of a user.
    prompt_mask: [B, P] bool.
    suffix_k, suffix_v: [B, W, S, H, Dh], each beam's own suffix.
    suffix_mask: [Q, S] bool (causal within the suffix).

  Returns:
    [B, W, Q, H, Dh].
  """
  scale = q.shape[-1] ** -0.5
  to_prompt = jnp.einsum('bwqhd,bphd->bwhqp', q, prompt_k, preferred_element_type=jnp.float32)
  to_suffix = jnp.einsum('bwqhd,bwshd->bwhqs', q, suffix_k, preferred_element_type=jnp.float32)
  to_prompt = jnp.where(prompt_mask[:, None, None, None, :], to_prompt * scale, _NEG)
  to_suffix = jnp.where(suffix_mask, to_suffix * scale, _NEG)
  weights = jax.nn.softmax(jnp.concatenate([to_prompt, to_suffix], axis=-1), axis=-1)
  weights = weights.astype(prompt_v.dtype)
  num_prompt = prompt_k.shape[1]
  return (jnp.einsum('bwhqp,bphd->bwqhd', weights[..., :num_prompt], prompt_v)
          + jnp.einsum('bwhqs,bwshd->bwqhd', weights[..., num_prompt:], suffix_v))


class Block(nn.Module):
  """Pre-norm transformer block; attention itself is done by the caller."""
  cfg: DecoderConfig

  def setup(self):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    init = nn.initializers.normal(0.02)
    out_init = nn.initializers.normal(0.02 / (2 * cfg.num_layers) ** 0.5)
    heads = (cfg.num_heads, cfg.head_dim)
    self.attn_norm = nn.RMSNorm(dtype=dtype)
    self.query = nn.DenseGeneral(heads, use_bias=False, dtype=dtype, kernel_init=init)
    self.key_value = nn.DenseGeneral((2,) + heads, use_bias=False, dtype=dtype, kernel_init=init)
    self.attn_out = nn.DenseGeneral(cfg.d_model, axis=(-2, -1), use_bias=False, dtype=dtype,
                                    kernel_init=out_init)
    self.mlp_norm = nn.RMSNorm(dtype=dtype)
    self.mlp_in = nn.Dense(cfg.d_ff, dtype=dtype, kernel_init=init)
    self.mlp_out = nn.Dense(cfg.d_model, dtype=dtype, kernel_init=out_init)
    self.drop = nn.Dropout(cfg.dropout)

  def keys_values(self, x):
    """x [..., D] -> k, v [..., H, Dh]."""
    kv = self.key_value(self.attn_norm(x))
    return kv[..., 0, :, :], kv[..., 1, :, :]

  def queries(self, x):
    """x [..., D] -> q [..., H, Dh]."""
    return self.query(self.attn_norm(x))

  def update(self, x, attended, deterministic: bool):
    """Residual attention output + residual GELU MLP. attended [..., H, Dh]."""
    x = x + self.drop(self.attn_out(attended), deterministic=deterministic)
    y = self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x))))
    return x + self.drop(y, deterministic=deterministic)


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
    self.blocks = [Block(cfg) for _ in range(cfg.num_layers)]
    self.final_norm = nn.RMSNorm(dtype=jnp.dtype(cfg.dtype))
    if not cfg.tie_embeddings:
      self.head = self.param('head', init, (cfg.num_levels, cfg.num_codes, cfg.d_model))
    self.value_head = value_head.ValueHead(cfg.d_model, jnp.dtype(cfg.dtype))
    self.drop = nn.Dropout(cfg.dropout)

  def _embed(self, tokens, levels, recency, deterministic: bool, history=None):
    x = self.token_embed(tokens) + self.level_embed(levels) + self.recency_embed(recency)
    if history is not None and self.cfg.item_hash_buckets:
      buckets = item_hashes(self.cfg, history)                        # [2, B, T]
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
    query = sid_keys(history, self.cfg.num_codes)                           # [B, T]
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
    p_tokens, p_levels, p_recency = _prompt_inputs(cfg, history)
    s_tokens, s_levels = _suffix_inputs(cfg, target)
    tokens = jnp.concatenate([p_tokens, s_tokens], axis=1)
    levels = jnp.concatenate([p_levels, s_levels])
    recency = jnp.concatenate([p_recency, jnp.zeros_like(s_levels)])
    length = tokens.shape[1]
    causal = jnp.tril(jnp.ones((length, length), bool))
    mask = causal[None] & (tokens != PAD)[:, None, :]
    x = self._embed(tokens, levels, recency, deterministic, history)
    for block in self.blocks:
      k, v = block.keys_values(x)
      x = block.update(x, _attention(block.queries(x), k, v, mask), deterministic)
    h = self.final_norm(x[:, p_tokens.shape[1]:])
    logits = jnp.einsum('bld,lkd->blk', h[:, :cfg.num_levels],
                        self._head_weights().astype(h.dtype))
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), self.value_head(h)

  def prefill(self, history) -> PromptCache:
    """Prompt keys/values of every layer; the last layer's prompt outputs are never read."""
    tokens, levels, recency = _prompt_inputs(self.cfg, history)
    key_mask = tokens != PAD
    mask = jnp.tril(jnp.ones((tokens.shape[1],) * 2, bool))[None] & key_mask[:, None, :]
    x = self._embed(tokens, levels, recency, deterministic=True, history=history)
    ks, vs = [], []
    for i, block in enumerate(self.blocks):
      k, v = block.keys_values(x)
      ks.append(k)
      vs.append(v)
      if i + 1 < len(self.blocks):
        x = block.update(x, _attention(block.queries(x), k, v, mask), deterministic=True)
    return PromptCache(k=jnp.stack(ks), v=jnp.stack(vs), mask=key_mask)

  def suffix(self, prompt: PromptCache, past_k, past_v, tokens, levels):
    """Runs Q new suffix tokens per beam after S0 cached ones.

    Args:
      prompt: the users' PromptCache.
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
      attended = _shared_prompt_attention(block.queries(x).reshape(k.shape), prompt.k[i],
                                          prompt.v[i], prompt.mask, all_k[i], all_v[i], mask)
      x = block.update(x, attended.reshape(x.shape[:1] + k.shape[-2:]), deterministic=True)
    return x.reshape(beams + x.shape[-1:]), jnp.stack(all_k), jnp.stack(all_v)

  def decode(self, prompt: PromptCache, cache: SuffixCache, codes_prev, level: int):
    """One incremental step at suffix index `level` (static) for every beam."""
    if level == 0:
      tokens = jnp.full(codes_prev.shape + (1,), SEP, jnp.int32)
      levels = jnp.array([self.cfg.num_levels])
    else:
      tokens = code_tokens(self.cfg, codes_prev, level - 1)[..., None]
      levels = jnp.array([level - 1])
    hidden, k, v = self.suffix(prompt, cache.k, cache.v, tokens, levels)
    log_probs, values = self._outputs(hidden[:, :, 0], level)
    return log_probs, values, SuffixCache(k=k, v=v)

  def prefix(self, prompt: PromptCache, prefix, depth):
    """Next-level log-probs [B, W, K] and V [B, W] for prefixes [B, W, L] of depth [B, W]."""
    cfg = self.cfg
    tokens, levels = _suffix_inputs(cfg, prefix)
    empty = init_suffix_cache(cfg, *tokens.shape[:2])
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


def prefill(params, cfg: DecoderConfig, history) -> PromptCache:
  """Prompt KV cache for history [B, T, L], computed once per user."""
  return Decoder(cfg).apply({'params': params}, history, method=Decoder.prefill)


def init_suffix_cache(cfg: DecoderConfig, batch: int, width: int) -> SuffixCache:
  """Empty per-beam suffix cache: k, v [num_layers, B, W, 0, H, Dh]."""
  shape = (cfg.num_layers, batch, width, 0, cfg.num_heads, cfg.head_dim)
  zeros = jnp.zeros(shape, jnp.dtype(cfg.dtype))
  return SuffixCache(k=zeros, v=zeros)


def reorder_suffix_cache(cache: SuffixCache, parent: jnp.ndarray) -> SuffixCache:
  """Beam w' of the result copies beam parent[b, w'] (parent [B, W'] int32, any W')."""
  index = parent[None, :, :, None, None, None]
  return jax.tree.map(lambda x: jnp.take_along_axis(x, index, axis=2), cache)


def decode_step(params, cfg: DecoderConfig, prompt_cache: PromptCache, suffix_cache: SuffixCache,
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


def prefix_forward(params, cfg: DecoderConfig, prompt_cache: PromptCache, prefix, depth):
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
