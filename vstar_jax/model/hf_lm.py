"""A Hugging Face checkpoint folder as a plain language model: logits and MiniOneRec's prompt ids.

The contract outside checks rely on: `load(DIR)` returns an object with
`.logits(tokens [B, T] int32, mask [B, T] bool) -> float32 [B, T, V]` (left padding allowed;
positions count the real tokens before each token, as transformers' generate does) and
`.prompt_tokens(history_sids) -> list[int]`, MiniOneRec's evaluation prompt.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.model import causal_lm
from vstar_jax.model import hf_checkpoint
from vstar_jax.model import sid_tokens


@functools.partial(jax.jit, static_argnums=1)
def _logits(params, cfg: causal_lm.LmConfig, tokens, mask):
  return causal_lm.logits(params, cfg, causal_lm.forward(params, cfg, tokens, mask))


@dataclasses.dataclass(frozen=True, eq=False)
class HfLm:
  """A loaded backbone: config, params (device arrays) and tokenizer."""
  config: causal_lm.LmConfig
  params: Any
  tokenizer: sid_tokens.SidTokenizer

  def logits(self, tokens, mask) -> np.ndarray:
    """tokens [B, T] int32, mask [B, T] bool (False at left padding) -> float32 logits [B, T, V]."""
    tokens = np.asarray(tokens, np.int32)
    mask = np.asarray(mask, bool)
    if tokens.shape != mask.shape or tokens.ndim != 2:
      raise ValueError(f'tokens {tokens.shape} and mask {mask.shape} must be the same [B, T] shape')
    return np.asarray(_logits(self.params, self.config, np.where(mask, tokens, 0), mask))

  def prompt_tokens(self, history_sids: Sequence[str]) -> list[int]:
    """MiniOneRec's evaluation prompt ids for history SID strings ('<a_1><b_2><c_3>'), oldest first."""
    return sid_tokens.eval_prompt(self.tokenizer, history_sids)


def load(path, item_codes: Optional[np.ndarray] = None, dtype: str = 'float32') -> HfLm:
  """The checkpoint folder `path` (config.json, safetensors, tokenizer.json) as an HfLm.

  item_codes: [I, L] SID codes of a catalogue whose tokens are added where the tokenizer
  lacks them (sid_tokens.extend_model); None uses the checkpoint as it is.
  """
  cfg, params = hf_checkpoint.load(path, dtype)
  tok = sid_tokens.load_tokenizer(path)
  if item_codes is not None:
    params, cfg, tok = sid_tokens.extend_model(params, cfg, tok, item_codes)
  return HfLm(config=cfg, params=jax.tree.map(jnp.asarray, params), tokenizer=tok)
