"""Tests for vstar_jax.model.sft_tasks: MiniOneRec's SFT task mixture for the LM backbone."""

import json
import os

import jax
import numpy as np
import pytest

import hf_fixture
from conftest import run_main
from test_backbone import HF, _dataset, _hf_config
from vstar_jax.data import amazon
from vstar_jax.data import sid_strings
from vstar_jax.default_config import ConfigError
from vstar_jax.model import backbone
from vstar_jax.model import causal_lm
from vstar_jax.model import hf_policy
from vstar_jax.model import sft_tasks
from vstar_jax.model import sid_tokens

ALL = ('next_sid', 'sid2title', 'title2sid', 'history2title')
# MiniOneRec's data.py text (SidItemFeatDataset, FusionSeqRecDataset), restated here.
HEAD = ('Below is an instruction that describes a task, paired with an input that provides further '
        'context. Write a response that appropriately completes the request. \n\n### Instruction:\n')


def _tiny():
  """(cfg, tokenizer, dataset) on the Qwen2 fixture: items 1 and 2 share a SID, 3 and 4 a title."""
  codes = hf_fixture.catalogue()[:12].copy()
  codes[2] = codes[1]
  dataset = _dataset(codes)
  dataset.item_titles[4] = dataset.item_titles[3]
  cfg = backbone.model_config(_hf_config(), dataset)
  return cfg, backbone.tokenizer(cfg), dataset


def _expected(tok, instruction: str, user: str, answer: str):
  return (sid_tokens.encode(tok, HEAD + instruction, bos=True, eos=False)
          + sid_tokens.encode(tok, '### User Input: \n' + user + '\n\n### Response:\n', bos=False,
                              eos=False),
          sid_tokens.encode(tok, answer + '\n', bos=False, eos=True))


def _rows(prompts, responses):
  return [(list(p[p >= 0]), list(r[r >= 0])) for p, r in zip(prompts, responses)]


def test_rows_are_minionerecs_prompts_and_responses_last_item_winning_collisions():
  cfg, tok, dataset = _tiny()
  prompts, responses = backbone.training_rows(cfg, dataset, ('test',), ALL)
  rows = _rows(prompts, responses)
  sids = sid_strings.format_sids(dataset.item_codes)
  titles = list(dataset.item_titles)
  split = dataset.splits['test']
  histories = sid_tokens.history_sid_strings(dataset.history_codes('test'))
  next_sid = [(sid_tokens.train_prompt(tok, h), list(map(int, np.asarray(cfg.sid_token_ids)[
      np.arange(3), dataset.item_codes[t]])) + list(cfg.tail_token_ids))
              for h, t in zip(histories, split.target_item)]
  item_q = 'Answer the question about item identification.\n\n'
  sid2title = [_expected(tok, item_q, f'What is the title of item "{sids[i]}"?', titles[i])
               for i in [0, 2] + list(range(3, 12))]                  # item 2's title for the SID of 1 and 2
  title2sid = [_expected(tok, item_q, f'Which item has the title: {titles[i]}?', sids[i])
               for i in [0, 1, 2, 4] + list(range(5, 12))]            # item 4's SID for the title of 3 and 4
  fusion = [_expected(tok, 'Can you recommend the next item for the user based on their interaction '
                      'history?\n\n', f'The user has sequentially interacted with items {", ".join(h)}. '
                      'Can you recommend the next item for him? Tell me the title of the item',
                      titles[t]) for h, t in zip(histories, split.target_item)]
  want = next_sid + sid2title + title2sid + fusion
  assert len(rows) == len(want) == 3 + 11 + 11 + 3
  for got, expected in zip(rows, want):
    assert got == (list(expected[0]), list(expected[1]))
  # Right padding only: every response starts at column 0 (the longest has no padding).
  assert (responses[:, 0] >= 0).all() and (responses[:, -1] >= 0).any()


def test_next_sid_alone_is_the_sid_response():
  cfg, _, dataset = _tiny()
  prompts, responses = backbone.training_rows(cfg, dataset, ('test',), ('next_sid',))
  assert responses.shape == (3, 3 + len(cfg.tail_token_ids))
  np.testing.assert_array_equal(prompts, backbone.inputs(cfg, dataset, 'test', 'train'))


def test_sft_loss_is_the_token_mean_over_mixed_responses():
  """A batch of next_sid, sid2title and history2title rows: loss = Σ response-token NLL / their
  count, each row's NLL from its own unpadded forward; SID metrics from the SID rows only."""
  _, _, dataset = _tiny()
  params, cfg, _, _ = hf_fixture.qwen2_policy()
  cfg = backbone.model_config(_hf_config(), dataset)
  prompts, responses = backbone.training_rows(cfg, dataset, ('test',), ALL)
  pick = np.array([0, 3, 5, 26])            # next_sid, sid2title x2, history2title
  loss, metrics = hf_fixture.jit(hf_policy.sft_loss, static_argnums=1)(
      params, cfg, prompts[pick], responses[pick])
  total, count, sid_nll = 0.0, 0, []
  for prompt, response in _rows(prompts[pick], responses[pick]):
    tokens = np.asarray([prompt + response[:-1]], np.int32)
    hidden = causal_lm.forward(params, cfg.lm, tokens, tokens >= 0)[:, -len(response):]
    lp = np.asarray(jax.nn.log_softmax(causal_lm.logits(params, cfg.lm, hidden), -1))[0]
    nll = -lp[np.arange(len(response)), response]
    total, count = total + nll.sum(), count + len(response)
    sid_nll.append(nll[:3].mean())
  np.testing.assert_allclose(loss, total / count, rtol=2e-5)
  np.testing.assert_allclose(metrics['nll_sid'], sid_nll[0], rtol=2e-5)  # row 0 is the only SID row


def test_tasks_are_checked_naming_the_flag():
  c = _hf_config()
  for tasks, match in [(('next_sid', 'sid2tile'), "'sid2tile' is not one of"),
                       (('sid2title',), 'must hold next_sid'),
                       (('next_sid', 'next_sid'), 'each task once')]:
    c.sft.tasks = tasks
    with pytest.raises(ConfigError, match=f'--config.sft.tasks: .*{match}'):
      backbone.validate_config(c)
  c = _hf_config()
  c.model.backbone, c.model.hf_path, c.sft.tasks = 'sid', '', ALL
  with pytest.raises(ConfigError, match='--config.sft.tasks: .*SID decoder trains next_sid alone'):
    backbone.validate_config(c)


@pytest.mark.realdata
def test_industrial_mixture_sizes(data_dir):
  """On Industrial: one row per train row (twice) and per distinct SID and title; every SID
  response of title2sid decodes to a catalogue SID."""
  dataset = amazon.load_dataset('industrial', data_dir)
  cfg = backbone.model_config(_hf_config(), dataset)
  prompts, responses = backbone.training_rows(cfg, dataset, ('train',), ALL)
  sids = sid_strings.format_sids(dataset.item_codes)
  n = len(dataset.splits['train'])
  assert len(prompts) == len(responses) == 2 * n + len(set(sids)) + len(set(dataset.item_titles))
  tok = backbone.tokenizer(cfg)
  start = n + len(set(sids))
  for row in responses[start:start + 20]:
    text = tok.tokenizer.decode([int(t) for t in row if t >= 0], skip_special_tokens=True)
    assert text.rstrip('\n') in set(sids)


@pytest.mark.slow  # ~5 min at idle
@pytest.mark.realdata
def test_sft_on_minionerecs_mixture_from_the_cli(data_dir, tmp_path):
  env = dict(os.environ, VSTAR_DATA_DIR=str(data_dir))
  w = tmp_path / 'w'
  run_main(*HF, f'--workdir={w}', '--config.mode=sft', f'--config.sft.tasks={ALL}', env=env,
           timeout=1200)
  records = [json.loads(l) for l in (w / 'metrics.jsonl').read_text().splitlines()]
  losses = [r['loss'] for r in records if r['stage'] == 'sft' and 'loss' in r]
  assert losses[-1] < 0.8 * losses[0]
  assert json.loads((w / 'eval' / 'sft_test' / 'metrics.json').read_text())['invalid'] == 0
