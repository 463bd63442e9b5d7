"""The stages behind each CLI mode, wired from the config (design §8)."""

from __future__ import annotations

import pathlib
import time

from absl import logging
import ml_collections
import numpy as np

from vstar_jax import baselines
from vstar_jax.data import loading
from vstar_jax.eval import export
from vstar_jax.sid import trie as trie_lib


def eval_dir(workdir: pathlib.Path, stage: str, split: str) -> pathlib.Path:
  return workdir / 'eval' / f'{stage}_{split}'


def eval_rows(config: ml_collections.ConfigDict, num_rows: int) -> np.ndarray:
  """Row indices evaluated: all, or the first eval.max_rows (kept in file order)."""
  limit = config.eval.max_rows or num_rows
  return np.arange(min(limit, num_rows))


def report_catalogue(dataset) -> None:
  groups = trie_lib.collision_groups(dataset.item_codes)
  logging.info('%s: %d items, %d SID collision groups (%d items share a SID)', dataset.name,
               dataset.num_items, len(groups), sum(len(g) for g in groups))


def run_baselines(config: ml_collections.ConfigDict, workdir: pathlib.Path, dataset=None) -> dict:
  """Most-popular and transition baselines -> W/eval/<name>_<split>/."""
  dataset = dataset or loading.load(config)
  report_catalogue(dataset)
  split = config.eval.split
  rows = eval_rows(config, len(dataset.splits[split]))
  queries = dataset.splits[split].subset(rows)
  results = {}
  for name in config.baseline.names:
    start = time.time()
    codes = baselines.BASELINES[name](dataset.splits['train'], queries, dataset.item_codes,
                                      config.eval.num_beams)
    results[name] = export.evaluate_and_export(
        eval_dir(workdir, name, split), codes, dataset.target_sids[split][rows],
        dataset.target_codes(split)[rows], dataset.item_codes)
    logging.info('%s on %s %s: HR@10 %.4f NDCG@10 %.4f (%.1fs)', name, dataset.name, split,
                 results[name].get('HR@10', float('nan')), results[name].get('NDCG@10', float('nan')),
                 time.time() - start)
  return results


STAGES = {'baseline': run_baselines}


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  if config.mode not in STAGES:
    raise NotImplementedError(f'mode {config.mode!r} is not available yet')
  STAGES[config.mode](config, workdir)
