"""One prepare run: read -> title rules -> windowed k-core -> samples -> files, stats, embeddings."""

from __future__ import annotations

import json
import pathlib
import time

from absl import logging
import numpy as np

from vstar_jax import files
from vstar_jax.data.amazon import DataError
from vstar_jax.prepare import embed
from vstar_jax.prepare import kcore
from vstar_jax.prepare import layout
from vstar_jax.prepare import samples as samples_lib
from vstar_jax.prepare import sources
from vstar_jax.prepare import stats as stats_lib

SOURCES = ('amazon2018', 'amazon2023', 'csv')
# MiniOneRec's defaults (data/amazon18_data_process.py) for the 2018 release; the others default
# to the whole log, since their timestamps run past 2018.
DEFAULT_WINDOW = {'amazon2018': ('1996-10', '2018-11'), 'amazon2023': ('', ''), 'csv': ('', '')}


def build(source: str, out: pathlib.Path, name: str, *, reviews=None, meta=None,
          interactions=None, user_k: int = 5, item_k: int = 5, start: str | None = None,
          end: str | None = None, max_history: int = 10, encoder: str = 'auto',
          text_dim: int = 128, seed: int = 0) -> dict:
  """Prepares DIR=out/NAME.* from raw files; returns the stats (also in DIR/NAME.stats.json).

  start / end: 'YYYY-MM', '' for unbounded, None for the source's default window.
  """
  began = time.time()
  if source not in SOURCES:
    raise DataError(f'unknown source {source!r}; expected one of {SOURCES}')
  if not name or '/' in name:
    raise DataError(f'--name={name!r}: expected a file-name stem such as Beauty')
  for flag, k in (('user_k', user_k), ('item_k', item_k), ('max_history', max_history)):
    if k < 1:
      raise DataError(f'--{flag}={k}: must be >= 1')
  embed.check_encoder(encoder)
  default_start, default_end = DEFAULT_WINDOW[source]
  window = kcore.window(default_start if start is None else start,
                        default_end if end is None else end)
  if source == 'csv':
    if not interactions:
      raise DataError('csv needs --interactions=FILE (columns user,item,timestamp)')
  elif not reviews or not meta:
    raise DataError(f'{source} needs --reviews=FILE and --meta=FILE (JSON lines, plain or .gz)')
  log, catalogue = sources.read(source, reviews=reviews, meta=meta, interactions=interactions)

  titled = np.array([n in catalogue.titles for n in log.item_names], bool)  # [items]
  eligible = window.contains(log.time) & titled[log.item]
  kept, passes = kcore.k_core(log.user, log.item, eligible, user_k, item_k)
  for p, counts in enumerate(passes):
    logging.info('k-core pass %d: %d users, %d items, %d interactions', p + 1, counts.users,
                 counts.items, counts.interactions)
  if not kept.any():
    raise DataError(f'{log.path}: nothing is left after k-core: no user has >= {user_k} '
                    f'interactions with items of >= {item_k} interactions in {window.text} '
                    f'({int(eligible.sum())} interactions in the window with titled items, '
                    f'of {len(log.user)} read)')
  seq = samples_lib.sequences(log.user, log.item, log.time, kept)
  samples = samples_lib.windows(seq, max_history)
  empty = [s for s, (lo, hi) in samples.bounds.items() if hi <= lo]
  if empty:
    raise DataError(f'{log.path}: only {len(samples.target)} samples after k-core in '
                    f'{window.text}: the 8:1:1 split leaves {"/".join(empty)} empty')

  item_raw = [log.item_names[c] for c in seq.item_code.tolist()]
  user_raw = [log.user_names[c] for c in seq.user_code.tolist()]
  items = [{'title': catalogue.titles[raw], **catalogue.fields.get(
      raw, {'description': '', 'brand': '', 'categories': ''})} for raw in item_raw]
  paths = layout.write_dataset(out, name, samples.user, samples.history, samples.target,
                               samples.bounds, items, user_raw, item_raw)
  try:
    emb_path, kind = embed.write_embeddings(paths['items'], items, paths['items'].parent, name,
                                            encoder, text_dim, seed)
    embeddings = {'file': emb_path.name, 'encoder': kind}
  except embed.NoItemText as e:  # a log without item text: the dataset is still usable
    logging.warning('%s', e)
    embeddings = {'file': None, 'encoder': None, 'error': str(e)}
  stats = stats_lib.summary(
      source=source, files={'reviews': reviews, 'meta': meta, 'interactions': interactions},
      log=log, catalogue=catalogue, window=window, user_k=user_k, item_k=item_k,
      max_history=max_history, passes=passes, seq=seq, samples=samples)
  stats['embeddings'] = embeddings
  stats['wall_time_s'] = round(time.time() - began, 2)
  files.write_json_atomic(paths['stats'], stats)
  logging.info('wrote %s', out)
  print(stats_lib.describe(stats))
  print(json.dumps({'stats': str(paths['stats'])}))
  return stats
