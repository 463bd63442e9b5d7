"""SID strings `<a_12><b_80><c_3>` <-> code arrays (MiniOneRec's textual form)."""

from __future__ import annotations

import re

import numpy as np

LEVEL_LETTERS = 'abcdefghij'
_TOKEN = re.compile(r'<([a-j])_(\d+)>')


def format_sid(codes) -> str:
  """[L] ints -> '<a_X><b_Y>...'."""
  return ''.join(f'<{LEVEL_LETTERS[l]}_{int(c)}>' for l, c in enumerate(codes))


def format_sids(codes: np.ndarray) -> list[str]:
  """[N, L] ints -> N SID strings."""
  return [format_sid(row) for row in np.asarray(codes).tolist()]


def index_json(codes: np.ndarray) -> dict[str, list[str]]:
  """codes [I, L] -> MiniOneRec's index {"0": ["<a_X>", "<b_Y>", ...], ...} in item-id order."""
  return {str(item): [f'<{LEVEL_LETTERS[level]}_{c}>' for level, c in enumerate(row)]
          for item, row in enumerate(np.asarray(codes).tolist())}


def parse_sid(text: str, num_levels: int, num_codes: int) -> list[int]:
  """'<a_X><b_Y><c_Z>' -> [X, Y, Z]; raises ValueError saying what is wrong."""
  tokens = _TOKEN.findall(text)
  if ''.join(f'<{a}_{b}>' for a, b in tokens) != text.strip():
    raise ValueError(f'not a SID string of <letter_number> tokens: {text!r}')
  if len(tokens) != num_levels:
    raise ValueError(f'SID {text!r} has {len(tokens)} codes, expected {num_levels}')
  codes = []
  for level, (letter, number) in enumerate(tokens):
    if letter != LEVEL_LETTERS[level]:
      raise ValueError(f'SID {text!r}: code {level + 1} is <{letter}_..>, expected <{LEVEL_LETTERS[level]}_..>')
    if not 0 <= int(number) < num_codes:
      raise ValueError(f'SID {text!r}: code {number} outside [0, {num_codes})')
    codes.append(int(number))
  return codes


def parse_sid_tokens(tokens: list[str], num_codes: int) -> list[int]:
  """['<a_X>', '<b_Y>', ...] (index.json form) -> [X, Y, ...]."""
  return parse_sid(''.join(tokens), len(tokens), num_codes)
