"""Hugging Face checkpoint folders <-> (LmConfig, params) of model.causal_lm, without torch.

Reads config.json and `model.safetensors` or a sharded `model.safetensors.index.json` with the
`safetensors` numpy API (bfloat16 / float16 tensors become float32), mapping transformers'
tensor names onto the stacked params: torch Linear weights [out, in] become kernels
[in, out], block i's weights row i of the [num_layers, ...] stacks. Exports the other way, a
folder `transformers` loads (AutoModelForCausalLM / AutoTokenizer) with the SID tokens.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy: safetensors' numpy API needs it)
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from vstar_jax import files
from vstar_jax.model import causal_lm
from vstar_jax.model import sid_tokens

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
WEIGHTS_INDEX_FILE = 'model.safetensors.index.json'
GENERATION_CONFIG_FILE = 'generation_config.json'
ARCHITECTURES = {'qwen2': 'Qwen2ForCausalLM', 'llama': 'LlamaForCausalLM'}

# transformers' config-class defaults where config.json omits a field.
_DEFAULTS = {
    'qwen2': dict(rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  max_position_embeddings=32768),
    'llama': dict(rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  max_position_embeddings=2048),
}
# Per block: (HF name under model.layers.N., params path under 'layers', is a Linear weight).
_LAYER_TENSORS = (
    ('input_layernorm.weight', ('input_layernorm', 'scale'), False),
    ('self_attn.q_proj.weight', ('q_proj', 'kernel'), True),
    ('self_attn.k_proj.weight', ('k_proj', 'kernel'), True),
    ('self_attn.v_proj.weight', ('v_proj', 'kernel'), True),
    ('self_attn.o_proj.weight', ('o_proj', 'kernel'), True),
    ('post_attention_layernorm.weight', ('post_attention_layernorm', 'scale'), False),
    ('mlp.gate_proj.weight', ('gate_proj', 'kernel'), True),
    ('mlp.up_proj.weight', ('up_proj', 'kernel'), True),
    ('mlp.down_proj.weight', ('down_proj', 'kernel'), True),
)
_BIASES = (('self_attn.q_proj.bias', 'q_proj'), ('self_attn.k_proj.bias', 'k_proj'),
           ('self_attn.v_proj.bias', 'v_proj'))
_IGNORED_SUFFIXES = ('rotary_emb.inv_freq',)  # a buffer some old Llama checkpoints saved


class CheckpointError(ValueError):
  """An unreadable or unsupported checkpoint folder; the message names the file and tensor."""


def _read_json(path: pathlib.Path) -> dict:
  if not path.is_file():
    raise CheckpointError(f'{path}: missing')
  try:
    return json.loads(path.read_text(encoding='utf-8'))
  except json.JSONDecodeError as e:
    raise CheckpointError(f'{path}: line {e.lineno}: invalid JSON ({e.msg})') from None


def config_from_dict(hf: dict, where: str = CONFIG_FILE, dtype: str = 'float32') -> causal_lm.LmConfig:
  """LmConfig of a transformers config.json dict; unsupported settings raise CheckpointError."""
  model_type = hf.get('model_type')
  if model_type not in ARCHITECTURES:
    raise CheckpointError(f'{where}: model_type {model_type!r} is not supported (only '
                          f'{sorted(ARCHITECTURES)}: Qwen2 / Qwen2.5 and Llama)')
  architectures = hf.get('architectures') or [ARCHITECTURES[model_type]]
  if architectures != [ARCHITECTURES[model_type]]:
    raise CheckpointError(f'{where}: architectures {architectures} is not supported (expected '
                          f'[{ARCHITECTURES[model_type]!r}])')
  for name in ('vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers',
               'num_attention_heads'):
    if not isinstance(hf.get(name), int):
      raise CheckpointError(f'{where}: field {name} is missing or not an integer')
  if hf.get('hidden_act', 'silu') != 'silu':
    raise CheckpointError(f'{where}: hidden_act {hf["hidden_act"]!r} is not supported (silu only)')
  if model_type == 'qwen2' and hf.get('use_sliding_window'):
    raise CheckpointError(f'{where}: use_sliding_window=true is not supported (full attention only)')
  if any(kind != 'full_attention' for kind in hf.get('layer_types') or ()):
    raise CheckpointError(f'{where}: layer_types {sorted(set(hf["layer_types"]))} is not supported '
                          '(full attention only)')
  if model_type == 'llama':
    for name in ('attention_bias', 'mlp_bias'):
      if hf.get(name):
        raise CheckpointError(f'{where}: {name}=true is not supported for llama')
  defaults = _DEFAULTS[model_type]
  heads = hf['num_attention_heads']
  return causal_lm.LmConfig(
      model_type=model_type, vocab_size=hf['vocab_size'], hidden_size=hf['hidden_size'],
      num_layers=hf['num_hidden_layers'], num_heads=heads,
      num_kv_heads=hf.get('num_key_value_heads') or heads,
      head_dim=hf.get('head_dim') or hf['hidden_size'] // heads,
      intermediate_size=hf['intermediate_size'],
      rope_theta=float(hf.get('rope_theta', defaults['rope_theta'])),
      rms_norm_eps=float(hf.get('rms_norm_eps', defaults['rms_norm_eps'])),
      attention_bias=model_type == 'qwen2',
      tie_word_embeddings=bool(hf.get('tie_word_embeddings', defaults['tie_word_embeddings'])),
      max_position_embeddings=int(hf.get('max_position_embeddings',
                                         defaults['max_position_embeddings'])),
      rope_scaling=_rope_scaling(hf.get('rope_scaling'), where), dtype=dtype)


def _rope_scaling(scaling, where: str):
  if scaling is None:
    return None
  kind = scaling.get('rope_type', scaling.get('type'))
  if kind == 'default':
    return None
  if kind != 'llama3':
    raise CheckpointError(f'{where}: rope_scaling type {kind!r} is not supported (none, '
                          f'"default" or "llama3")')
  try:
    return causal_lm.Llama3RopeScaling(
        factor=float(scaling['factor']), low_freq_factor=float(scaling['low_freq_factor']),
        high_freq_factor=float(scaling['high_freq_factor']),
        original_max_position_embeddings=int(scaling['original_max_position_embeddings']))
  except KeyError as e:
    raise CheckpointError(f'{where}: rope_scaling (llama3) lacks field {e.args[0]}') from None


def _weight_files(path: pathlib.Path) -> dict[str, pathlib.Path]:
  """Tensor name -> the safetensors file holding it."""
  index = path / WEIGHTS_INDEX_FILE
  if index.is_file():
    weight_map = _read_json(index).get('weight_map')
    if not isinstance(weight_map, dict):
      raise CheckpointError(f'{index}: no weight_map')
    return {name: path / file for name, file in weight_map.items()}
  single = path / WEIGHTS_FILE
  if not single.is_file():
    raise CheckpointError(f'{path}: neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE} found')
  with safe_open(str(single), framework='np') as f:
    return {name: single for name in f.keys()}


def read_config(path, dtype: str = 'float32') -> causal_lm.LmConfig:
  """LmConfig of checkpoint folder `path` (its config.json only; no weights are read)."""
  path = pathlib.Path(path)
  return config_from_dict(_read_json(path / CONFIG_FILE), str(path / CONFIG_FILE), dtype)


def load(path, dtype: str = 'float32') -> tuple[causal_lm.LmConfig, dict]:
  """(LmConfig, params) of a checkpoint folder: float32 numpy params; dtype is the compute dtype."""
  path = pathlib.Path(path)
  cfg = config_from_dict(_read_json(path / CONFIG_FILE), str(path / CONFIG_FILE), dtype)
  files = _weight_files(path)
  expected = _expected_shapes(cfg)
  unknown = sorted(n for n in files if n not in expected and not n.endswith(_IGNORED_SUFFIXES)
                   and not (n == 'lm_head.weight' and cfg.tie_word_embeddings))
  if unknown:
    raise CheckpointError(f'{files[unknown[0]]}: unexpected tensor {unknown[0]} for a '
                          f'{cfg.model_type} model ({len(unknown)} unexpected in all)')
  missing = sorted(n for n in expected if n not in files)
  if missing:
    where = path / (WEIGHTS_INDEX_FILE if (path / WEIGHTS_INDEX_FILE).is_file() else WEIGHTS_FILE)
    raise CheckpointError(f'{where}: missing tensor {missing[0]} ({len(missing)} missing in all)')
  tensors = {}
  by_file: dict[pathlib.Path, list[str]] = {}
  for name in expected:
    by_file.setdefault(files[name], []).append(name)
  for file, names in by_file.items():
    if not file.is_file():
      raise CheckpointError(f'{file}: missing (named by {WEIGHTS_INDEX_FILE})')
    with safe_open(str(file), framework='np') as f:
      for name in names:
        array = f.get_tensor(name)
        if tuple(array.shape) != expected[name]:
          raise CheckpointError(f'{file}: tensor {name} has shape {tuple(array.shape)}, expected '
                                f'{expected[name]} from {CONFIG_FILE}')
        tensors[name] = np.asarray(array, np.float32)
  return cfg, params_from_tensors(tensors, cfg)


def _expected_shapes(cfg: causal_lm.LmConfig) -> dict[str, tuple]:
  """HF tensor name -> shape, for every tensor the model needs."""
  d, q_dim = cfg.hidden_size, cfg.num_heads * cfg.head_dim
  kv_dim, inner = cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
  linear = {'self_attn.q_proj.weight': (q_dim, d), 'self_attn.k_proj.weight': (kv_dim, d),
            'self_attn.v_proj.weight': (kv_dim, d), 'self_attn.o_proj.weight': (d, q_dim),
            'mlp.gate_proj.weight': (inner, d), 'mlp.up_proj.weight': (inner, d),
            'mlp.down_proj.weight': (d, inner)}
  per_layer = dict(linear, **{'input_layernorm.weight': (d,), 'post_attention_layernorm.weight': (d,)})
  if cfg.attention_bias:
    per_layer.update({'self_attn.q_proj.bias': (q_dim,), 'self_attn.k_proj.bias': (kv_dim,),
                      'self_attn.v_proj.bias': (kv_dim,)})
  shapes = {'model.embed_tokens.weight': (cfg.vocab_size, d), 'model.norm.weight': (d,)}
  if not cfg.tie_word_embeddings:
    shapes['lm_head.weight'] = (cfg.vocab_size, d)
  for i in range(cfg.num_layers):
    shapes.update({f'model.layers.{i}.{name}': shape for name, shape in per_layer.items()})
  return shapes


def params_from_tensors(tensors: dict[str, np.ndarray], cfg: causal_lm.LmConfig) -> dict:
  """HF-named float32 tensors -> the causal_lm params pytree (numpy).

  The tensors are popped from `tensors` as they are stacked, so a large model is held about
  once, not twice.
  """
  def take(name):
    return tensors.pop(name)

  def stack(hf_name, transpose):
    return np.stack([take(f'model.layers.{i}.{hf_name}').T if transpose
                     else take(f'model.layers.{i}.{hf_name}') for i in range(cfg.num_layers)])

  layers: dict[str, dict[str, Any]] = {}
  for hf_name, (module, leaf), is_linear in _LAYER_TENSORS:
    layers.setdefault(module, {})[leaf] = stack(hf_name, is_linear)
  if cfg.attention_bias:
    for hf_name, module in _BIASES:
      layers[module]['bias'] = stack(hf_name, False)
  params = {'embed_tokens': {'embedding': take('model.embed_tokens.weight')},
            'layers': layers, 'norm': {'scale': take('model.norm.weight')}}
  if not cfg.tie_word_embeddings:
    params['lm_head'] = {'kernel': np.ascontiguousarray(take('lm_head.weight').T)}
  return params


def tensors_from_params(params, cfg: causal_lm.LmConfig) -> dict[str, np.ndarray]:
  """The causal_lm params (other subtrees, e.g. value heads, ignored) -> HF-named float32 tensors."""
  def host(x):
    return np.ascontiguousarray(np.asarray(x, np.float32))
  layers = params['layers']
  tensors = {'model.embed_tokens.weight': host(params['embed_tokens']['embedding']),
             'model.norm.weight': host(params['norm']['scale'])}
  if not cfg.tie_word_embeddings:
    tensors['lm_head.weight'] = host(np.asarray(params['lm_head']['kernel']).T)
  for hf_name, (module, leaf), is_linear in _LAYER_TENSORS:
    stacked = np.asarray(layers[module][leaf])
    for i in range(cfg.num_layers):
      tensors[f'model.layers.{i}.{hf_name}'] = host(stacked[i].T if is_linear else stacked[i])
  if cfg.attention_bias:
    for hf_name, module in _BIASES:
      for i in range(cfg.num_layers):
        tensors[f'model.layers.{i}.{hf_name}'] = host(layers[module]['bias'][i])
  return tensors


def config_dict(cfg: causal_lm.LmConfig, tok: sid_tokens.SidTokenizer) -> dict:
  """The config.json of cfg (float32 weights; BOS / EOS / PAD ids from the tokenizer, pad = EOS)."""
  hf = {
      'architectures': [ARCHITECTURES[cfg.model_type]], 'model_type': cfg.model_type,
      'vocab_size': cfg.vocab_size, 'hidden_size': cfg.hidden_size,
      'intermediate_size': cfg.intermediate_size, 'num_hidden_layers': cfg.num_layers,
      'num_attention_heads': cfg.num_heads, 'num_key_value_heads': cfg.num_kv_heads,
      'head_dim': cfg.head_dim, 'hidden_act': 'silu',
      'max_position_embeddings': cfg.max_position_embeddings, 'rms_norm_eps': cfg.rms_norm_eps,
      'rope_theta': cfg.rope_theta, 'tie_word_embeddings': cfg.tie_word_embeddings,
      'rope_scaling': None, 'attention_dropout': 0.0, 'bos_token_id': tok.bos_id,
      'eos_token_id': tok.eos_id, 'pad_token_id': tok.eos_id, 'torch_dtype': 'float32',
      'use_cache': True,
  }
  if cfg.rope_scaling is not None:
    hf['rope_scaling'] = {'rope_type': 'llama3', 'factor': cfg.rope_scaling.factor,
                          'low_freq_factor': cfg.rope_scaling.low_freq_factor,
                          'high_freq_factor': cfg.rope_scaling.high_freq_factor,
                          'original_max_position_embeddings':
                              cfg.rope_scaling.original_max_position_embeddings}
  if cfg.model_type == 'qwen2':
    hf['use_sliding_window'] = False
  else:
    hf.update(attention_bias=False, mlp_bias=False)
  return hf


def export(params, cfg: causal_lm.LmConfig, tok: sid_tokens.SidTokenizer, out_dir) -> pathlib.Path:
  """Writes a folder transformers loads: model.safetensors (float32), config.json,
  generation_config.json (greedy: no sampling defaults can leak into a beam search) and the
  tokenizer (tokenizer.json with the SID tokens, tokenizer_config.json with pad = EOS, as
  MiniOneRec saves it). Value heads are not exported (they live in the orbax checkpoints)."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tensors = tensors_from_params(params, cfg)
  rows = tensors['model.embed_tokens.weight'].shape[0]
  if rows != cfg.vocab_size or rows < len(tok):
    raise ValueError(f'embedding has {rows} rows; cfg.vocab_size is {cfg.vocab_size} and the '
                     f'tokenizer has {len(tok)} tokens')
  _replace(out / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={'format': 'pt'}))
  _replace(out / sid_tokens.TOKENIZER_FILE, tok.tokenizer.save)
  files.write_json_atomic(out / CONFIG_FILE, config_dict(cfg, tok))
  files.write_json_atomic(out / GENERATION_CONFIG_FILE,
                       {'bos_token_id': tok.bos_id, 'eos_token_id': tok.eos_id,
                        'pad_token_id': tok.eos_id, 'do_sample': False})
  files.write_json_atomic(out / sid_tokens.TOKENIZER_CONFIG_FILE,
                       dict(tok.config, eos_token=tok.eos_token, pad_token=tok.eos_token))
  return out


def _replace(path: pathlib.Path, write) -> None:
  """write(temp path), then rename it onto path (mode 0644 under umask 022): a crash never leaves
  a partial file."""
  tmp = path.with_name(f'.{path.name}.tmp')
  umask = os.umask(0o022)
  os.umask(umask)
  try:
    write(str(tmp))
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
