"""A Hugging Face Qwen2 / Llama causal-LM decoder in Flax linen, with the cached passes decoding needs.

The block is the one both architectures share: pre-RMSNorm, rotary position embeddings
(rotate-half form, the config's theta, optional 'llama3' frequency scaling), grouped-query
attention (q/k/v biases for Qwen2, none for Llama), a SwiGLU MLP, a final RMSNorm and a tied
or untied output head. Weights of the N blocks are stacked on a leading [N] axis and the
blocks run as one lax.scan (compile time does not grow with depth); params stay float32,
activations run in cfg.dtype.

Sequences are left padded: a token's position counts the real tokens before it (the first
real token is at position 0, as transformers' generate numbers them), and padded keys are
masked. The passes mirror model.transformer.Decoder's for the small SID decoder: the
teacher-forced pass, the prompt prefill (a KV cache computed once per user), the extension of
per-beam suffix caches by Q tokens (beam steps; one softmax over the shared prompt keys and
the beam's own suffix keys) and the node pass of VED (one token per tree node on its parent's
cached suffix). KV caches hold keys after the rotary embedding.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vstar_jax.model import lm_block
# The block's records, importable from here too (what the passes take and return).
from vstar_jax.model.lm_block import Llama3RopeScaling, LmConfig, PromptCache  # noqa: F401

def _initializer(kind: str):
  return nn.initializers.normal(0.02) if kind == 'kernel' else nn.initializers.ones


class _Weight(nn.Module):
  """One weight: 'kernel' (normal(0.02) init) or 'scale' (an RMSNorm weight, ones)."""
  shape: tuple
  kind: str

  @nn.compact
  def __call__(self):
    return self.param(self.kind, _initializer(self.kind), self.shape)


class _Stacked(nn.Module):
  """A per-block weight stacked on a leading [num_layers] axis ('kernel' or 'scale'), and its bias."""
  num_layers: int
  shape: tuple
  bias: bool = False
  kind: str = 'kernel'

  @nn.compact
  def __call__(self):
    value = self.param(self.kind, _initializer(self.kind), (self.num_layers,) + self.shape)
    if not self.bias:
      return value, None
    return value, self.param('bias', nn.initializers.zeros, (self.num_layers, self.shape[-1]))


class CausalLm(nn.Module):
  """The Qwen2 / Llama decoder; its methods are the passes training and decoding use.

  Params: 'embed_tokens' {'embedding' [V, D]}, 'layers' {q_proj, k_proj, v_proj, o_proj,
  gate_proj, up_proj, down_proj: {'kernel' [N, in, out], 'bias' [N, out] (q/k/v with
  attention_bias)}, input_layernorm, post_attention_layernorm: {'scale' [N, D]}}, 'norm'
  {'scale' [D]} and, untied, 'lm_head' {'kernel' [D, V]}.
  """
  cfg: LmConfig

  def setup(self):
    cfg = self.cfg
    self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size,
                                 embedding_init=nn.initializers.normal(0.02))
    self.layers = _Layers(cfg)
    self.norm = _Weight((cfg.hidden_size,), 'scale')
    if not cfg.tie_word_embeddings:
      self.lm_head = _Weight((cfg.hidden_size, cfg.vocab_size), 'kernel')

  def __call__(self, tokens, mask):
    """Logits [B, T, V] of the teacher-forced pass (creates every param at init)."""
    return self.logits(self.forward(tokens, mask))

  @property
  def _dtype(self):
    return jnp.dtype(self.cfg.dtype)

  def _embed(self, tokens):
    return self.embed_tokens(jnp.maximum(tokens, 0)).astype(self._dtype)

  def _final(self, x):
    return lm_block.rms_norm(x, self.norm(), self.cfg.rms_norm_eps)

  def logits(self, hidden):
    """Final hidden states [..., D] -> float32 logits [..., V]."""
    if self.cfg.tie_word_embeddings:
      weights = self.embed_tokens.embedding.T
    else:
      weights = self.lm_head()
    return jnp.matmul(hidden, weights.astype(hidden.dtype), preferred_element_type=jnp.float32)

  def _causal(self, tokens, mask):
    """The full causal pass: residual stream [B, T, D] before the final norm, and every block's
    keys/values [num_layers, B, T, Hkv, Dh]. Positions count the real tokens before each token."""
    cfg = self.cfg
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    cos, sin = lm_block.rotary(cfg, positions, self._dtype)
    length = tokens.shape[1]
    attend = jnp.tril(jnp.ones((length, length), bool))[None] & mask[:, None, :]

    def body(x, w):
      q, k, v = lm_block.keys_values_queries(cfg, w, x, cos, sin)
      return lm_block.block_update(cfg, w, x, lm_block.grouped_attention(q, k, v, attend)), (k, v)

    x, (ks, vs) = jax.lax.scan(body, self._embed(tokens), self.layers())
    return x, ks, vs

  def forward(self, tokens, mask):
    """Teacher-forced pass: tokens [B, T] int32, mask [B, T] bool -> final hidden [B, T, D].

    Padded keys are masked; padded queries' outputs are not meaningful.
    """
    return self._final(self._causal(tokens, mask)[0])

  def prefill(self, tokens) -> PromptCache:
    """Prompt KV cache of tokens [B, P] int32 (-1 = left padding)."""
    mask = tokens >= 0
    _, ks, vs = self._causal(tokens, mask)
    return PromptCache(k=ks, v=vs, mask=mask, next_position=jnp.sum(mask, axis=1, dtype=jnp.int32))

  def extend(self, prompt: PromptCache, past_k, past_v, tokens):
    """Runs Q new tokens per beam after each beam's S0 cached suffix tokens.

    Args:
      prompt: the users' PromptCache, shared by their W beams.
      past_k, past_v: [num_layers, B, W, S0, Hkv, Dh] keys/values of earlier suffix tokens.
      tokens: [B, W, Q] int32 new tokens (suffix indices S0 .. S0+Q-1).

    Returns:
      final hidden [B, W, Q, D]; past and new keys and values [num_layers, B, W, S0+Q, Hkv, Dh].
    """
    cfg = self.cfg
    num_past, num_new = past_k.shape[3], tokens.shape[2]
    positions = prompt.next_position[:, None, None] + num_past + jnp.arange(num_new)
    cos, sin = lm_block.rotary(cfg, positions, self._dtype)
    causal = jnp.tril(jnp.ones((num_new, num_past + num_new), bool), k=num_past)

    def body(x, layer):
      w, pk, pv, sk, sv = layer
      q, k, v = lm_block.keys_values_queries(cfg, w, x, cos, sin)
      sk, sv = jnp.concatenate([sk, k], axis=2), jnp.concatenate([sv, v], axis=2)
      attended = lm_block.grouped_shared_prompt_attention(q, pk, pv, prompt.mask, sk, sv, causal)
      return lm_block.block_update(cfg, w, x, attended), (sk, sv)

    x, (ks, vs) = jax.lax.scan(body, self._embed(tokens),
                               (self.layers(), prompt.k, prompt.v, past_k, past_v))
    return self._final(x), ks, vs

  def node(self, prompt: PromptCache, past_k, past_v, position, tokens):
    """One new token per tree node, each at its own suffix index (VED expansions).

    Args:
      prompt: the users' PromptCache.
      past_k, past_v: [num_layers, B, W, S, Hkv, Dh], each node's parent suffix keys/values in
        slots 0 .. position-1 (later slots are ignored).
      position: [B, W] int32 suffix index of the new token.
      tokens: [B, W] int32 the new tokens.

    Returns:
      final hidden [B, W, D] and the new token's keys/values [num_layers, B, W, Hkv, Dh].
    """
    cfg = self.cfg
    slots = jnp.arange(past_k.shape[3])
    write = (slots == position[..., None])[..., None, None]           # [B, W, S, 1, 1]
    visible = (slots <= position[..., None])[:, :, None, :]             # [B, W, 1, S]
    cos, sin = lm_block.rotary(cfg, (prompt.next_position[:, None] + position)[..., None], self._dtype)

    def body(x, layer):
      w, pk, pv, sk, sv = layer
      q, k, v = lm_block.keys_values_queries(cfg, w, x, cos, sin)               # [B, W, 1, ., Dh]
      attended = lm_block.grouped_shared_prompt_attention(q, pk, pv, prompt.mask, jnp.where(write, k, sk),
                                                 jnp.where(write, v, sv), visible)
      return lm_block.block_update(cfg, w, x, attended), (k[:, :, 0], v[:, :, 0])

    x, (ks, vs) = jax.lax.scan(body, self._embed(tokens[..., None]),
                               (self.layers(), prompt.k, prompt.v, past_k, past_v))
    return self._final(x)[:, :, 0], ks, vs


class _Layers(nn.Module):
  """The blocks' weights, stacked on a leading [num_layers] axis (HF names per projection)."""
  cfg: LmConfig

  @nn.compact
  def __call__(self) -> lm_block.LayerWeights:
    cfg = self.cfg
    d, n = cfg.hidden_size, cfg.num_layers
    q_dim, kv_dim = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim

    def stacked(name, shape, bias=False, kind='kernel'):
      return _Stacked(n, shape, bias, kind, name=name)()

    q, q_bias = stacked('q_proj', (d, q_dim), cfg.attention_bias)
    k, k_bias = stacked('k_proj', (d, kv_dim), cfg.attention_bias)
    v, v_bias = stacked('v_proj', (d, kv_dim), cfg.attention_bias)
    return lm_block.LayerWeights(
        input_norm=stacked('input_layernorm', (d,), kind='scale')[0],
        q_kernel=q, q_bias=q_bias, k_kernel=k, k_bias=k_bias, v_kernel=v, v_bias=v_bias,
        o_kernel=stacked('o_proj', (q_dim, d))[0],
        post_norm=stacked('post_attention_layernorm', (d,), kind='scale')[0],
        gate_kernel=stacked('gate_proj', (d, cfg.intermediate_size))[0],
        up_kernel=stacked('up_proj', (d, cfg.intermediate_size))[0],
        down_kernel=stacked('down_proj', (cfg.intermediate_size, d))[0])


def _apply(params, cfg: LmConfig, method, *args):
  backbone = {name: value for name, value in params.items() if name in BACKBONE_PARAMS}
  return CausalLm(cfg).apply({'params': backbone}, *args, method=method)


BACKBONE_PARAMS = ('embed_tokens', 'layers', 'norm', 'lm_head')


def init_params(cfg: LmConfig, rng: jax.Array):
  """Fresh backbone params (normal(0.02) kernels, unit norms): tests and shape templates."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  return CausalLm(cfg).init(rng, tokens, tokens >= 0)['params']


def forward(params, cfg: LmConfig, tokens, mask):
  """Teacher-forced pass: tokens [B, T] int32, mask [B, T] bool -> final hidden [B, T, D].

  params may hold other subtrees (the value heads); only the backbone's are read.
  """
  return _apply(params, cfg, CausalLm.forward, tokens, mask)


def logits(params, cfg: LmConfig, hidden):
  """Final hidden states [..., D] -> float32 logits [..., V]."""
  return _apply(params, cfg, CausalLm.logits, hidden)


def prefill(params, cfg: LmConfig, tokens) -> PromptCache:
  """Prompt KV cache of tokens [B, P] int32 (-1 = left padding), computed once per user."""
  return _apply(params, cfg, CausalLm.prefill, tokens)


def extend(params, cfg: LmConfig, prompt: PromptCache, past_k, past_v, tokens):
  """Q new tokens [B, W, Q] per beam on the suffix caches past_k, past_v [N, B, W, S0, Hkv, Dh].

  Returns final hidden [B, W, Q, D] and the grown caches [N, B, W, S0+Q, Hkv, Dh].
  """
  return _apply(params, cfg, CausalLm.extend, prompt, past_k, past_v, tokens)


def node(params, cfg: LmConfig, prompt: PromptCache, past_k, past_v, position, tokens):
  """One token per node (tokens, position [B, W]) on its parent's suffix past_k, past_v
  [N, B, W, S, Hkv, Dh].

  Returns final hidden [B, W, D] and the new token's keys/values [N, B, W, Hkv, Dh].
  """
  return _apply(params, cfg, CausalLm.node, prompt, past_k, past_v, position, tokens)


def empty_suffix(cfg: LmConfig, batch: int, width: int, length: int = 0):
  """Zero suffix keys/values [num_layers, B, W, length, Hkv, Dh] in cfg.dtype (k, v)."""
  zeros = jnp.zeros((cfg.num_layers, batch, width, length, cfg.num_kv_heads, cfg.head_dim),
                    jnp.dtype(cfg.dtype))
  return zeros, zeros
