"""The value heads V(s) and Q(s, .) on the decoder's hidden states (paper Sec. 4.1-4.2).

VED ranks tree nodes by G(s) = V(s) + lambda * H(s) (Eq. 11). V(s) is read from the hidden
state at the suffix position whose input is the last code of s. Q(s, c), the value of each
next code c, is read from that same hidden state, so ONE forward of s scores all of its
children (and, for s at depth L-1, every candidate leaf below it) without reading the
suffix position after a whole SID, which SFT never trains. Each head lives in its own params
subtree ('value_head', 'q_head') so they can be trained apart from the backbone.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

HEADS = ('value_head', 'q_head')


class ValueHead(nn.Module):
  """Two-layer GELU MLP: hidden [..., D] -> value [...] float32."""
  hidden_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden: jnp.ndarray) -> jnp.ndarray:
    y = nn.Dense(self.hidden_dim, dtype=self.dtype, name='hidden')(hidden)
    y = nn.Dense(1, dtype=self.dtype, name='out')(jax.nn.gelu(y))
    return y[..., 0].astype(jnp.float32)


class QHead(nn.Module):
  """Two-layer GELU MLP: hidden [..., D] at level l -> Q of every level-l code [..., K] float32.

  `level` is a static int or an int array [...] (the hidden state at suffix index l predicts
  the level-l code, so its Q is over level-l codes).
  """
  num_levels: int
  num_codes: int
  hidden_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden: jnp.ndarray, level) -> jnp.ndarray:
    y = jax.nn.gelu(nn.Dense(self.hidden_dim, dtype=self.dtype, name='hidden')(hidden))
    q = nn.Dense(self.num_levels * self.num_codes, dtype=self.dtype, name='out',
                 kernel_init=nn.initializers.zeros)(y)
    q = q.reshape(q.shape[:-1] + (self.num_levels, self.num_codes)).astype(jnp.float32)
    if isinstance(level, int):
      return q[..., level, :]
    return jnp.take_along_axis(q, level[..., None, None], axis=-2)[..., 0, :]
