"""The Qwen2 / Llama decoder block as pure functions: config, rotary embeddings, RMSNorm, GQA.

What model.causal_lm's Flax module and cached passes are built from. The block is the one both
architectures share: pre-RMSNorm, rotary position embeddings (rotate-half form, the config's
theta, optional 'llama3' frequency scaling), grouped-query attention (q/k/v biases for Qwen2,
none for Llama) and a SwiGLU MLP; LmConfig holds what config.json says of them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.model import attention

NEG = attention.NEG
MODEL_TYPES = ('qwen2', 'llama')
DTYPES = ('float32', 'bfloat16')


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
  """The 'llama3' rope_scaling of Llama 3.1+ configs (frequency-dependent interpolation)."""
  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class LmConfig:
  """Static causal-LM hyper-parameters, read from a checkpoint's config.json (hashable: jit static).

  Attributes:
    model_type: 'qwen2' or 'llama' (config.json's model_type; export writes it back).
    vocab_size: V, rows of the embedding and output matrices (may exceed the tokenizer).
    hidden_size: D.
    num_layers: decoder blocks.
    num_heads: H, query heads.
    num_kv_heads: Hkv, key/value heads (H divides by Hkv; grouped-query attention).
    head_dim: Dh.
    intermediate_size: SwiGLU hidden width.
    rope_theta: rotary base.
    rms_norm_eps: RMSNorm epsilon.
    attention_bias: q/k/v projections have biases (Qwen2: yes; Llama: no).
    tie_word_embeddings: the output head is the input embedding matrix.
    max_position_embeddings: the checkpoint's context length (kept for export).
    rope_scaling: None (plain rotary) or Llama3RopeScaling.
    dtype: activation / matmul dtype, 'float32' or 'bfloat16' (params stay float32).
  """
  model_type: str
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  intermediate_size: int
  rope_theta: float
  rms_norm_eps: float
  attention_bias: bool
  tie_word_embeddings: bool
  max_position_embeddings: int
  rope_scaling: Optional[Llama3RopeScaling] = None
  dtype: str = 'float32'

  def __post_init__(self):
    if self.model_type not in MODEL_TYPES:
      raise ValueError(f'model_type must be one of {MODEL_TYPES}, got {self.model_type!r}')
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'num_heads={self.num_heads} is not a multiple of '
                       f'num_kv_heads={self.num_kv_heads}')
    if self.head_dim % 2:
      raise ValueError(f'head_dim must be even for rotary embeddings, got {self.head_dim}')
    if self.dtype not in DTYPES:
      raise ValueError(f'dtype must be one of {DTYPES}, got {self.dtype!r}')


@flax.struct.dataclass
class PromptCache:
  """Per-layer keys/values of the users' prompts, computed once per user.

  Attributes:
    k, v: [num_layers, B, P, Hkv, Dh] (keys after the rotary embedding).
    mask: [B, P] bool, False at left padding.
    next_position: [B] int32, the position of the first token after the prompt (its number of
      real tokens).
  """
  k: jnp.ndarray
  v: jnp.ndarray
  mask: jnp.ndarray
  next_position: jnp.ndarray


def inverse_frequencies(cfg: LmConfig) -> np.ndarray:
  """[Dh/2] float32 rotary frequencies, computed in float32 as transformers does."""
  dim = cfg.head_dim
  exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
  inv_freq = (np.float32(1.0) / np.power(np.float32(cfg.rope_theta), exponent)).astype(np.float32)
  scaling = cfg.rope_scaling
  if scaling is None:
    return inv_freq
  low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
  high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
  wavelen = (np.float32(2 * math.pi) / inv_freq).astype(np.float32)
  scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(scaling.factor), inv_freq)
  smooth = ((scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor)
            / (scaling.high_freq_factor - scaling.low_freq_factor)).astype(np.float32)
  smoothed = (1 - smooth) * scaled / np.float32(scaling.factor) + smooth * scaled
  medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rotary(cfg: LmConfig, positions: jnp.ndarray, dtype) -> tuple[jnp.ndarray, jnp.ndarray]:
  """cos, sin [..., 1, Dh] (a heads axis to broadcast over) at int positions [...]."""
  freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inverse_frequencies(cfg))
  angles = jnp.concatenate([freqs, freqs], axis=-1)[..., None, :]
  return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def apply_rotary(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
  """Rotate-half rotary embedding of x [..., heads, Dh]."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin


def rms_norm(x: jnp.ndarray, scale: jnp.ndarray, eps: float) -> jnp.ndarray:
  """RMSNorm of x [..., D] computed in float32, returned in x's dtype times scale [D]."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return scale.astype(x.dtype) * normed.astype(x.dtype)


def grouped_attention(q, k, v, mask):
  """Masked softmax attention with grouped kv heads.

  Args:
    q: [B, T, H, Dh]; k, v: [B, S, Hkv, Dh]; mask: [B, T, S] bool.

  Returns:
    [B, T, H, Dh].
  """
  batch, length, heads, dim = q.shape
  q = q.reshape(batch, length, k.shape[2], heads // k.shape[2], dim)
  logits = jnp.einsum('btkgd,bskd->bkgts', q, k, preferred_element_type=jnp.float32)
  logits = jnp.where(mask[:, None, None], logits * dim ** -0.5, NEG)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum('bkgts,bskd->btkgd', weights, v).reshape(batch, length, heads, dim)


def grouped_shared_prompt_attention(q, prompt_k, prompt_v, prompt_mask, suffix_k, suffix_v,
                                    suffix_mask):
  """One softmax over a user's shared prompt keys and each beam's own suffix keys (grouped kv heads).

  Args:
    q: [B, W, Q, H, Dh] queries of Q new suffix tokens per beam.
    prompt_k, prompt_v: [B, P, Hkv, Dh], shared by the W beams of a user.
    prompt_mask: [B, P] bool.
    suffix_k, suffix_v: [B, W, S, Hkv, Dh], each beam's own suffix.
    suffix_mask: bool, broadcastable to [B, W, Q, S].

  Returns:
    [B, W, Q, H, Dh].
  """
  batch, width, num_new, heads, dim = q.shape
  kv_heads = prompt_k.shape[2]
  q = q.reshape(batch, width, num_new, kv_heads, heads // kv_heads, dim)
  scale = dim ** -0.5
  to_prompt = jnp.einsum('bwqkgd,bpkd->bwkgqp', q, prompt_k, preferred_element_type=jnp.float32)
  to_suffix = jnp.einsum('bwqkgd,bwskd->bwkgqs', q, suffix_k, preferred_element_type=jnp.float32)
  to_prompt = jnp.where(prompt_mask[:, None, None, None, None, :], to_prompt * scale, NEG)
  suffix_mask = jnp.broadcast_to(suffix_mask, (batch, width, num_new, suffix_k.shape[2]))
  to_suffix = jnp.where(suffix_mask[:, :, None, None], to_suffix * scale, NEG)
  weights = jax.nn.softmax(jnp.concatenate([to_prompt, to_suffix], axis=-1), axis=-1)
  weights = weights.astype(prompt_v.dtype)
  num_prompt = prompt_k.shape[1]
  out = (jnp.einsum('bwkgqp,bpkd->bwqkgd', weights[..., :num_prompt], prompt_v)
         + jnp.einsum('bwkgqs,bwskd->bwqkgd', weights[..., num_prompt:], suffix_v))
  return out.reshape(batch, width, num_new, heads, dim)


@flax.struct.dataclass
class LayerWeights:
  """One block's weights (or all blocks', stacked on a leading [num_layers] axis).

  Kernels are [in, out] (the transpose of torch's Linear.weight); biases are None without
  attention_bias.
  """
  input_norm: jnp.ndarray            # [D]
  q_kernel: jnp.ndarray              # [D, H*Dh]
  q_bias: Optional[jnp.ndarray]      # [H*Dh]
  k_kernel: jnp.ndarray              # [D, Hkv*Dh]
  k_bias: Optional[jnp.ndarray]      # [Hkv*Dh]
  v_kernel: jnp.ndarray              # [D, Hkv*Dh]
  v_bias: Optional[jnp.ndarray]      # [Hkv*Dh]
  o_kernel: jnp.ndarray              # [H*Dh, D]
  post_norm: jnp.ndarray             # [D]
  gate_kernel: jnp.ndarray           # [D, I]
  up_kernel: jnp.ndarray             # [D, I]
  down_kernel: jnp.ndarray           # [I, D]


def _project(x, kernel, bias):
  y = x @ kernel.astype(x.dtype)
  return y if bias is None else y + bias.astype(x.dtype)


def keys_values_queries(cfg: LmConfig, w: LayerWeights, x, cos, sin):
  """x [..., D] -> q [..., H, Dh], k, v [..., Hkv, Dh] (q, k rotated)."""
  h = rms_norm(x, w.input_norm, cfg.rms_norm_eps)
  lead = x.shape[:-1]
  q = _project(h, w.q_kernel, w.q_bias).reshape(lead + (cfg.num_heads, cfg.head_dim))
  k = _project(h, w.k_kernel, w.k_bias).reshape(lead + (cfg.num_kv_heads, cfg.head_dim))
  v = _project(h, w.v_kernel, w.v_bias).reshape(lead + (cfg.num_kv_heads, cfg.head_dim))
  return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v


def block_update(cfg: LmConfig, w: LayerWeights, x, attended):
  """Residual attention output (attended [..., H, Dh]) + residual SwiGLU MLP: x [..., D] -> [..., D]."""
  x = x + attended.reshape(attended.shape[:-2] + (-1,)) @ w.o_kernel.astype(x.dtype)
  h = rms_norm(x, w.post_norm, cfg.rms_norm_eps)
  gated = jax.nn.silu(h @ w.gate_kernel.astype(h.dtype)) * (h @ w.up_kernel.astype(h.dtype))
  return x + gated @ w.down_kernel.astype(h.dtype)
