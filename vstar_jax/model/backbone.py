"""The two backbones behind one set of policy functions, chosen by config.model.backbone.

  'sid': the decoder-only transformer over SID code tokens trained from scratch
         (model.decoder, model.policy; the static config is a DecoderConfig);
  'hf':  a pretrained Hugging Face causal LM (Qwen2 / Qwen2.5 / Llama) with MiniOneRec's SID
         tokens and prompts (model.hf_policy; an HfPolicyConfig), loaded from
         config.model.hf_path (docs/hf_backbone.md).

Everything above the model layer (the searches, SFT, RL, evaluation, the Recommender) calls the
functions here with the static config they got from `model_config` and never branches on the
backbone: the config's type picks the implementation. What a row feeds the model differs
(`inputs`): the SID decoder reads history codes [N, T, L]; the LM reads MiniOneRec's prompt
token ids [N, P] (-1 left padding), its training prompt for SFT and its evaluation prompt for
decoding and RL.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import pathlib
from typing import Sequence

import jax
import numpy as np

from vstar_jax.data import batching
from vstar_jax.data import sid_strings
from vstar_jax.data import types
from vstar_jax.default_config import ConfigError
from vstar_jax.model import causal_lm
from vstar_jax.model import decoder
from vstar_jax.model import hf_checkpoint
from vstar_jax.model import hf_policy
from vstar_jax.model import layout
from vstar_jax.model import policy
from vstar_jax.model import sft_tasks
from vstar_jax.model import sid_tokens

BACKBONES = ('sid', 'hf')
PURPOSES = ('train', 'eval')  # which prompt a row gets: SFT's, or decoding's (and RL's)


def validate_config(c) -> None:
  """Rejects backbone settings that cannot work, naming the flag."""
  m = c.model
  if m.backbone not in BACKBONES:
    raise ConfigError('model.backbone', f'{m.backbone!r} is not one of {BACKBONES}')
  try:
    tasks = sft_tasks.check(c.sft.tasks)
  except ValueError as e:
    raise ConfigError('sft.tasks', str(e)) from None
  if m.backbone == 'sid':
    if tasks != (sft_tasks.NEXT_SID,):
      raise ConfigError('sft.tasks', f'{tasks} are LM prompts; the SID decoder trains next_sid '
                        'alone (use --config.model.backbone=hf)')
    if m.hf_path:
      raise ConfigError('model.hf_path', 'is read only with --config.model.backbone=hf')
    return
  if not m.hf_path or not (pathlib.Path(m.hf_path) / hf_checkpoint.CONFIG_FILE).is_file():
    raise ConfigError('model.hf_path', f'{m.hf_path!r} is not a checkpoint folder (config.json, '
                      '*.safetensors, tokenizer.json); download one first (docs/hf_backbone.md)')
  if c.sft.history_dropout:
    raise ConfigError('sft.history_dropout', 'masks SID-decoder history items; the hf backbone '
                      'reads a text prompt (set it to 0)')
  if c.rl.anchor_history_dropout:
    raise ConfigError('rl.anchor_history_dropout', 'masks SID-decoder history items; the hf '
                      'backbone reads a text prompt (set it to 0)')
  if m.item_text_features:
    raise ConfigError('model.item_text_features', 'is a SID-decoder input; the hf backbone reads '
                      'item SIDs in its prompt')


def is_hf(cfg) -> bool:
  return isinstance(cfg, hf_policy.HfPolicyConfig)


def model_config(config, dataset: types.Dataset):
  """The static config of config.model's backbone for the dataset's catalogue (no weights read)."""
  m = config.model
  if m.backbone == 'hf':
    return hf_config(m.hf_path, dataset.item_codes, dataset.num_codes, m.dtype)
  keys, dim = (), 0
  if m.item_text_features:
    if dataset.item_features is None:
      raise ValueError('--config.model.item_text_features=True but the dataset carries no item '
                       'features (load it with pipeline.load_dataset)')
    keys, dim = layout.item_feature_table(dataset.item_codes, dataset.num_codes,
                                           dataset.item_features)[0], dataset.item_features.shape[1]
  return decoder.DecoderConfig(
      num_levels=dataset.num_levels, num_codes=dataset.num_codes, max_history=dataset.max_history,
      num_layers=m.num_layers, d_model=m.d_model, num_heads=m.num_heads, d_ff=m.d_ff,
      dropout=m.dropout, tie_embeddings=m.tie_embeddings, dtype=m.dtype,
      item_hash_buckets=m.item_hash_buckets, item_feature_keys=keys, item_feature_dim=dim)


def hf_config(path, item_codes: np.ndarray, num_codes: int, dtype: str) -> hf_policy.HfPolicyConfig:
  """HfPolicyConfig of checkpoint `path` extended with the catalogue's SID tokens: read from its
  config.json and tokenizer only (the vocabulary grows to the tokenizer's size, as
  sid_tokens.extend_model grows the weights)."""
  path = pathlib.Path(path)
  lm = hf_checkpoint.read_config(path, dtype)
  tok = sid_tokens.add_tokens(sid_tokens.load_tokenizer(path),
                              sid_tokens.sid_token_strings(item_codes))
  if len(tok) > lm.vocab_size:
    lm = dataclasses.replace(lm, vocab_size=len(tok))
  return hf_policy.policy_config(lm, tok, item_codes, num_codes, source=str(path))


@functools.lru_cache(maxsize=4)
def tokenizer(cfg: hf_policy.HfPolicyConfig) -> sid_tokens.SidTokenizer:
  """The LM's tokenizer with the SID tokens of cfg's table (their ids as at training)."""
  strings = sorted(f'<{sid_strings.LEVEL_LETTERS[level]}_{code}>'
                   for level, row in enumerate(cfg.sid_token_ids)
                   for code, token in enumerate(row) if token >= 0)
  return sid_tokens.add_tokens(sid_tokens.load_tokenizer(cfg.source), strings)


def pretrained_params(cfg: hf_policy.HfPolicyConfig, item_codes: np.ndarray, rng: jax.Array):
  """The hf backbone's checkpoint weights, SID rows added, with freshly initialised V / Q heads."""
  params, loaded, _ = hf_policy.load(cfg.source, item_codes, cfg.num_codes, rng, cfg.dtype)
  if loaded.lm.vocab_size != cfg.lm.vocab_size or loaded.sid_token_ids != cfg.sid_token_ids:
    raise ValueError(f'{cfg.source}: its SID tokens differ from the config built for this catalogue')
  return params


def init_params(cfg, rng: jax.Array, dataset: types.Dataset | None = None):
  """Freshly initialised params of either backbone (the SID decoder's training start; for the
  LM only a shape template: its training starts from pretrained_params). With `dataset`, the
  SID decoder's frozen item-feature table (cfg.item_feature_dim > 0) is filled from its
  item_features; without it the table is zeros (a restore template)."""
  if is_hf(cfg):
    lm_key, head_key = jax.random.split(rng)
    return {**causal_lm.init_params(cfg.lm, lm_key), **hf_policy.init_heads(cfg, head_key)}
  features = None
  if dataset is not None and cfg.item_feature_dim:
    features = layout.item_feature_table(dataset.item_codes, dataset.num_codes,
                                          dataset.item_features)[1]
  return decoder.init_params(cfg, rng, features)


# The policy functions of the searches and the RL loss (model.policy's signatures).

def beam_policy(params, cfg, history):
  return (hf_policy if is_hf(cfg) else policy).beam_policy(params, cfg, history)


def ved_policy(params, cfg, history):
  return (hf_policy if is_hf(cfg) else policy).ved_policy(params, cfg, history)


def candidate_log_probs(params, candidates, *, cfg):
  return (hf_policy if is_hf(cfg) else policy).candidate_log_probs(params, candidates, cfg=cfg)


def sft_loss(params, cfg, history, target, rng, label_smoothing: float):
  """The SFT loss of either backbone -> (loss, metrics); history is `inputs(..., 'train')`."""
  if is_hf(cfg):
    return hf_policy.sft_loss(params, cfg, history, target, rng, label_smoothing)
  return decoder.sft_loss(params, cfg, history, target, rng, label_smoothing)


# What rows feed the model.

def item_inputs(cfg, dataset: types.Dataset, history_items: np.ndarray,
                purpose: str = 'eval') -> np.ndarray:
  """Model inputs of histories of item ids [N, T] (PAD-padded): codes [N, T, L] for the SID
  decoder; MiniOneRec's prompt ids [N, P] (-1 left padding) for the LM."""
  codes = dataset.codes_of(history_items)
  if not is_hf(cfg):
    return codes
  tok = tokenizer(cfg)
  make = sid_tokens.train_prompt if purpose == 'train' else sid_tokens.eval_prompt
  return sid_tokens.pad_left([make(tok, sids) for sids in sid_tokens.history_sid_strings(codes)])


def inputs(cfg, dataset: types.Dataset, split: str, purpose: str = 'eval') -> np.ndarray:
  """Model inputs of every row of `split` (item_inputs of its histories)."""
  return _split_inputs(cfg, dataset, split, purpose) if is_hf(cfg) else dataset.history_codes(split)


_PROMPTS: dict = {}  # (cfg, purpose, fingerprint of the histories) -> prompt ids


def _split_inputs(cfg, dataset, split, purpose):
  """Prompt ids of a split, tokenised once per process for the same histories and config."""
  items = dataset.splits[split].history_items
  codes = dataset.codes_of(items)
  key = (cfg, purpose, hashlib.sha1(np.ascontiguousarray(codes).tobytes()).hexdigest())
  if key not in _PROMPTS:
    _PROMPTS[key] = item_inputs(cfg, dataset, items, purpose)
  return _PROMPTS[key]


def training_rows(cfg, dataset: types.Dataset, splits,
                  tasks: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """SFT's (inputs [N, ...], targets [N, ...]) of the listed splits, concatenated: for the SID
  decoder history codes and the next item's codes [N, L]; for the LM, MiniOneRec's training
  prompts [N, P] (-1 left padding) and response ids [N, R] (-1 right padding) of each task of
  `tasks` (config.sft.tasks, model.sft_tasks; the SID decoder: next_sid only; next_sid rows
  first: the SID tokens, then the tail)."""
  targets = np.concatenate([dataset.target_codes(s) for s in splits])
  if not is_hf(cfg):
    return np.concatenate([inputs(cfg, dataset, s, 'train') for s in splits]), targets
  prompts = [row[row >= 0] for s in splits for row in inputs(cfg, dataset, s, 'train')]
  table = np.asarray(cfg.sid_token_ids)
  responses = np.concatenate([table[np.arange(cfg.num_levels), targets],
                              np.tile(np.asarray(cfg.tail_token_ids, np.int32), (len(targets), 1))],
                             axis=1).tolist()
  for prompt, response in sft_tasks.auxiliary_rows(tokenizer(cfg), dataset, splits, tasks):
    prompts.append(prompt)
    responses.append(response)
  return sid_tokens.pad_left(prompts), sft_tasks.pad_right(responses)


def user_rows(cfg, dataset: types.Dataset, splits) -> batching.UserRows:
  """RL's rollout users of the listed splits, their rows as the model reads them."""
  users = batching.UserRows.from_dataset(dataset, splits)
  if not is_hf(cfg):
    return users
  prompts = [inputs(cfg, dataset, s, 'eval') for s in splits]
  if len({p.shape[1] for p in prompts}) > 1:
    prompts = [sid_tokens.pad_left([row[row >= 0] for p in prompts for row in p])]
  users.history = np.concatenate(prompts)
  return users


def export(params, cfg: hf_policy.HfPolicyConfig, out_dir) -> pathlib.Path:
  """The hf backbone's params as a Hugging Face folder (hf_checkpoint.export; heads left out)."""
  lm_params = {k: v for k, v in params.items() if k not in ('value_head', 'q_head')}
  return hf_checkpoint.export(lm_params, cfg.lm, tokenizer(cfg), out_dir)
