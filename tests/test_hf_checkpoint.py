"""Tests for vstar_jax.model.hf_checkpoint: reading HF checkpoints, exporting them, clear errors."""

import json
import shutil

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import hf_fixture
from vstar_jax.model import causal_lm
from vstar_jax.model import hf_checkpoint
from vstar_jax.model import sid_tokens


def test_load_reads_the_config_and_bfloat16_shards():
  cfg, params = hf_checkpoint.load(hf_fixture.LLAMA)
  assert cfg == causal_lm.LmConfig(
      model_type='llama', vocab_size=422, hidden_size=64, num_layers=2, num_heads=4,
      num_kv_heads=1, head_dim=16, intermediate_size=96, rope_theta=500000.0, rms_norm_eps=1e-5,
      attention_bias=False, tie_word_embeddings=False, max_position_embeddings=1024,
      rope_scaling=causal_lm.Llama3RopeScaling(8.0, 1.0, 4.0, 64))
  index = json.loads((hf_fixture.LLAMA / hf_checkpoint.WEIGHTS_INDEX_FILE).read_text())
  name = 'model.layers.1.self_attn.q_proj.weight'
  with safe_open(str(hf_fixture.LLAMA / index['weight_map'][name]), framework='np') as f:
    stored = f.get_tensor(name)
  assert stored.dtype == ml_dtypes.bfloat16
  kernel = params['layers']['q_proj']['kernel']
  assert kernel.dtype == np.float32 and kernel.shape == (2, 64, 64)
  assert 'bias' not in params['layers']['q_proj']
  np.testing.assert_array_equal(kernel[1], stored.astype(np.float32).T)
  qwen, qwen_params = hf_checkpoint.load(hf_fixture.QWEN2)
  assert qwen.attention_bias and qwen.tie_word_embeddings and 'lm_head' not in qwen_params
  assert qwen_params['layers']['k_proj']['bias'].shape == (2, 32)


@pytest.mark.parametrize('name', ['qwen2', 'llama'])
def test_export_round_trips_exactly(tmp_path, name):
  """export -> load gives the same config, params and tokenizer (the Llama with its added SID
  tokens); the folder says pad = EOS and greedy generation (MiniOneRec's SFT output)."""
  path = hf_fixture.QWEN2 if name == 'qwen2' else hf_fixture.LLAMA
  cfg, params = hf_checkpoint.load(path)
  tok = sid_tokens.load_tokenizer(path)
  params, cfg, tok = sid_tokens.extend_model(params, cfg, tok, hf_fixture.industrial_token_codes())
  heads = {'value_head': {'out': {'kernel': np.ones((64, 1), np.float32)}}}
  out = hf_checkpoint.export({**params, **heads}, cfg, tok, tmp_path / 'export')
  cfg2, params2 = hf_checkpoint.load(out)
  tok2 = sid_tokens.load_tokenizer(out)
  assert cfg2 == cfg
  np.testing.assert_equal(params2, params)
  assert (tok2.bos_id, tok2.eos_id, len(tok2)) == (tok.bos_id, tok.eos_id, len(tok))
  history = ['<a_104><b_0><c_9>', '<a_104><b_1><c_0>']
  assert sid_tokens.eval_prompt(tok2, history) == sid_tokens.eval_prompt(tok, history)
  tokenizer_config = json.loads((out / 'tokenizer_config.json').read_text())
  assert tokenizer_config['pad_token'] == tokenizer_config['eos_token'] == tok.eos_token
  assert json.loads((out / 'generation_config.json').read_text())['do_sample'] is False
  assert 'value_head' not in str(list(load_file(out / 'model.safetensors')))


def _copy(tmp_path, config_update=None, tensors_update=None):
  """A copy of the Qwen2 fixture with config.json fields or tensors changed (None deletes)."""
  path = tmp_path / 'ckpt'
  shutil.copytree(hf_fixture.QWEN2, path)
  config = json.loads((path / 'config.json').read_text())
  config.update(config_update or {})
  (path / 'config.json').write_text(json.dumps(config))
  tensors = load_file(path / 'model.safetensors')
  for name, value in (tensors_update or {}).items():
    if value is None:
      del tensors[name]
    else:
      tensors[name] = value
  save_file(tensors, path / 'model.safetensors')
  return path


@pytest.mark.parametrize('config_update, tensors_update, message', [
    ({'model_type': 'gpt2'}, None, "config.json: model_type 'gpt2' is not supported"),
    ({'architectures': ['Qwen2ForSequenceClassification']}, None, 'architectures'),
    ({'rope_scaling': {'rope_type': 'yarn', 'factor': 4.0}}, None, "rope_scaling type 'yarn'"),
    ({'use_sliding_window': True}, None, 'use_sliding_window'),
    ({'layer_types': ['full_attention', 'sliding_attention']}, None, 'layer_types'),
    ({'hidden_act': 'gelu'}, None, "hidden_act 'gelu'"),
    ({'model_type': 'llama', 'architectures': ['LlamaForCausalLM'], 'attention_bias': True}, None,
     'attention_bias=true is not supported for llama'),
    (None, {'model.layers.1.mlp.up_proj.weight': None},
     'model.safetensors: missing tensor model.layers.1.mlp.up_proj.weight'),
    (None, {'model.layers.0.self_attn.k_proj.weight': np.zeros((8, 64), np.float32)},
     r'model.safetensors: tensor model.layers.0.self_attn.k_proj.weight has shape \(8, 64\), '
     r'expected \(32, 64\)'),
    (None, {'model.layers.0.mlp.extra.weight': np.zeros(3, np.float32)},
     'unexpected tensor model.layers.0.mlp.extra.weight'),
])
def test_errors_name_the_file_and_tensor(tmp_path, config_update, tensors_update, message):
  with pytest.raises(hf_checkpoint.CheckpointError, match=message):
    hf_checkpoint.load(_copy(tmp_path, config_update, tensors_update))


def test_missing_weights_and_shards_are_named(tmp_path):
  path = tmp_path / 'llama'
  shutil.copytree(hf_fixture.LLAMA, path)
  (path / 'model-00002-of-00004.safetensors').unlink()
  with pytest.raises(hf_checkpoint.CheckpointError, match='model-00002-of-00004.safetensors: missing'):
    hf_checkpoint.load(path)
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'config.json').write_text((hf_fixture.QWEN2 / 'config.json').read_text())
  with pytest.raises(hf_checkpoint.CheckpointError, match='neither model.safetensors nor'):
    hf_checkpoint.load(empty)
