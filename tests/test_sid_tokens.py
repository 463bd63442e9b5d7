"""Tests for vstar_jax.model.sid_tokens: MiniOneRec's SID tokens and prompts, token for token."""

import json

import numpy as np
import pytest

import hf_fixture
from vstar_jax.model import hf_checkpoint
from vstar_jax.model import sid_tokens


def _tokenizer(name):
  return sid_tokens.load_tokenizer(hf_fixture.QWEN2 if name == 'qwen2' else hf_fixture.LLAMA)


def _extended_llama():
  cfg, params = hf_checkpoint.load(hf_fixture.LLAMA)
  tok = sid_tokens.load_tokenizer(hf_fixture.LLAMA)
  return (cfg, params, tok) + sid_tokens.extend_model(params, cfg, tok,
                                                      hf_fixture.industrial_token_codes())


def test_special_tokens_resolve_as_transformers_does():
  refs = hf_fixture.reference('prompts.json')
  qwen, llama = _tokenizer('qwen2'), _tokenizer('llama')
  assert qwen.bos_id is None and qwen.eos_id == refs['qwen2']['eos_id']
  assert (llama.bos_id, llama.eos_id) == (refs['llama']['bos_id'], refs['llama']['eos_id'])


@pytest.mark.parametrize('name', ['qwen2', 'llama'])
def test_prompt_ids_equal_minionerec_recipe(name):
  """Eval prompt (EvalSidDataset), SFT prompt (SidSFTDataset) and SFT target (SID + "\\n" + EOS) ids
  equal MiniOneRec's recipe run on transformers' AutoTokenizer (with BOS for the Llama)."""
  refs = hf_fixture.reference('prompts.json')
  tok = _tokenizer(name) if name == 'qwen2' else _extended_llama()[-1]
  for history, want in zip(refs['histories'], refs[name]['eval']):
    assert sid_tokens.eval_prompt(tok, history) == want
  for history, want in zip(refs['histories'], refs[name]['train']):
    assert sid_tokens.train_prompt(tok, history) == want
  for target, want in zip(refs['targets'], refs[name]['sft_target']):
    assert sid_tokens.encode(tok, target + '\n', bos=False, eos=True) == want
  if name == 'qwen2':   # the prompt ends with "### Response:\n" in 3 pieces, as Qwen's does
    assert [tok.tokenizer.id_to_token(i) for i in refs[name]['eval'][0][-3:]] == [
        '###', 'ĠResponse', ':Ċ']


def test_sid_tokens_are_added_as_minionerec_adds_them():
  """Sorted as strings, ids after the tokenizer's last; rows beyond the checkpoint's (40 padding
  rows kept) are exactly the mean of the old rows, in the input and the untied output matrix."""
  refs = hf_fixture.reference('prompts.json')['llama']
  cfg, params, tok, new_params, new_cfg, new_tok = _extended_llama()
  assert len(tok) == refs['base_len_tokenizer'] and cfg.vocab_size == refs['base_rows']
  assert len(new_tok) == refs['len_tokenizer'] == new_cfg.vocab_size
  for token, token_id in refs['sid_token_ids'].items():
    assert new_tok.token_id(token) == token_id
  assert new_tok.token_id('<a_104>') == len(tok) < cfg.vocab_size   # lands on a padding row
  pieces = new_tok.tokenizer.encode('<a_104><b_0>', add_special_tokens=False).ids
  assert pieces == [refs['sid_token_ids']['<a_104>'], refs['sid_token_ids']['<b_0>']]
  for old, new in ((params['embed_tokens']['embedding'], new_params['embed_tokens']['embedding']),
                   (params['lm_head']['kernel'].T, new_params['lm_head']['kernel'].T)):
    assert new.shape == (new_cfg.vocab_size, cfg.hidden_size)
    np.testing.assert_array_equal(new[:cfg.vocab_size], old)
    np.testing.assert_array_equal(new[cfg.vocab_size:],
                                  np.broadcast_to(old.astype(np.float64).mean(0).astype(np.float32),
                                                  new[cfg.vocab_size:].shape))
  added = tok.tokenizer.get_added_tokens_decoder()
  assert not any(t.special for i, t in new_tok.tokenizer.get_added_tokens_decoder().items()
                 if i not in added)


def test_tokens_already_present_are_reused():
  """A checkpoint holding the SID tokens (MiniOneRec's SFT output) is left as it is."""
  cfg, params = hf_checkpoint.load(hf_fixture.QWEN2)
  tok = _tokenizer('qwen2')
  out_params, out_cfg, out_tok = sid_tokens.extend_model(params, cfg, tok,
                                                         hf_fixture.industrial_token_codes())
  assert out_params is params and out_cfg is cfg and out_tok is tok


def test_sid_token_strings_sort_as_strings():
  codes = np.array([[14, 9, 3], [150, 99, 3], [15, 9, 30]])
  assert sid_tokens.sid_token_strings(codes) == [
      '<a_14>', '<a_150>', '<a_15>', '<b_99>', '<b_9>', '<c_30>', '<c_3>']


def test_token_table_and_tail():
  tok = _tokenizer('qwen2')
  codes = hf_fixture.industrial_token_codes()
  table = sid_tokens.sid_token_table(tok, 3, 256)
  assert (table >= 0).sum() == 560 and (table[0] >= 0).sum() == 48
  assert table[1, 0] == hf_fixture.reference('prompts.json')['qwen2']['sid_token_ids']['<b_0>']
  sids = [f'<a_{a}><b_{b}><c_{c}>' for a, b, c in codes[:20]]
  assert sid_tokens.tail_tokens(tok, sids, table) == (tok.token_id('Ċ'), tok.eos_id)
  with pytest.raises(ValueError, match='does not tokenise'):
    sid_tokens.tail_tokens(tok, ['<a_1><b_2><c_3>'], table)   # <a_1> is no Industrial code


def test_pad_left_never_truncates():
  np.testing.assert_array_equal(sid_tokens.pad_left([[1, 2, 3], [4]]), [[1, 2, 3], [-1, -1, 4]])
  np.testing.assert_array_equal(sid_tokens.pad_left([[5]], length=3), [[-1, -1, 5]])
  with pytest.raises(ValueError, match='more than length'):
    sid_tokens.pad_left([[1, 2, 3]], length=2)


def test_history_sid_strings_skip_padding():
  codes = np.array([[[-1, -1, -1], [1, 2, 3], [4, 5, 6]]])
  assert sid_tokens.history_sid_strings(codes) == [['<a_1><b_2><c_3>', '<a_4><b_5><c_6>']]


def test_legacy_special_tokens_map_and_missing_eos(tmp_path):
  """Without added_tokens_decoder, special_tokens_map.json overrides tokenizer_config (transformers'
  legacy layout); a tokenizer without EOS is refused."""
  for name in ('tokenizer.json',):
    (tmp_path / name).write_bytes((hf_fixture.LLAMA / name).read_bytes())
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps({'eos_token': '<|begin_of_text|>'}))
  (tmp_path / 'special_tokens_map.json').write_text(json.dumps(
      {'eos_token': {'content': '<|end_of_text|>'}}))
  tok = sid_tokens.load_tokenizer(tmp_path)
  assert tok.bos_id is None and tok.eos_token == '<|end_of_text|>'
  (tmp_path / 'special_tokens_map.json').unlink()
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps({'bos_token': '<|begin_of_text|>'}))
  with pytest.raises(ValueError, match='no eos_token'):
    sid_tokens.load_tokenizer(tmp_path)
