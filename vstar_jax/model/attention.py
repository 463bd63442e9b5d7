"""KV caches, attention and the pre-norm transformer block of the decoder.

Decoding shares one prompt KV cache per user across all beams (or tree nodes): attention
of a beam's query is a single softmax over the prompt keys [B, P] and that beam's own
suffix keys [B, W, S], so the prompt is never copied per beam.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

NEG = -1e30


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


def init_suffix_cache(cfg, batch: int, width: int) -> SuffixCache:
  """Empty per-beam suffix cache: k, v [num_layers, B, W, 0, H, Dh]."""
  shape = (cfg.num_layers, batch, width, 0, cfg.num_heads, cfg.head_dim)
  zeros = jnp.zeros(shape, jnp.dtype(cfg.dtype))
  return SuffixCache(k=zeros, v=zeros)


def reorder_suffix_cache(cache: SuffixCache, parent: jnp.ndarray) -> SuffixCache:
  """Beam w' of the result copies beam parent[b, w'] (parent [B, W'] int32, any W')."""
  index = parent[None, :, :, None, None, None]
  return jax.tree.map(lambda x: jnp.take_along_axis(x, index, axis=2), cache)


def attention(q, k, v, mask):
  """Masked softmax attention. q [B, Q, H, Dh], k/v [B, S, H, Dh], mask [B, Q, S]."""
  logits = jnp.einsum('bqhd,bshd->bhqs', q, k, preferred_element_type=jnp.float32)
  logits = jnp.where(mask[:, None], logits * q.shape[-1] ** -0.5, NEG)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum('bhqs,bshd->bqhd', weights, v)


def shared_prompt_attention(q, prompt_k, prompt_v, prompt_mask, suffix_k, suffix_v, suffix_mask):
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
  to_prompt = jnp.where(prompt_mask[:, None, None, None, :], to_prompt * scale, NEG)
  to_suffix = jnp.where(suffix_mask, to_suffix * scale, NEG)
  weights = jax.nn.softmax(jnp.concatenate([to_prompt, to_suffix], axis=-1), axis=-1)
  weights = weights.astype(prompt_v.dtype)
  num_prompt = prompt_k.shape[1]
  return (jnp.einsum('bwhqp,bphd->bwqhd', weights[..., :num_prompt], prompt_v)
          + jnp.einsum('bwhqs,bwshd->bwqhd', weights[..., num_prompt:], suffix_v))


class Block(nn.Module):
  """Pre-norm transformer block; attention itself is done by the caller."""
  cfg: 'DecoderConfig'  # model.decoder.DecoderConfig

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
