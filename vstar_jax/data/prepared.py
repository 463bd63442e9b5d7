"""A dataset made by `python -m vstar_jax.prepare`: MiniOneRec's layout, named DIR/.../NAME.*.

  DIR/train|valid|test/NAME.csv   the seven MiniOneRec columns
  DIR/info/NAME.txt               SID<TAB>title<TAB>item_id, one line per item
  DIR/index/NAME.item.json        {item_id: {title, description, brand, categories}}
  DIR/index/NAME.index.json       {item_id: [SID tokens]}, written by --config.mode=sid
  DIR/index/NAME.emb-<encoder>.npy item text embeddings [I, E], row i = item i
  DIR/index/NAME.user2id|item2id  raw id<TAB>number, to map results back to the raw log
  DIR/NAME.stats.json             what `prepare` kept and dropped

Before the SID stage every SID field is the empty string: `item_sid` is empty,
`history_item_sid` is a list of empty strings (one per history item) and the info lines start
with a tab. So the files always have the shape the MiniOneRec readers expect, and the project's
validator checks them with every item's SID taken as ''.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from vstar_jax.data import amazon
from vstar_jax.data import sid_strings
from vstar_jax.data import types

ENCODERS = ('minilm-td', 'tfidf-svd')  # embedding files looked for, in this order


def files(data_dir: str | os.PathLike, name: str) -> dict[str, pathlib.Path]:
  """Every path of the prepared dataset NAME under data_dir."""
  root = pathlib.Path(data_dir)
  paths = {split: root / split / f'{name}.csv' for split in amazon.SPLITS}
  paths.update(info=root / 'info' / f'{name}.txt', index=root / 'index' / f'{name}.index.json',
               items=root / 'index' / f'{name}.item.json',
               user2id=root / 'index' / f'{name}.user2id', item2id=root / 'index' / f'{name}.item2id',
               stats=root / f'{name}.stats.json')
  for encoder in ENCODERS:
    paths[f'emb-{encoder}'] = root / 'index' / f'{name}.emb-{encoder}.npy'
  return paths


def embedding_file(data_dir: str | os.PathLike, name: str) -> pathlib.Path | None:
  """The dataset's item embeddings (sentence encoder first, else TF-IDF + SVD), or None."""
  paths = files(data_dir, name)
  for encoder in ENCODERS:
    if paths[f'emb-{encoder}'].is_file():
      return paths[f'emb-{encoder}']
  return None


def num_items(data_dir: str | os.PathLike, name: str) -> int:
  """Items of the catalogue (lines of the info file)."""
  path = files(data_dir, name)['info']
  return sum(1 for line in amazon.read_text(path).splitlines() if line.strip())


def load(data_dir: str | os.PathLike, name: str, *, max_history: int = 10,
         num_codes: int = amazon.NUM_CODES, on_bad_row: str = 'error', require_sids: bool = True,
         splits=amazon.SPLITS) -> types.Dataset:
  """Loads and validates a prepared dataset with its SIDs (item_codes [I, 0] if it has none yet).

  require_sids: without index.json, raise DataError (training needs SIDs) instead of loading
  the SID-less files the prepare step wrote.
  """
  paths = files(amazon.resolve_data_dir(data_dir), name)
  if paths['index'].is_file():
    item_codes = amazon.load_index(paths['index'], num_codes)
    item_sids = sid_strings.format_sids(item_codes)
  elif require_sids:
    raise amazon.DataError(f'{paths["index"]} does not exist: the prepared dataset {name} has no '
                           'SIDs yet; run --config.mode=sid first')
  else:
    count = num_items(data_dir, name)
    item_codes, item_sids = np.zeros((count, 0), np.int32), [''] * count
  titles = amazon.load_info(paths['info'], item_sids)
  loaded = {s: amazon.load_split(paths[s], s, item_sids, max_history, on_bad_row) for s in splits}
  return types.Dataset(
      name=name, item_codes=item_codes, num_codes=num_codes, item_titles=titles,
      splits={s: v[0] for s, v in loaded.items()},
      target_sids={s: v[1] for s, v in loaded.items()})
