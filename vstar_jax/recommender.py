"""Top-k items for users' histories from a trained workdir, and the CLI's recommend mode.

  rec = vstar_jax.Recommender.load('workdirs/synthetic')
  rec.recommend([[12, 55, 301], [7]], k=10)
  # -> [[{'item_id': 40, 'title': 'item 40', 'score': -1.93}, ... 10 items], [...]]

The model, trie and catalogue are loaded once. Histories are decoded in batches padded to a
power-of-two bucket, so the search compiles once per (bucket, beams) and repeated calls reuse
it. A SID shared by several items stands for all of them: its items fill consecutive slots
(same score). The top-k are k distinct items, distinct by id and by title: the catalogues list
some products twice under one SID (11 of the 15 collision groups of Industrial, 15 of 15 of
Office hold a repeated title), shown once.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vstar_jax import distributed
from vstar_jax import files
from vstar_jax import parallel
from vstar_jax import pipeline
from vstar_jax import trained
from vstar_jax import workdir as workdir_lib
from vstar_jax.data import types
from vstar_jax.decode import search
from vstar_jax.eval import evaluate
from vstar_jax.model import backbone
from vstar_jax.sid import trie as trie_lib

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)  # batch sizes the search is compiled for


class Recommender:
  """A trained decoder with its catalogue: `recommend(histories, k)` over item ids."""

  def __init__(self, params, cfg, dataset: types.Dataset,
               config: ml_collections.ConfigDict, stage: str = ''):
    self.config, self.dataset, self.stage, self.cfg = config, dataset, stage, cfg
    self._params = jax.device_put(parallel.to_host(params))  # one device: a serving process
    self._trie = jax.device_put(trie_lib.build_trie(dataset.item_codes, dataset.num_codes))
    self._items_of_sid: dict[tuple, list[int]] = {}
    for item, codes in enumerate(dataset.item_codes.tolist()):
      self._items_of_sid.setdefault(tuple(codes), []).append(item)

  @classmethod
  def load(cls, workdir: str | pathlib.Path, config: ml_collections.ConfigDict | None = None):
    """W's newest trained model (rl if it has one, else sft) under the config W recorded."""
    workdir = pathlib.Path(workdir)
    if config is None:
      config = workdir_lib.training_config(workdir)
      if config is None:
        raise FileNotFoundError(f'{workdir} records no training config ({workdir_lib.CONFIG_FILE}): '
                                'train a model there with --config.mode=sft')
      config.mode = 'recommend'
    dataset = pipeline.load_dataset(config, workdir)
    kept = trained.restore_newest(config, workdir, dataset)
    logging.info('recommender: the %s model of %s (step %d), %d items', kept.stage, workdir,
                 kept.step, dataset.num_items)
    return cls(kept.params, kept.cfg, dataset, config, kept.stage)

  def title(self, item: int) -> str:
    return str(self.dataset.item_titles[item])

  def recommend(self, histories, k: int = 10, decoder: str = 'beam') -> list[list[dict]]:
    """Per history (a list of item ids, oldest first), its top-k distinct items, best first:
    [{'item_id': int, 'title': str, 'score': float (the SID's sum of log-probs)}]."""
    if k < 1:
      raise ValueError(f'k must be >= 1, got {k}')
    if decoder not in evaluate.DECODERS:
      raise ValueError(f'decoder must be one of {evaluate.DECODERS}, got {decoder!r}')
    rows = self._history_rows(histories)
    num_sids = len(self._items_of_sid)
    beams = min(k, num_sids)  # each SID adds >= 1 item unless its titles were all shown already
    while True:
      codes, scores = self._decode(rows, beams, decoder)
      top = [self._top_items(c, s, k) for c, s in zip(codes.tolist(), scores.tolist())]
      if beams == num_sids or all(len(items) == k for items in top):
        return top
      beams = min(2 * beams, num_sids)

  def _history_rows(self, histories) -> np.ndarray:
    """Item-id histories -> [B, T] int32, left-padded, the last T items kept; clear errors."""
    if isinstance(histories, (str, bytes)) or not hasattr(histories, '__iter__'):
      raise ValueError(f'histories must be a list of item-id lists, e.g. [[12, 55, 301]]; got '
                       f'{type(histories).__name__}')
    t, num_items = self.dataset.max_history, self.dataset.num_items
    rows = []
    for index, history in enumerate(histories):
      if not hasattr(history, '__iter__') or isinstance(history, (str, bytes)):
        raise ValueError(f'history {index} is {history!r}, not a list of item ids (histories is a '
                         'list of histories, e.g. [[12, 55, 301]])')
      items = list(history)
      if not items:
        raise ValueError(f'history {index} is empty: a recommendation needs at least one item id')
      for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
          raise ValueError(f'history {index}: item id {item!r} is not an integer')
        if not 0 <= item < num_items:
          raise ValueError(f'history {index}: unknown item id {item} (the catalogue has ids '
                           f'0..{num_items - 1})')
      items = [int(i) for i in items[-t:]]
      rows.append([types.PAD] * (t - len(items)) + items)
    if not rows:
      raise ValueError('no histories given')
    return np.asarray(rows, np.int32)

  def _decode(self, rows: np.ndarray, beams: int, decoder: str):
    """rows [B, T] -> codes [B, W, L], scores [B, W], in bucket-padded batches."""
    history = backbone.item_inputs(self.cfg, self.dataset, rows)  # [B, T, L] codes or [B, P] prompts
    out_codes, out_scores = [], []
    for start in range(0, len(history), BUCKETS[-1]):
      chunk = history[start:start + BUCKETS[-1]]
      size = next(b for b in BUCKETS if b >= len(chunk))
      padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
      got_codes, got_scores = self._search(padded, beams, decoder, start)
      out_codes.append(np.asarray(got_codes)[:len(chunk)])
      out_scores.append(np.asarray(got_scores)[:len(chunk)])
    return np.concatenate(out_codes), np.concatenate(out_scores)

  def _search(self, history: np.ndarray, beams: int, decoder: str, first: int):
    if decoder == 'beam':
      return search.beam_search(self._params, self.cfg, self._trie, history, beams)
    vcfg = dataclasses.replace(evaluate.ved_config(self.config), group_size=beams)
    keys = search.user_keys(jax.random.key(self.config.seed), jnp.arange(history.shape[0]) + first)
    out = search.ved_search(self._params, self.cfg, self._trie, history, keys, vcfg)
    return out.candidates, out.scores

  def _top_items(self, codes: list, scores: list, k: int) -> list[dict]:
    """The first k items of distinct titles under the ranked SIDs codes [W][L] (-1: no SID there)."""
    picked, titles = [], set()
    for sid, score in zip(codes, scores):
      if min(sid) < 0:
        break
      for item in self._items_of_sid[tuple(sid)]:
        title = self.title(item)
        if title.strip().casefold() not in titles and len(picked) < k:
          titles.add(title.strip().casefold())
          picked.append({'item_id': item, 'title': title, 'score': float(score)})
    return picked


def parse_history(text: str) -> list[int]:
  """'12,55,301' -> [12, 55, 301] (--config.recommend.history)."""
  try:
    return [int(x) for x in text.split(',') if x.strip()]
  except ValueError:
    raise ValueError(f'--config.recommend.history: expected comma-separated item ids, got '
                     f'{text!r}') from None


def format_table(rec: Recommender, history: list[int], items: list[dict], heading: str) -> str:
  """The history's titles (left) beside the recommendations (right), as plain text."""
  left = ['history, oldest first'] + [f'{i:>7}  {rec.title(i)[:34]}' for i in history]
  right = [f'top {len(items)}'] + [f'{n:>3}. {r["item_id"]:>7}  {r["title"][:38]:<38} {r["score"]:8.3f}'
                                   for n, r in enumerate(items, start=1)]
  rows = [f'{a:<46}{b}'.rstrip() for a, b in itertools.zip_longest(left, right, fillvalue='')]
  return '\n'.join([f'{heading} ({rec.stage} model; score = the SID\'s sum of log-probs)', *rows])


def run_recommend(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                  out: pathlib.Path | None = None) -> list:
  """The recommend mode: top-N (recommend.top_n) for recommend.history, or for the first
  recommend.num_rows rows of eval.split -> out/recommend.json and a table on stdout."""
  rec = Recommender.load(workdir, config)
  if config.recommend.history:
    histories = [parse_history(config.recommend.history)]
    headings = ['--config.recommend.history']
    if not histories[0]:
      raise ValueError(f'--config.recommend.history={config.recommend.history!r} holds no item id')
  else:
    split = rec.dataset.splits[config.eval.split]
    rows = range(min(config.recommend.num_rows, len(split)))
    histories = [[int(i) for i in split.history_items[r] if i >= 0] for r in rows]
    headings = [f'{config.eval.split} row {r} (user {split.user_ids[r]})' for r in rows]
    print(f'no --config.recommend.history given: the first {len(histories)} rows of the '
          f'{config.eval.split} split')
  try:
    results = rec.recommend(histories, k=config.recommend.top_n)
  except ValueError as e:
    raise ValueError(f'--config.recommend.history: {e}' if config.recommend.history else str(e)) from None
  records = [{'history': h, 'recommendations': [
      {'item_id': r['item_id'], 'title': r['title'], 'log_prob': r['score']} for r in items]}
             for h, items in zip(histories, results)]
  if not distributed.is_writer():
    return records
  path = pathlib.Path(out or workdir) / 'recommend.json'
  files.write_json_atomic(path, records)
  print('\n\n'.join(format_table(rec, h, items, heading)
                    for h, items, heading in zip(histories, results, headings)))
  logging.info('wrote %s', path)
  return records
