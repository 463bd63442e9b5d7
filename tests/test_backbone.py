"""Tests for vstar_jax.model.backbone: one set of policy functions over two backbones, and the
CLI running the paper's setting (a pretrained causal LM with SID tokens) end to end."""

import json
import os

import ml_collections
import numpy as np
import pytest

import hf_fixture
from conftest import REPO, run_main
from vstar_jax import default_config
from vstar_jax.data import sid_strings
from vstar_jax.data import types
from vstar_jax.default_config import ConfigError
from vstar_jax.model import backbone
from vstar_jax.model import decoder
from vstar_jax.model import hf_checkpoint
from vstar_jax.model import hf_lm
from vstar_jax.model import hf_policy


def _dataset(codes: np.ndarray) -> types.Dataset:
  """A catalogue of `codes` with one split of three histories (item ids, PAD-padded)."""
  history = np.array([[-1, 0, 1], [-1, -1, 2], [3, 4, 5]], np.int32)
  split = types.Split('test', np.array(['u0', 'u1', 'u2']), history,
                      (history >= 0).sum(1).astype(np.int32), np.array([6, 7, 8], np.int32))
  sids = np.array(sid_strings.format_sids(codes))
  return types.Dataset('tiny', codes, 256, np.array([f'item {i}' for i in range(len(codes))]),
                       {'test': split}, {'test': sids[split.target_item]})


def _hf_config(path=hf_fixture.QWEN2) -> ml_collections.ConfigDict:
  c = default_config.base_config()
  c.model.backbone, c.model.hf_path = 'hf', str(path)
  return c


def test_model_config_picks_the_backbone():
  codes = hf_fixture.catalogue()
  dataset = _dataset(codes)
  assert isinstance(backbone.model_config(default_config.base_config(), dataset),
                    decoder.DecoderConfig)
  cfg = backbone.model_config(_hf_config(), dataset)
  assert backbone.is_hf(cfg) and cfg.num_levels == 3 and cfg.num_codes == 256
  # Read from config.json and the tokenizer only, it is the config loading the weights gives.
  _, loaded, _ = hf_policy.load(hf_fixture.QWEN2, codes, 256, np.zeros(2, np.uint32))
  assert cfg == loaded


def test_prompt_inputs_are_the_contracts_prompt_tokens():
  """backbone.inputs (what every stage feeds the LM) = hf_lm's .prompt_tokens of each history,
  left-padded with -1; the SID decoder gets the history codes."""
  codes = hf_fixture.catalogue()
  dataset = _dataset(codes)
  cfg = backbone.model_config(_hf_config(), dataset)
  prompts = backbone.inputs(cfg, dataset, 'test', 'eval')
  model = hf_lm.load(hf_fixture.QWEN2)
  for row, items in zip(prompts, dataset.splits['test'].history_items):
    expected = model.prompt_tokens([sid_strings.format_sid(codes[i]) for i in items if i >= 0])
    assert row[row >= 0].tolist() == expected and (row[:len(row) - len(expected)] == -1).all()
  train = backbone.inputs(cfg, dataset, 'test', 'train')
  assert not np.array_equal(train[:, -20:], prompts[:, -20:])  # MiniOneRec's two wordings
  sid_cfg = backbone.model_config(default_config.base_config(), dataset)
  np.testing.assert_array_equal(backbone.inputs(sid_cfg, dataset, 'test'),
                                dataset.history_codes('test'))


@pytest.mark.parametrize('change,flag', [
    ({'hf_path': ''}, 'model.hf_path'),
    ({'backbone': 'gpt'}, 'model.backbone'),
], ids=['no_checkpoint', 'unknown'])
def test_bad_backbone_settings_name_the_flag(change, flag):
  c = _hf_config()
  c.model.update(change)
  with pytest.raises(ConfigError, match=f'--config.{flag}'):
    backbone.validate_config(c)


def test_decoder_only_knobs_are_refused_with_the_lm():
  for section, knob in (('sft', 'history_dropout'), ('rl', 'anchor_history_dropout')):
    c = _hf_config()
    c[section][knob] = 0.2
    with pytest.raises(ConfigError, match=f'--config.{section}.{knob}'):
      backbone.validate_config(c)
  c = default_config.base_config()
  c.model.hf_path = str(hf_fixture.QWEN2)
  with pytest.raises(ConfigError, match='--config.model.hf_path: is read only with'):
    backbone.validate_config(c)


# The paper's setting from the CLI, on Industrial with the tiny Qwen2 (its tokenizer holds
# Industrial's SID tokens): SFT on the RL holdout rows (~2.6k rows), eval, RL, recommend, export.
HF = ['--config=configs/amazon.py:industrial,hf', f'--config.model.hf_path={hf_fixture.QWEN2}',
      '--config.sft.train_splits=("holdout",)', '--config.sft.epochs=1', '--config.sft.batch_size=64',
      '--config.sft.lr=0.003', '--config.sft.warmup_steps=5',
      '--config.sft.valid_max_rows=64', '--config.sft.valid_beams=10', '--config.eval.max_rows=64',
      '--config.eval.batch_size=32', '--config.rl.train_splits=("holdout",)', '--config.rl.epochs=0',
      '--config.rl.steps=2', '--config.rl.batch_users=8', '--config.rl.group_size=8',
      '--config.rl.valid_every=2', '--config.rl.valid_max_rows=32', '--config.rl.valid_beams=10',
      '--config.rl.value_pretrain_steps=1', '--config.ved.width=4', '--config.ved.per_step=4',
      '--config.ved.multiplier=1.5']


@pytest.mark.slow  # ~2 min at idle (6 programs compile); the policy functions run in CI's test_hf_*
@pytest.mark.realdata
def test_the_paper_setting_runs_end_to_end_from_the_cli(data_dir, tmp_path):
  env = dict(os.environ, VSTAR_DATA_DIR=str(data_dir))
  w = tmp_path / 'w'
  run_main(*HF, f'--workdir={w}', '--config.mode=rl', env=env, timeout=1200)
  records = [json.loads(l) for l in (w / 'metrics.jsonl').read_text().splitlines()]
  losses = [r['loss'] for r in records if r['stage'] == 'sft' and 'loss' in r]
  assert losses[-1] < 0.8 * losses[0]
  assert {r['stage'] for r in records} >= {'sft', 'rl', 'rl_value'}
  for stage in ('sft', 'rl'):
    metrics = json.loads((w / 'eval' / f'{stage}_test' / 'metrics.json').read_text())
    predictions = json.loads((w / 'eval' / f'{stage}_test' / 'predictions.json').read_text())
    assert metrics['n'] == len(predictions) == 64 and metrics['invalid'] == 0
    hits = [p['predict'].index(p['output']) if p['output'] in p['predict'] else None
            for p in predictions]   # MiniOneRec's calc.py: the first exact string match
    assert metrics['HR@10'] == pytest.approx(np.mean([h is not None and h < 10 for h in hits]))
  out = tmp_path / 'export'
  run_main(*HF, f'--workdir={w}', '--config.mode=export', f'--out={out}', env=env)
  exported = hf_lm.load(out / 'export' / 'hf')
  assert exported.config.vocab_size == hf_checkpoint.read_config(hf_fixture.QWEN2).vocab_size
  run_main(*HF, f'--workdir={w}', '--config.mode=recommend', '--config.recommend.history=0,1,2',
           '--config.recommend.top_n=3', env=env)
  assert len(json.loads((w / 'recommend.json').read_text())[0]['recommendations']) == 3
