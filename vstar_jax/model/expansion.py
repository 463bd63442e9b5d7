"""What a model hands VED per forward (decode.ved): the record `root_fn` / `expand_fn` return.

It lives in the model layer so a model (model.policy.ved_policy, or any other backbone) can
build it without importing the search; decode.ved_tree re-exports it. Like mctx's
RecurrentFnOutput: a typed record, so a model returning the wrong thing fails at the boundary.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax.numpy as jnp


@flax.struct.dataclass
class Expansion:
  """What one backbone forward of M prefixes per user yields.

  Attributes:
    log_probs: [B, M, K] float32, policy log-probs of the next code (finite on valid codes).
    value: [B, M] float32, V(prefix).
    child_values: [B, M, K] float32, Q(prefix, code): the value of each child.
    embedding: pytree of [B, M, ...] arrays, the model state of the prefix's own last token
      (for the decoder: that token's keys and values); a child's expansion reads the states
      of every node on its parent's path.
  """
  log_probs: jnp.ndarray
  value: jnp.ndarray
  child_values: jnp.ndarray
  embedding: Any
