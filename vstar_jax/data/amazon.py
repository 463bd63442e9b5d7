"""Loader and validator for the Amazon datasets in MiniOneRec's published format.

Every problem in the input is reported with the file, the line and the field so
the user can fix the data; `on_bad_row='skip'` instead drops malformed rows and
logs how many (the split files only: catalogue files must be clean).
"""

from __future__ import annotations

import ast
import codecs
import csv
import io
import json
import os
import pathlib

from absl import logging
import numpy as np

from vstar_jax.data import types
from vstar_jax.data import sid_strings

DATASETS = {
    'industrial': 'Industrial_and_Scientific',
    'office': 'Office_Products',
}
SPLITS = ('train', 'valid', 'test')
COLUMNS = ('user_id', 'history_item_title', 'item_title', 'history_item_id', 'item_id',
           'history_item_sid', 'item_sid')
NUM_CODES = 256
DATA_DIR_ENV = 'VSTAR_DATA_DIR'


class DataError(ValueError):
  """Malformed input data; the message names the file, line and field."""


def resolve_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path:
  """The data directory: the argument, else $VSTAR_DATA_DIR; must exist."""
  path = data_dir or os.environ.get(DATA_DIR_ENV)
  if not path:
    raise DataError(f'no data directory: set --config.data_dir or ${DATA_DIR_ENV} to the folder '
                    'holding train/ valid/ test/ info/ index/ (MiniOneRec layout)')
  path = pathlib.Path(path).expanduser()
  if not path.is_dir():
    raise DataError(f'data directory {path} does not exist')
  return path


def dataset_files(data_dir: pathlib.Path, name: str) -> dict[str, pathlib.Path]:
  """Paths of every file of one dataset (MiniOneRec's `data/Amazon/` layout)."""
  if name not in DATASETS:
    raise DataError(f'unknown dataset {name!r}; expected one of {sorted(DATASETS)}')
  full = DATASETS[name]
  stem = f'{full}_5_2016-10-2018-11'
  files = {split: data_dir / split / f'{stem}.csv' for split in SPLITS}
  files['info'] = data_dir / 'info' / f'{stem}.txt'
  files['index'] = data_dir / 'index' / f'{full}.index.json'
  files['items'] = data_dir / 'index' / f'{full}.item.json'
  files['embeddings'] = data_dir / 'index' / f'{full}.emb-minilm-td.npy'
  return files


def read_text(path: pathlib.Path) -> str:
  """File contents as UTF-8, a leading BOM dropped (spreadsheet exports write one); a missing
  file or bad bytes raise DataError naming the line."""
  if not path.is_file():
    raise DataError(f'missing file: {path}')
  raw = path.read_bytes()
  raw = raw[len(codecs.BOM_UTF8):] if raw.startswith(codecs.BOM_UTF8) else raw
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b'\n') + 1
    raise DataError(f'{path}: line {line}: bytes {raw[e.start:e.end]!r} are not valid UTF-8 '
                    f'(byte offset {e.start})') from None


def load_index(path: pathlib.Path, num_codes: int = NUM_CODES) -> np.ndarray:
  """index.json {item_id: ['<a_X>', '<b_Y>', ...]} -> item_codes [I, L] int32."""
  try:
    index = json.loads(read_text(path))
  except json.JSONDecodeError as e:
    raise DataError(f'{path}: line {e.lineno}: invalid JSON ({e.msg})') from None
  if not isinstance(index, dict) or not index:
    raise DataError(f'{path}: expected a non-empty JSON object item_id -> list of SID tokens')
  ids = []
  for key in index:
    if not key.isdigit():
      raise DataError(f'{path}: key {key!r} is not an integer item id')
    ids.append(int(key))
  if sorted(ids) != list(range(len(ids))):
    raise DataError(f'{path}: item ids must be exactly 0..{len(ids) - 1}')
  rows = []
  num_levels = None
  for item in range(len(ids)):
    tokens = index[str(item)]
    try:
      if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ValueError('expected a list of SID token strings')
      codes = sid_strings.parse_sid_tokens(tokens, num_codes)
    except ValueError as e:
      raise DataError(f'{path}: item {item}: {e}') from None
    if num_levels is None:
      num_levels = len(codes)
    elif len(codes) != num_levels:
      raise DataError(f'{path}: item {item} has {len(codes)} codes, earlier items have {num_levels}')
    rows.append(codes)
  return np.asarray(rows, np.int32)


def load_info(path: pathlib.Path, item_sids: list[str]) -> np.ndarray:
  """info txt `SID<TAB>title<TAB>item_id` -> titles [I]; checks it agrees with index.json."""
  titles = [None] * len(item_sids)
  for line_no, line in enumerate(read_text(path).splitlines(), start=1):
    if not line.strip():
      continue
    fields = line.split('\t')
    if len(fields) != 3:
      raise DataError(f'{path}: line {line_no}: expected 3 tab-separated fields '
                      f'(SID, title, item_id), found {len(fields)}')
    sid, title, item = fields
    if not item.strip().isdigit() or int(item) >= len(item_sids):
      raise DataError(f'{path}: line {line_no}: field item_id {item!r} is not an item of the index '
                      f'(0..{len(item_sids) - 1})')
    item = int(item)
    if sid.strip() != item_sids[item]:
      raise DataError(f'{path}: line {line_no}: field SID {sid!r} disagrees with index.json, which '
                      f'gives item {item} the SID {item_sids[item]!r} (mismatched index/info)')
    titles[item] = title
  missing = [i for i, t in enumerate(titles) if t is None]
  if missing:
    raise DataError(f'{path}: {len(missing)} items of index.json have no line (first: item '
                    f'{missing[0]}); index and info are mismatched')
  return np.asarray(titles, dtype=object)


def _literal_list(text: str, kind: type, where: str) -> list:
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError, MemoryError, RecursionError):
    raise DataError(f'{where}: not a Python-literal list: {text[:80]!r}') from None
  if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
    raise DataError(f'{where}: expected a list of {kind.__name__}, got {text[:80]!r}')
  return value


def load_split(path: pathlib.Path, split: str, item_sids: list[str], max_history: int,
               on_bad_row: str = 'error') -> tuple[types.Split, np.ndarray]:
  """Parses one split CSV -> (Split, target SID strings [N]) with every row validated."""
  text = read_text(path)
  if not text.strip():
    raise DataError(f'{path}: file is empty (expected a header row {",".join(COLUMNS)})')
  reader = csv.reader(io.StringIO(text, newline=''))
  header = next(reader)
  missing = [c for c in COLUMNS if c not in header]
  if missing:
    raise DataError(f'{path}: line 1: missing column(s) {missing}; found {header}')
  col = {c: header.index(c) for c in COLUMNS}
  sid_to_items: dict[str, list[int]] = {}
  for item, sid in enumerate(item_sids):
    sid_to_items.setdefault(sid, []).append(item)
  num_items = len(item_sids)
  users, histories, lengths, targets, target_sids = [], [], [], [], []
  skipped = 0
  row_no = 0
  line_no = reader.line_num
  for row in reader:
    row_no += 1
    where_row = f'{path}: line {line_no + 1} (data row {row_no})'
    line_no = reader.line_num
    try:
      if len(row) != len(header):
        raise DataError(f'{where_row}: {len(row)} fields, header has {len(header)} '
                        '(truncated or unquoted row?)')
      field = lambda c: f'{where_row}, field {c}'  # pylint: disable=cell-var-from-loop
      hist_ids = _literal_list(row[col['history_item_id']], int, field('history_item_id'))
      hist_sids = _literal_list(row[col['history_item_sid']], str, field('history_item_sid'))
      if not hist_ids:
        raise DataError(f'{field("history_item_id")}: empty history')
      if len(hist_ids) > max_history:
        raise DataError(f'{field("history_item_id")}: history has {len(hist_ids)} items, more than '
                        f'max_history={max_history} (raise --config.data.max_history)')
      if len(hist_sids) != len(hist_ids):
        raise DataError(f'{field("history_item_sid")}: {len(hist_sids)} SIDs for '
                        f'{len(hist_ids)} history item ids')
      target_text = row[col['item_id']].strip()
      if not target_text.lstrip('-').isdigit():
        raise DataError(f'{field("item_id")}: {target_text!r} is not an integer item id')
      target = int(target_text)
      for name, item in [('history_item_id', i) for i in hist_ids] + [('item_id', target)]:
        if not 0 <= item < num_items:
          raise DataError(f'{field(name)}: unknown item id {item} (catalogue has 0..{num_items - 1})')
      target_sid = row[col['item_sid']].strip()
      for name, item, sid in ([('history_item_sid', i, s) for i, s in zip(hist_ids, hist_sids)] +
                              [('item_sid', target, target_sid)]):
        if sid not in sid_to_items:
          raise DataError(f'{field(name)}: SID {sid!r} is not in index.json')
        if item not in sid_to_items[sid]:
          raise DataError(f'{field(name)}: SID {sid!r} is not the SID of item {item} '
                          f'({item_sids[item]!r} in index.json)')
    except DataError as e:
      if on_bad_row != 'skip':
        raise
      skipped += 1
      logging.warning('skipping bad row: %s', e)
      continue
    users.append(row[col['user_id']])
    padded = [types.PAD] * (max_history - len(hist_ids)) + hist_ids
    histories.append(padded)
    lengths.append(len(hist_ids))
    targets.append(target)
    target_sids.append(target_sid)
  if skipped:
    logging.warning('%s: skipped %d malformed rows of %d', path, skipped, row_no)
  if not targets:
    raise DataError(f'{path}: no usable rows')
  split_data = types.Split(
      name=split,
      user_ids=np.asarray(users, dtype=object),
      history_items=np.asarray(histories, np.int32).reshape(-1, max_history),
      history_len=np.asarray(lengths, np.int32),
      target_item=np.asarray(targets, np.int32))
  return split_data, np.asarray(target_sids, dtype=object)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, max_history: int = 10,
                 on_bad_row: str = 'error', splits=SPLITS) -> types.Dataset:
  """Loads and validates one dataset (`industrial` | `office`) with its shipped SIDs."""
  if on_bad_row not in ('error', 'skip'):
    raise DataError(f'on_bad_row must be "error" or "skip", got {on_bad_row!r}')
  files = dataset_files(resolve_data_dir(data_dir), name)
  item_codes = load_index(files['index'])
  item_sids = sid_strings.format_sids(item_codes)
  titles = load_info(files['info'], item_sids)
  loaded = {s: load_split(files[s], s, item_sids, max_history, on_bad_row) for s in splits}
  return types.Dataset(
      name=name, item_codes=item_codes, num_codes=NUM_CODES, item_titles=titles,
      splits={s: v[0] for s, v in loaded.items()},
      target_sids={s: v[1] for s, v in loaded.items()})
