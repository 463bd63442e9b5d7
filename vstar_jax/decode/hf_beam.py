"""MiniOneRec's evaluation decoder on a Hugging Face backbone (model.hf_policy), jitted.

Constrained beam search over the L SID levels (decode.beam, scored by the full-vocabulary
log-softmax at the SID tokens), then the tail MiniOneRec's trie forces after every SID (the
"\\n" piece and EOS) added to each candidate's score and the W candidates re-sorted: the
ranked output of transformers' constrained `generate` (num_beams = W, length_penalty 0), whose
beams keep the top-W prefixes at every SID level, then take the only allowed tail tokens.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from vstar_jax.decode import beam as beam_lib
from vstar_jax.model import hf_policy
from vstar_jax.sid import trie as trie_lib


@functools.partial(jax.jit, static_argnames=('cfg', 'num_beams'))
def beam_search(params, cfg: hf_policy.HfPolicyConfig, trie: trie_lib.Trie, history: jnp.ndarray,
                num_beams: int):
  """Top-`num_beams` SIDs per user of prompts history [B, P] (-1 left padding), MiniOneRec's ranking.

  Returns:
    codes [B, W, L] int32 (distinct valid SIDs, -1 in the tail) and scores [B, W] float32:
    the sum of the L code log-probs and the tail's, sorted descending (-inf in the tail).
  """
  if (trie.num_levels, trie.num_codes) != (cfg.num_levels, cfg.num_codes):
    raise ValueError(f'trie has L={trie.num_levels}, K={trie.num_codes}; the policy has '
                     f'L={cfg.num_levels}, K={cfg.num_codes}')
  prompt = hf_policy.prefill(params, cfg, history)
  state, step = hf_policy.beam_policy_from(params, cfg, prompt)
  codes, scores = beam_lib.beam_search(step, state, trie, history.shape[0], num_beams)
  return hf_policy.rank_with_tail(params, cfg, prompt, codes, scores)
