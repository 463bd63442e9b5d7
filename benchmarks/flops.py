"""Model FLOP counts of the decoder's passes and this machine's measured matmul peak.

Shared by decode.py, train_throughput.py and device_check.py: a utilisation is a model FLOP
rate over the peak measured in the same run, for the same dtype.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from vstar_jax.model import decoder


def beam_search_flops(cfg: decoder.DecoderConfig, num_beams: int) -> float:
  """Model FLOPs of one user's beam search (matmuls and attention; 2 per multiply-add)."""
  d, f, p = cfg.d_model, cfg.d_ff, cfg.prompt_len
  per_token_layer = 2 * (4 * d * d + 2 * d * f)
  prompt = (cfg.num_layers - 1) * (p * per_token_layer + 4 * p * p * d) + p * 4 * d * d
  steps = 0.0
  for level in range(cfg.num_levels):
    width = 1 if level == 0 else num_beams
    attention = 4 * d * (p + level + 1)
    steps += width * (cfg.num_layers * (per_token_layer + attention) + 2 * d * cfg.num_codes)
  return float(prompt + steps)


def train_flops(cfg: decoder.DecoderConfig, batch: int) -> float:
  """Matmul FLOPs of one SFT step (forward + backward = 3x forward), attention included."""
  tokens = cfg.prompt_len + cfg.num_levels + 1
  d, f = cfg.d_model, cfg.d_ff
  per_layer = tokens * 2 * (4 * d * d + 2 * d * f) + 4 * tokens * tokens * d
  return 3.0 * batch * (cfg.num_layers * per_layer + 2 * cfg.num_levels * d * cfg.num_codes)


def matmul_peak(n: int = 2048, repeats: int = 5, dtype=jnp.float32) -> float:
  """Best FLOP/s of an [n, n] x [n, n] jnp.dot in `dtype` on the default device."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  dot = jax.jit(jnp.dot)
  dot(a, a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best
