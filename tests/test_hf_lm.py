"""Tests for vstar_jax.model.hf_lm: the contract outside checks rely on."""

import numpy as np

import hf_fixture
from vstar_jax.model import hf_lm


def test_load_gives_logits_and_prompt_tokens():
  """load(DIR).logits(tokens [B, T], mask [B, T]) -> float32 [B, T, V] (a row's logits do not
  depend on its left padding); .prompt_tokens(history SIDs) -> MiniOneRec's eval prompt ids."""
  model = hf_lm.load(hf_fixture.QWEN2)
  refs = hf_fixture.reference('prompts.json')
  assert model.prompt_tokens(refs['histories'][0]) == refs['qwen2']['eval'][0]
  prompt = model.prompt_tokens(refs['histories'][2])
  tokens = np.zeros((2, len(prompt) + 4), np.int32)
  mask = np.zeros(tokens.shape, bool)
  tokens[0, 4:], mask[0, 4:] = prompt, True
  tokens[1], mask[1] = np.array(prompt + prompt[:4]), True
  logits = model.logits(tokens, mask)
  assert isinstance(logits, np.ndarray) and logits.dtype == np.float32
  assert logits.shape == tokens.shape + (model.config.vocab_size,)
  np.testing.assert_allclose(logits[0, 4:], logits[1, :-4], atol=1e-4)
