"""SID tokens and MiniOneRec's prompts on a Hugging Face tokenizer (`tokenizers`, no torch).

MiniOneRec (sft.py's TokenExtender) turns every code of a catalogue into one vocabulary
token: the set of strings `<a_12>`, `<b_80>`, `<c_3>` that the catalogue's SIDs use, sorted as
plain strings (so `<a_14>` < `<a_150>` < `<a_15>`, all `<a_*>` before `<b_*>`), added as
ordinary (non-special) tokens, ids in that order after the tokenizer's last one; the
embedding and output matrices grow to len(tokenizer) rows. A checkpoint that already holds
the tokens (a MiniOneRec / V-STAR SFT checkpoint) keeps its ids and rows.

Prompts are MiniOneRec's Alpaca-style text, token for token (data.py: EvalSidDataset for
evaluation, SidSFTDataset for training): the instruction and the user part are encoded
separately (each with the tokenizer's post-processor, then leading BOS and trailing EOS
ids stripped; BOS prepended to the instruction only if the tokenizer has one) and joined;
no truncation. Generation starts after "### Response:\\n" with the L SID tokens, then the
tail MiniOneRec's trie requires after every SID: the "\\n" piece(s) and EOS.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Optional, Sequence

import numpy as np
import tokenizers

from vstar_jax.data import sid_strings
from vstar_jax.model import causal_lm

# Every MiniOneRec prompt opens with HEADER, then its task's question and a blank line.
HEADER = ('Below is an instruction that describes a task, paired with an input that provides '
          'further context. Write a response that appropriately completes the request. \n\n'
          '### Instruction:\n')
INSTRUCTION = HEADER + 'Can you predict the next possible item that the user may expect?\n\n'
RESPONSE_PREFIX = '### Response:\n'
_EVAL_USER = ('### User Input: \nCan you predict the next possible item the user may expect, '
              'given the following chronological interaction history: ')
_TRAIN_USER = '### User Input: \nThe user has interacted with items '
_TRAIN_USER_END = (' in chronological order. Can you predict the next possible item that the user '
                   'may expect?')
PAD = -1

TOKENIZER_FILE = 'tokenizer.json'
TOKENIZER_CONFIG_FILE = 'tokenizer_config.json'
SPECIAL_TOKENS_MAP_FILE = 'special_tokens_map.json'


@dataclasses.dataclass(frozen=True, eq=False)
class SidTokenizer:
  """A checkpoint's tokenizer with the special-token ids transformers resolves for it.

  Attributes:
    tokenizer: the `tokenizers.Tokenizer` of tokenizer.json (with any added SID tokens).
    bos_id: BOS id, None where the tokenizer has none (Qwen2).
    eos_id: EOS id (ends every SID response; MiniOneRec also pads with it).
    config: tokenizer_config.json's contents ({} if absent), written back by export.
  """
  tokenizer: tokenizers.Tokenizer
  bos_id: Optional[int]
  eos_id: int
  config: dict

  def __len__(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def token_id(self, token: str) -> Optional[int]:
    return self.tokenizer.token_to_id(token)

  @property
  def eos_token(self) -> str:
    return self.tokenizer.id_to_token(self.eos_id)


def _read_json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text(encoding='utf-8'))
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: line {e.lineno}: invalid JSON ({e.msg})') from None


def _token_content(value) -> Optional[str]:
  """A special-token entry (tokenizer_config / special_tokens_map): str, {'content': ..} or null."""
  if isinstance(value, dict):
    return value.get('content')
  return value


def load_tokenizer(path) -> SidTokenizer:
  """The tokenizer of a checkpoint folder, BOS / EOS resolved as transformers' AutoTokenizer does.

  transformers reads bos_token / eos_token from tokenizer_config.json and, only for
  configs without `added_tokens_decoder` (the legacy layout), lets special_tokens_map.json
  override them; generation_config.json does not enter (MiniOneRec passes
  tokenizer.eos_token_id explicitly).
  """
  path = pathlib.Path(path)
  file = path / TOKENIZER_FILE
  if not file.is_file():
    raise ValueError(f'{path}: no {TOKENIZER_FILE} (a fast tokenizer file is required)')
  try:
    tokenizer = tokenizers.Tokenizer.from_file(str(file))
  except Exception as e:  # the Rust loader raises plain Exceptions
    raise ValueError(f'{file}: not a tokenizers file ({e})') from None
  config = _read_json(path / TOKENIZER_CONFIG_FILE) if (path / TOKENIZER_CONFIG_FILE).is_file() else {}
  special = dict(config)
  if 'added_tokens_decoder' not in config and (path / SPECIAL_TOKENS_MAP_FILE).is_file():
    special.update(_read_json(path / SPECIAL_TOKENS_MAP_FILE))
  ids = {}
  for name in ('bos_token', 'eos_token'):
    content = _token_content(special.get(name))
    ids[name] = None if content is None else tokenizer.token_to_id(content)
    if content is not None and ids[name] is None:
      raise ValueError(f'{path}: {name} {content!r} is not a token of {TOKENIZER_FILE}')
  if ids['eos_token'] is None:
    raise ValueError(f'{path}: no eos_token in {TOKENIZER_CONFIG_FILE} or '
                     f'{SPECIAL_TOKENS_MAP_FILE} (every SID response ends with EOS)')
  return SidTokenizer(tokenizer=tokenizer, bos_id=ids['bos_token'], eos_id=ids['eos_token'],
                      config=config)


def sid_token_strings(item_codes: np.ndarray) -> list[str]:
  """The catalogue's SID token strings, [I, L] codes -> sorted set of '<a_12>' ... (MiniOneRec's)."""
  codes = np.asarray(item_codes)
  return sorted({f'<{sid_strings.LEVEL_LETTERS[level]}_{int(c)}>'
                 for level in range(codes.shape[1]) for c in np.unique(codes[:, level])})


def add_tokens(tok: SidTokenizer, strings: Sequence[str]) -> SidTokenizer:
  """A copy of tok with `strings` added as ordinary tokens, as transformers' add_tokens does."""
  if all(tok.token_id(s) is not None for s in strings):
    return tok
  tokenizer = tokenizers.Tokenizer.from_str(tok.tokenizer.to_str())
  tokenizer.add_tokens(list(strings))
  return dataclasses.replace(tok, tokenizer=tokenizer)


def grow_rows(matrix: np.ndarray, num_rows: int) -> np.ndarray:
  """matrix [V0, D] -> [num_rows, D]: rows kept, each new row exactly the mean of the V0 old rows.

  transformers' resize_token_embeddings(mean_resizing=True), which MiniOneRec runs, draws each
  new row from N(mean, 1e-9 * Cov(old rows)): within ~3e-5 row-std of the mean but random.
  Using the mean itself keeps the extension deterministic.
  """
  matrix = np.asarray(matrix, np.float32)
  extra = num_rows - matrix.shape[0]
  if extra <= 0:
    return matrix
  mean = matrix.astype(np.float64).mean(axis=0).astype(np.float32)
  return np.concatenate([matrix, np.broadcast_to(mean, (extra, matrix.shape[1]))])


def extend_model(params, cfg: causal_lm.LmConfig, tok: SidTokenizer, item_codes: np.ndarray):
  """Adds the catalogue's SID tokens to tokenizer and model, MiniOneRec's way -> (params, cfg, tok).

  Missing tokens get ids len(tok), len(tok)+1, ... in sorted order; the input embedding and
  (untied) output rows grow to len(tokenizer) where that exceeds cfg.vocab_size: existing rows
  (a checkpoint's padding rows beyond its tokenizer included) are kept, new rows are the mean
  of the old ones (grow_rows). A tokenizer that holds every token already changes nothing.
  """
  tok = add_tokens(tok, sid_token_strings(item_codes))
  rows = len(tok)
  if rows <= cfg.vocab_size:
    return params, cfg, tok
  params = dict(params)
  params['embed_tokens'] = {'embedding': grow_rows(params['embed_tokens']['embedding'], rows)}
  if not cfg.tie_word_embeddings:
    params['lm_head'] = {'kernel': grow_rows(np.asarray(params['lm_head']['kernel']).T, rows).T}
  return params, dataclasses.replace(cfg, vocab_size=rows), tok


def sid_token_table(tok: SidTokenizer, num_levels: int, num_codes: int) -> np.ndarray:
  """[L, K] int32 token id of code k at level l ('<a_k>', '<b_k>', ..), -1 where there is none."""
  table = np.full((num_levels, num_codes), -1, np.int32)
  for level in range(num_levels):
    for code in range(num_codes):
      token = tok.token_id(f'<{sid_strings.LEVEL_LETTERS[level]}_{code}>')
      if token is not None:
        table[level, code] = token
  return table


def tail_tokens(tok: SidTokenizer, sids: Sequence[str], table: np.ndarray) -> tuple[int, ...]:
  """The tokens MiniOneRec's trie requires after every SID: those after the SID in
  "### Response:\\n" + SID + "\\n" (evaluate.py's trie text), then EOS.

  Args:
    tok: the tokenizer holding the SID tokens.
    sids: the catalogue's SID strings.
    table: sid_token_table(tok, L, K).

  Raises ValueError where a SID does not tokenise to its L SID tokens, or the tail differs
  between SIDs.
  """
  num_levels, num_codes = table.shape
  tails = set()
  encodings = tok.tokenizer.encode_batch([RESPONSE_PREFIX + s + '\n' for s in sids])
  for sid, encoding in zip(sids, encodings):
    codes = sid_strings.parse_sid(sid, num_levels, num_codes)
    want = [int(table[level, c]) for level, c in enumerate(codes)]
    ids = encoding.ids
    starts = [i for i in range(len(ids) - num_levels + 1) if ids[i:i + num_levels] == want]
    if -1 in want or not starts:
      raise ValueError(f'SID {sid} does not tokenise to its {num_levels} SID tokens: add the '
                       f'catalogue\'s SID tokens to the tokenizer first (extend_model)')
    tails.add(tuple(ids[starts[0] + num_levels:]))
  if len(tails) != 1:
    raise ValueError(f'the tokens after a SID differ between SIDs: {sorted(tails)[:3]}')
  return tails.pop() + (tok.eos_id,)


def encode(tok: SidTokenizer, text: str, bos: bool, eos: bool) -> list[int]:
  """MiniOneRec's Tokenizer.encode: post-processed ids, leading BOS / trailing EOS stripped, then
  BOS prepended (if bos and the tokenizer has one) and EOS appended (if eos)."""
  return encode_batch(tok, [text], bos, eos)[0]


def encode_batch(tok: SidTokenizer, texts: Sequence[str], bos: bool, eos: bool) -> list[list[int]]:
  """encode of each text, the tokenizer called once (its Rust batch encoder)."""
  out = []
  for encoding in tok.tokenizer.encode_batch(list(texts), add_special_tokens=True):
    ids = encoding.ids
    while ids and tok.bos_id is not None and ids[0] == tok.bos_id:
      ids = ids[1:]
    while ids and ids[-1] == tok.eos_id:
      ids = ids[:-1]
    if bos and tok.bos_id is not None:
      ids = [tok.bos_id] + ids
    out.append(ids + [tok.eos_id] if eos else ids)
  return out


def eval_prompt(tok: SidTokenizer, history_sids: Sequence[str]) -> list[int]:
  """MiniOneRec's evaluation prompt ids (EvalSidDataset) for a history of SID strings, oldest first."""
  user = _EVAL_USER + ', '.join(history_sids) + '\n\n' + RESPONSE_PREFIX
  return encode(tok, INSTRUCTION, bos=True, eos=False) + encode(tok, user, bos=False, eos=False)


def train_prompt(tok: SidTokenizer, history_sids: Sequence[str]) -> list[int]:
  """MiniOneRec's SFT prompt ids (SidSFTDataset: a differently worded user part) for a history."""
  user = _TRAIN_USER + ', '.join(history_sids) + _TRAIN_USER_END + '\n\n' + RESPONSE_PREFIX
  return encode(tok, INSTRUCTION, bos=True, eos=False) + encode(tok, user, bos=False, eos=False)


def pad_left(prompts: Sequence[Sequence[int]], length: Optional[int] = None) -> np.ndarray:
  """Prompts -> [N, P] int32 left padded with -1 (P = the longest, or `length`; never truncated)."""
  longest = max(len(p) for p in prompts)
  length = longest if length is None else length
  if longest > length:
    raise ValueError(f'a prompt has {longest} tokens, more than length={length}')
  out = np.full((len(prompts), length), PAD, np.int32)
  for row, prompt in enumerate(prompts):
    out[row, length - len(prompt):] = prompt
  return out


def history_sid_strings(history_codes: np.ndarray) -> list[list[str]]:
  """[N, T, L] history codes (-1 rows = left padding) -> per row, its SID strings oldest first."""
  return [[sid_strings.format_sid(item) for item in row if item[0] >= 0]
          for row in np.asarray(history_codes).tolist()]

