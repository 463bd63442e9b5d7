"""The decoder-only transformer over SID code tokens (the policy V-STAR trains), as pure functions.

The hidden state at suffix index d (model.layout: prompt [BOS, history codes], suffix
[SEP, c_0 .. c_{L-1}]) predicts the level-d code (output head restricted to that level's
K codes) and gives V(prefix of length d) through the value head and Q(prefix, .), the value
of every level-d code, through the Q head. The Flax module is model.transformer.Decoder;
this module holds its static config and the passes as functions of (params, cfg, ...).
Decoding prefills the prompt once per user and shares its KV cache across beams and tree
nodes (model.attention).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vstar_jax.model import attention
from vstar_jax.model import transformer
from vstar_jax.model.layout import NUM_SPECIAL


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Static decoder hyper-parameters (hashable: a static argument of jit).

  The defaults are config.model's (tests/test_defaults.py), for 3-level SIDs of 256 codes and
  10-item histories; model.backbone.model_config builds one from a config and a dataset.

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
  d_model: int = 128
  num_heads: int = 4
  d_ff: int = 512
  dropout: float = 0.1
  tie_embeddings: bool = True
  dtype: str = 'float32'
  item_hash_buckets: int = 4096
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


def _apply(params, cfg: DecoderConfig, method, *args, **kwargs):
  return transformer.Decoder(cfg).apply({'params': params}, *args, method=method, **kwargs)


def init_params(cfg: DecoderConfig, rng: jax.Array, item_features=None):
  """Fresh params pytree (the 'params' collection; subtrees 'value_head' = V, 'q_head' = Q).

  item_features: [N, E] table from layout.item_feature_table (rows in cfg.item_feature_keys
  order); required when cfg.item_feature_dim, else zeros are left (a restore template).
  """
  history = jnp.full((1, cfg.max_history, cfg.num_levels), -1, jnp.int32)
  target = jnp.zeros((1, cfg.num_levels), jnp.int32)
  params = transformer.Decoder(cfg).init(rng, history, target, True,
                                         method=transformer.Decoder.teacher_forced)['params']
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
    log_probs [B, L, K] float32, log-softmax over level l's codes given the prompt and
    target[:, :l]; values [B, L+1] float32, V(target[:, :d]); q [B, L, K] float32,
    Q(target[:, :l], c) for every level-l code c.
  """
  if train and rng is None:
    raise ValueError('forward_train(train=True) needs a dropout rng')
  rngs = {'dropout': rng} if train else None
  return _apply(params, cfg, transformer.Decoder.teacher_forced, history, target, not train,
                rngs=rngs)


def prefill(params, cfg: DecoderConfig, history) -> attention.PromptCache:
  """Prompt KV cache for history [B, T, L], computed once per user."""
  return _apply(params, cfg, transformer.Decoder.prefill, history)


def decode_step(params, cfg: DecoderConfig, prompt_cache: attention.PromptCache,
                suffix_cache: attention.SuffixCache, codes_prev, level: int):
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
  return _apply(params, cfg, transformer.Decoder.decode, prompt_cache, suffix_cache, codes_prev,
                level)


def prefix_forward(params, cfg: DecoderConfig, prompt_cache: attention.PromptCache, prefix, depth):
  """The outputs at every prefix (recomputing its short suffix from scratch).

  Args:
    params: params pytree.
    cfg: the DecoderConfig.
    prompt_cache: from prefill.
    prefix: [B, W, L] int32 codes; entries at index >= depth are ignored.
    depth: [B, W] int32 prefix length in [0, L].

  Returns:
    log_probs [B, W, K] of the level-`depth` code, values [B, W] = V(prefix[:depth]) and
    q [B, W, K] = Q(prefix[:depth], .) (log-probs and Q of level L-1 where depth == L:
    not meaningful there).
  """
  return _apply(params, cfg, transformer.Decoder.prefix, prompt_cache, prefix, depth)


def node_forward(params, cfg: DecoderConfig, prompt_cache: attention.PromptCache, past_k, past_v,
                 position, tokens, levels):
  """One token per tree node on its parent's cached suffix (VED's expansion; transformer.node).

  Args:
    past_k, past_v: [num_layers, B, W, S, H, Dh] parent suffix keys/values (slots < position).
    position: [B, W] int32 suffix index of the new token; tokens, levels: [B, W] int32.

  Returns:
    (log_probs [B, W, K], V [B, W], Q [B, W, K], the new token's k, v [num_layers, B, W, H, Dh]).
  """
  return _apply(params, cfg, transformer.Decoder.node, prompt_cache, past_k, past_v, position,
                tokens, levels)


def sft_loss(params, cfg: DecoderConfig, history, target, rng, label_smoothing: float):
  """Mean label-smoothed NLL of the target codes (the SFT objective; train.sft).

  Args:
    history: [B, T, L] int32; target: [B, L] int32; rng: the dropout key.

  Returns:
    loss [] and metrics {'loss', 'nll', 'acc_L1'.. per level}.
  """
  log_probs, _, _ = forward_train(params, cfg, history, target, rng=rng, train=True)
  onehot = jax.nn.one_hot(target, cfg.num_codes)
  smoothed = (1.0 - label_smoothing) * onehot + label_smoothing / cfg.num_codes
  loss = -(smoothed * log_probs).sum(-1).mean()
  nll = -(onehot * log_probs).sum(-1).mean()
  correct = (jnp.argmax(log_probs, -1) == target).mean(0)
  out = {'loss': loss, 'nll': nll}
  out.update({f'acc_L{l + 1}': correct[l] for l in range(cfg.num_levels)})
  return loss, out
