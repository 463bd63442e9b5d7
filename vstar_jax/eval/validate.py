"""Validation during training: constrained beam search on (a subset of) a split, scored as in eval.

SFT keeps its best epoch and RL its best iteration by the NDCG@10 this returns, on evenly
spaced rows of the valid split (data.batching.validation_rows); test is never read here.
"""

from __future__ import annotations

import numpy as np

from vstar_jax import baselines
from vstar_jax.data import types
from vstar_jax.decode import search
from vstar_jax.eval import metrics as metrics_lib
from vstar_jax.model import backbone
from vstar_jax.sid import trie as trie_lib

BEST_METRIC = 'valid_NDCG@10'


def beam_eval(params, cfg, trie: trie_lib.Trie, dataset: types.Dataset,
              split: str, rows: np.ndarray, num_beams: int, batch_size: int):
  """Constrained beam search on `rows` of `split` -> (pred codes [N, W, L], metrics)."""
  codes, _ = search.beam_search_split(params, cfg, trie, backbone.inputs(cfg, dataset, split)[rows],
                                      num_beams, batch_size)
  return codes, scores(codes, dataset.target_codes(split)[rows], num_beams)


def scores(codes: np.ndarray, target: np.ndarray, num_beams: int) -> dict:
  """HR@K / NDCG@K and per-level hits of predicted codes [N, W, L] against targets [N, L]."""
  match = (codes == target[:, None, :]).all(-1)
  ranks = np.where(match.any(1), match.argmax(1), metrics_lib.NO_HIT)
  out = metrics_lib.hr_ndcg(ranks, num_beams)
  out.update(metrics_lib.level_hits(codes, target))
  return out


def validation_metrics(params, cfg, trie, dataset, split, rows, num_beams, batch_size) -> dict:
  """beam_eval's metrics with a 'valid_' prefix (the keys metrics.jsonl and checkpoints use)."""
  _, out = beam_eval(params, cfg, trie, dataset, split, rows, num_beams, batch_size)
  return {f'valid_{k}': v for k, v in out.items()}


def baseline_metrics(dataset: types.Dataset, split: str, rows: np.ndarray, num_beams: int) -> dict:
  """validation_metrics of each reference baseline on the same rows: {name: {'valid_*': value}}."""
  queries = dataset.splits[split].subset(rows)
  target = dataset.target_codes(split)[rows]
  out = {}
  for name, recommend in baselines.BASELINES.items():
    codes = recommend(dataset.splits['train'], queries, dataset.item_codes, num_beams)
    out[name] = {f'valid_{k}': v for k, v in scores(codes, target, num_beams).items()}
  return out
