"""Value head V(prefix): a small MLP on the decoder's hidden states (V-STAR, Sec. 1.1).

VED ranks tree nodes by G(s) = V(s) + lambda * H(s); V(s) is read from the hidden
state at the suffix position whose input is the last code of the prefix s. The
head lives in its own params subtree ('value_head') so RL can train or freeze it
apart from the backbone.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class ValueHead(nn.Module):
  """Two-layer GELU MLP: hidden [..., D] -> value [...] float32."""
  hidden_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden: jnp.ndarray) -> jnp.ndarray:
    y = nn.Dense(self.hidden_dim, dtype=self.dtype, name='hidden')(hidden)
    y = nn.Dense(1, dtype=self.dtype, name='out')(jax.nn.gelu(y))
    return y[..., 0].astype(jnp.float32)
