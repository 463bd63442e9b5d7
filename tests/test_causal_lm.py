"""Tests for vstar_jax.model.causal_lm: transformers' logits; cached decoding equals the full pass."""

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
import pytest

import hf_fixture
from vstar_jax.model import causal_lm
from vstar_jax.model import lm_block
from vstar_jax.model import hf_lm


@functools.lru_cache(maxsize=None)
def _model(name: str) -> hf_lm.HfLm:
  if name == 'qwen2':
    return hf_lm.load(hf_fixture.QWEN2)
  return hf_lm.load(hf_fixture.LLAMA, hf_fixture.industrial_token_codes())


@pytest.mark.parametrize('name', ['qwen2', 'llama'])
def test_logits_equal_transformers_with_left_padding(name):
  """float32 logits of left-padded rows equal transformers' (positions = cumsum(mask) - 1)."""
  ref = hf_fixture.reference(f'{name}_logits.npz')
  got = _model(name).logits(ref['tokens'], ref['mask'])
  assert got.dtype == np.float32 and got.shape == ref['logits'].shape
  np.testing.assert_allclose(got[ref['mask']], ref['logits'][ref['mask']], atol=1e-4, rtol=0)


def test_bfloat16_compute_tracks_float32():
  """bfloat16 activations (float32 params) give the float32 logits up to bfloat16 rounding."""
  ref = hf_fixture.reference('qwen2_logits.npz')
  model = _model('qwen2')
  cfg = dataclasses.replace(model.config, dtype='bfloat16')
  logits = hf_fixture.jit(
      lambda p, cfg, t, m: causal_lm.logits(p, cfg, causal_lm.forward(p, cfg, t, m)),
      static_argnums=1)(model.params, cfg, np.maximum(ref['tokens'], 0), ref['mask'])
  assert logits.dtype == np.float32
  got = np.asarray(logits)[ref['mask']]
  want = ref['logits'][ref['mask']]
  assert np.abs(got - want).mean() < 0.05 * np.abs(want).mean()
  assert np.mean(got.argmax(-1) == want.argmax(-1)) > 0.9


def _inputs(cfg, seed):
  """Left-padded prompts [2, 9] (row 1 padded by 3) and per-beam suffixes [2, 3, 4]."""
  rng = np.random.default_rng(seed)
  prompt = rng.integers(0, cfg.vocab_size, (2, 9)).astype(np.int32)
  prompt[1, :3] = -1
  return prompt, rng.integers(0, cfg.vocab_size, (2, 3, 4)).astype(np.int32)


@functools.partial(hf_fixture.jit, static_argnums=1)
def _full_pass(params, cfg, prompt, suffix):
  """Hidden states [B, W, S, D] of each beam's suffix by the teacher-forced pass on prompt ++ suffix."""
  batch, width, length = suffix.shape
  tokens = jnp.concatenate([jnp.repeat(prompt, width, axis=0), suffix.reshape(batch * width, -1)], 1)
  hidden = causal_lm.forward(params, cfg, tokens, tokens >= 0)
  return hidden[:, -length:].reshape(batch, width, length, -1)


@functools.partial(hf_fixture.jit, static_argnums=1)
def _cached_passes(params, cfg, prompt, suffix, position, junk):
  """Prefill, three beam extensions (2 tokens, then 1, then 1), then one node step per beam at
  `position` [B, W] with the cache slots at or past it overwritten by junk."""
  cache = causal_lm.prefill(params, cfg, prompt)
  k, v = causal_lm.empty_suffix(cfg, *suffix.shape[:2])
  pieces = []
  for lo, hi in ((0, 2), (2, 3), (3, 4)):
    hidden, k, v = causal_lm.extend(params, cfg, cache, k, v, suffix[:, :, lo:hi])
    pieces.append(hidden)
  later = jnp.arange(suffix.shape[2])[None, None, :, None, None] >= position[:, :, None, None, None]
  tokens = jnp.take_along_axis(suffix, position[..., None], axis=2)[..., 0]
  node = causal_lm.node(params, cfg, cache, jnp.where(later, junk, k), jnp.where(later, junk, v),
                        position, tokens)
  return cache.next_position, jnp.concatenate(pieces, axis=2), k, node


def test_extend_and_node_equal_the_full_pass():
  """Prefill + beam extensions and per-node steps at scattered positions give the teacher-forced
  hidden states and keys; the node pass ignores cache slots at or past its position (Qwen2: its
  q/k/v biases and 2 query heads per kv head; the Llama shares the code path)."""
  model = _model('qwen2')
  params, cfg = model.params, model.config
  rng = np.random.default_rng(3)
  prompt = rng.integers(0, cfg.vocab_size, (2, 9)).astype(np.int32)
  prompt[1, :3] = -1
  suffix = rng.integers(0, cfg.vocab_size, (2, 3, 4)).astype(np.int32)
  position = np.array([[0, 3, 1], [2, 0, 3]], np.int32)
  junk = rng.normal(size=(cfg.num_layers, 2, 3, 4, cfg.num_kv_heads, cfg.head_dim))
  want = np.asarray(_full_pass(params, cfg, prompt, suffix))
  next_position, hidden, k, (node_hidden, node_k, _) = _cached_passes(
      params, cfg, prompt, suffix, position, junk.astype(np.float32))
  np.testing.assert_array_equal(next_position, [9, 6])
  np.testing.assert_allclose(hidden, want, atol=2e-5, rtol=1e-4)
  assert k.shape == (cfg.num_layers, 2, 3, 4, cfg.num_kv_heads, cfg.head_dim)
  at = position[..., None, None]
  np.testing.assert_allclose(node_hidden, np.take_along_axis(want, at, axis=2)[:, :, 0],
                             atol=2e-5, rtol=1e-4)
  own = np.take_along_axis(np.asarray(k), position[None, :, :, None, None, None], axis=3)[:, :, :, 0]
  np.testing.assert_allclose(node_k, own, atol=2e-5, rtol=1e-4)


def test_config_checks():
  base = dict(model_type='llama', vocab_size=10, hidden_size=8, num_layers=1, num_heads=4,
              num_kv_heads=2, head_dim=2, intermediate_size=8, rope_theta=1e4, rms_norm_eps=1e-6,
              attention_bias=False, tie_word_embeddings=True, max_position_embeddings=16)
  causal_lm.LmConfig(**base)
  with pytest.raises(ValueError, match='num_kv_heads'):
    causal_lm.LmConfig(**dict(base, num_kv_heads=3))
  with pytest.raises(ValueError, match='model_type'):
    causal_lm.LmConfig(**dict(base, model_type='gpt2'))
  with pytest.raises(ValueError, match='dtype'):
    causal_lm.LmConfig(**dict(base, dtype='float16'))


def test_llama3_rope_scaling_keeps_high_frequencies_and_divides_low_ones():
  """'llama3' scaling: wavelengths below original/high_freq_factor kept, above original/low_freq_factor
  divided by factor, smooth in between (transformers' _compute_llama3_parameters)."""
  cfg = _model('llama').config
  plain = lm_block.inverse_frequencies(dataclasses.replace(cfg, rope_scaling=None))
  scaled = lm_block.inverse_frequencies(cfg)
  wavelen = 2 * np.pi / plain
  original = cfg.rope_scaling.original_max_position_embeddings
  high = wavelen < original / cfg.rope_scaling.high_freq_factor
  low = wavelen > original / cfg.rope_scaling.low_freq_factor
  assert high.any() and low.any() and (~high & ~low).any()
  np.testing.assert_array_equal(scaled[high], plain[high])
  np.testing.assert_allclose(scaled[low], plain[low] / cfg.rope_scaling.factor, rtol=1e-6)
  middle = ~high & ~low
  assert np.all((scaled[middle] < plain[middle]) & (scaled[middle] > plain[middle] / 8))
