"""Tests for vstar_jax.decode.hf_beam: MiniOneRec's evaluation decoder equals transformers' constrained
generate (tests/fixtures/make_hf_fixtures.py) on Industrial test rows."""

import jax
import numpy as np
import pytest

import hf_fixture
from vstar_jax.data import amazon
from vstar_jax.data import sid_strings
from vstar_jax.decode import hf_beam
from vstar_jax.model import hf_checkpoint
from vstar_jax.model import hf_policy
from vstar_jax.model import sid_tokens
from vstar_jax.sid import trie as trie_lib


@pytest.mark.realdata
def test_beam_search_with_tail_equals_transformers_generate(data_dir):
  """num_beams = 50, length_penalty 0, MiniOneRec's mask-only constraint: the same 50 SIDs in the
  same order with the same scores (sum of the 3 SID steps, "\\n" and EOS) on 24 test rows.
  Entries whose reference scores lie within 2e-4 may swap (float32 ties across frameworks)."""
  ref = hf_fixture.reference('qwen2_beam.json')
  data = amazon.load_dataset('industrial', data_dir, splits=('test',))
  lm, params = hf_checkpoint.load(hf_fixture.QWEN2)           # beam search reads no value head
  tok = sid_tokens.load_tokenizer(hf_fixture.QWEN2)
  params, lm, tok = sid_tokens.extend_model(params, lm, tok, data.item_codes)
  cfg = hf_policy.policy_config(lm, tok, data.item_codes, data.num_codes)
  histories = sid_tokens.history_sid_strings(data.history_codes('test')[ref['rows']])
  prompts = sid_tokens.pad_left([sid_tokens.eval_prompt(tok, h) for h in histories])
  trie = trie_lib.build_trie(data.item_codes, data.num_codes)
  search = hf_beam.beam_search.lower(params, cfg, trie, prompts, 50).compile(
      hf_fixture.FAST_COMPILE)
  codes, scores = jax.tree.map(np.asarray, search(params, trie, prompts))
  assert len(ref['beams']) >= 20
  for row, want in enumerate(ref['beams']):
    got = sid_strings.format_sids(codes[row])
    want_scores = dict(zip(want['predict'], want['scores']))
    assert len(want_scores) == 50 and set(got) == set(want_scores), row
    np.testing.assert_allclose(scores[row], want['scores'], atol=1e-4, rtol=0)
    for rank, (mine, theirs) in enumerate(zip(got, want['predict'])):
      assert mine == theirs or abs(want_scores[mine] - want_scores[theirs]) < 2e-4, (row, rank)
