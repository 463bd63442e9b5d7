"""Writes learned SIDs into a prepared dataset: index/NAME.index.json, the CSVs' SID columns, info.

Every new file is written to a temp file first; only when all of them are written are they renamed
over the old ones (index.json last). A failure before that leaves the dataset as it was; the
rows are rebuilt from the item ids, so running the SID stage again always repairs the files.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib

from absl import logging
import numpy as np

from vstar_jax.data import amazon
from vstar_jax.data import prepared
from vstar_jax.data import sid_strings
from vstar_jax.prepare import layout


def read_rows(path: pathlib.Path, num_items: int) -> tuple[list[str], list[list[int]], list[int]]:
  """A split CSV -> (user_id [N], history item ids [N][...], target item id [N])."""
  reader = csv.reader(io.StringIO(amazon.read_text(path), newline=''))
  header = next(reader, None)
  missing = [c for c in amazon.COLUMNS if c not in (header or [])]
  if missing:
    raise amazon.DataError(f'{path}: line 1: missing column(s) {missing}')
  col = {c: header.index(c) for c in amazon.COLUMNS}
  users, histories, targets = [], [], []
  line_no = reader.line_num
  for row in reader:
    where = f'{path}: line {line_no + 1}'
    line_no = reader.line_num
    try:
      history = json.loads(row[col['history_item_id']])  # '[3, 0]': a list of ints is JSON too
      target = int(row[col['item_id']])
      if not isinstance(history, list) or not all(type(i) is int for i in history):
        raise ValueError
    except (ValueError, IndexError):
      raise amazon.DataError(f'{where}: fields history_item_id / item_id are not item ids') from None
    if not all(0 <= i < num_items for i in history + [target]):
      raise amazon.DataError(f'{where}: an item id outside 0..{num_items - 1}')
    users.append(row[col['user_id']])
    histories.append(history)
    targets.append(target)
  return users, histories, targets


def write_sids(data_dir: str | os.PathLike, name: str, codes: np.ndarray) -> None:
  """Fills dataset NAME's SIDs from codes [I, L] (row i = item i), atomically per file."""
  paths = prepared.files(data_dir, name)
  items = json.loads(amazon.read_text(paths['items']))
  titles = [items[str(i)]['title'] for i in range(len(items))]
  if len(codes) != len(titles):
    raise amazon.DataError(f'{len(codes)} SIDs for the {len(titles)} items of {paths["items"]}')
  sids = sid_strings.format_sids(codes)
  texts = {}
  for split in amazon.SPLITS:
    users, histories, targets = read_rows(paths[split], len(titles))
    texts[split] = layout.split_csv(users, histories, targets, titles, sids, f'SIDs into {split}')
  texts['info'] = layout.info_text(titles, sids)
  texts['index'] = json.dumps(sid_strings.index_json(codes), indent=1)
  staged = {}
  try:
    for key, text in texts.items():
      staged[key] = layout.stage_text(paths[key], text)
  except BaseException:
    for tmp in staged.values():
      tmp.unlink()
    raise
  for key in (*amazon.SPLITS, 'info', 'index'):
    layout.commit_text_atomic(staged[key], paths[key])
  logging.info('wrote the SIDs of %d items into %s (index, %s, info)', len(titles),
               pathlib.Path(data_dir), '/'.join(amazon.SPLITS))
