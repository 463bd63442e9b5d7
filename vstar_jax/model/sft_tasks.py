"""MiniOneRec's SFT task mixture for the LM backbone: the (prompt, response) rows SFT trains on.

MiniOneRec's sft.py trains on the concatenation of three datasets (data.py), each row encoded
as sid_tokens encodes prompts (the instruction and the user part separately, then joined) and
its response as `text + "\\n"` and EOS, the loss on the response tokens only:
  next_sid       SidSFTDataset: a user's history of SIDs -> the next item's SID (always on);
  sid2title      SidItemFeatDataset: 'What is the title of item "<SID>"?' -> the item's title;
  title2sid      SidItemFeatDataset: "Which item has the title: <title>?" -> its SID;
  history2title  FusionSeqRecDataset: a history of SIDs -> the next item's title.
sid2title / title2sid have one row per distinct SID / title of the catalogue (where SIDs or
titles collide, the item listed last wins, as MiniOneRec's dicts do); history2title one row
per SFT row. `--config.sft.tasks=next_sid,sid2title,title2sid,history2title` is MiniOneRec's
mixture; the default trains on next_sid alone.

One difference, on purpose: SidItemFeatDataset (at the commit read, 81b4ba9) also writes the
answer after "### Response:\\n" in the prompt, so the model is shown what it must predict;
here every prompt ends at "### Response:\\n", as FusionSeqRecDataset's and upstream's fix do.
Titles are the info file's (identical to item.json's titles on both Amazon datasets).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vstar_jax.data import sid_strings
from vstar_jax.data import types
from vstar_jax.model import sid_tokens

NEXT_SID = 'next_sid'
TASKS = (NEXT_SID, 'sid2title', 'title2sid', 'history2title')
_ITEM_INSTRUCTION = sid_tokens.HEADER + 'Answer the question about item identification.\n\n'
_TITLE_INSTRUCTION = (sid_tokens.HEADER + 'Can you recommend the next item for the user based on '
                      'their interaction history?\n\n')
_USER = '### User Input: \n{}\n\n' + sid_tokens.RESPONSE_PREFIX
_HISTORY_TO_TITLE = ('The user has sequentially interacted with items {}. Can you recommend the '
                     'next item for him? Tell me the title of the item')


def check(tasks: Sequence[str]) -> tuple[str, ...]:
  """The task names as a tuple; ValueError naming the unknown one, or a mixture without next_sid."""
  tasks = tuple(tasks)
  unknown = [t for t in tasks if t not in TASKS]
  if unknown:
    raise ValueError(f'{unknown[0]!r} is not one of {TASKS}')
  if NEXT_SID not in tasks or len(set(tasks)) != len(tasks):
    raise ValueError(f'{tasks}: must hold next_sid, each task once (MiniOneRec always trains it; '
                     'validation decodes it)')
  return tasks


def prompts(tok: sid_tokens.SidTokenizer, instruction: str, questions: Sequence[str]) -> list[list[int]]:
  """MiniOneRec prompts' ids: instruction (with BOS) + "### User Input" part, ending at the response."""
  head = sid_tokens.encode(tok, instruction, bos=True, eos=False)
  users = sid_tokens.encode_batch(tok, [_USER.format(q) for q in questions], bos=False, eos=False)
  return [head + user for user in users]


def responses(tok: sid_tokens.SidTokenizer, texts: Sequence[str]) -> list[list[int]]:
  """MiniOneRec responses' ids: `text + "\n"`, then EOS."""
  return sid_tokens.encode_batch(tok, [t + '\n' for t in texts], bos=False, eos=True)


def catalogue_pairs(dataset: types.Dataset) -> tuple[dict, dict]:
  """(SID -> title, title -> SID) over the catalogue in item order, the last item winning a
  collision (SidItemFeatDataset's sid2title / title2sid)."""
  sid2title, title2sid = {}, {}
  for codes, title in zip(dataset.item_codes.tolist(), dataset.item_titles.tolist()):
    sid = sid_strings.format_sid(codes)
    sid2title[sid] = title
    title2sid[title] = sid
  return sid2title, title2sid


def auxiliary_rows(tok: sid_tokens.SidTokenizer, dataset: types.Dataset, splits: Sequence[str],
                   tasks: Sequence[str]) -> list[tuple[list[int], list[int]]]:
  """(prompt ids, response ids) of every row of the tasks other than next_sid, in TASKS order."""
  sid2title, title2sid = catalogue_pairs(dataset)
  questions, answers = {}, {}   # instruction -> the questions / answers of its rows
  if 'sid2title' in tasks:
    questions[_ITEM_INSTRUCTION] = [f'What is the title of item "{sid}"?' for sid in sid2title]
    answers[_ITEM_INSTRUCTION] = list(sid2title.values())
  if 'title2sid' in tasks:
    questions.setdefault(_ITEM_INSTRUCTION, []).extend(
        f'Which item has the title: {title}?' for title in title2sid)
    answers.setdefault(_ITEM_INSTRUCTION, []).extend(title2sid.values())
  if 'history2title' in tasks:
    questions[_TITLE_INSTRUCTION], answers[_TITLE_INSTRUCTION] = [], []
    for split in splits:
      histories = sid_tokens.history_sid_strings(dataset.history_codes(split))
      for history, target in zip(histories, dataset.target_codes(split).tolist()):
        sid = sid_strings.format_sid(target)
        questions[_TITLE_INSTRUCTION].append(_HISTORY_TO_TITLE.format(', '.join(history)))
        answers[_TITLE_INSTRUCTION].append(sid2title.get(sid, sid))
  rows = []
  for instruction, asked in questions.items():
    rows += list(zip(prompts(tok, instruction, asked), responses(tok, answers[instruction])))
  return rows


def pad_right(responses: Sequence[Sequence[int]]) -> np.ndarray:
  """Responses -> [N, R] int32 right padded with -1 (R = the longest)."""
  out = np.full((len(responses), max(len(r) for r in responses)), sid_tokens.PAD, np.int32)
  for row, ids in enumerate(responses):
    out[row, :len(ids)] = ids
  return out
