"""Test-split evaluation of a trained policy -> W/eval/<stage>_<split>/ (design §3, §7).

The contract is MiniOneRec's: constrained beam search with eval.num_beams (50) beams, exact
SID match, HR@K / NDCG@K. With --config.eval.decoder=ved the candidates come from VED
instead (config.ved with budget multiplier eval.ved_multiplier, group size num_beams),
written to W/eval/<stage>_ved_<split>/, so VED and beam can be compared on the same users
at equal forwards (and, with the wall times recorded, at equal time).
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

from absl import logging
import ml_collections
import numpy as np

from vstar_jax.data import batching
from vstar_jax.data import types
from vstar_jax.decode import search
from vstar_jax.decode import ved as ved_lib
from vstar_jax.eval import export
from vstar_jax.model import backbone
from vstar_jax.sid import trie as trie_lib

DECODERS = ('beam', 'ved')


def eval_dir(workdir: pathlib.Path, stage: str, split: str) -> pathlib.Path:
  return pathlib.Path(workdir) / 'eval' / f'{stage}_{split}'


def eval_rows(config: ml_collections.ConfigDict, num_rows: int) -> np.ndarray:
  """Row indices evaluated: all, or eval.max_rows evenly spaced ones in file order (split files
  are sorted by time, so the first rows alone would be the easiest; as validation does)."""
  return batching.validation_rows(num_rows, config.eval.max_rows)


def ved_config(config: ml_collections.ConfigDict) -> ved_lib.VedConfig:
  """The evaluation VED: config.ved with eval.ved_multiplier and eval.num_beams candidates."""
  return ved_lib.VedConfig.from_settings(config.ved.to_dict(), config.eval.num_beams,
                                         config.eval.ved_multiplier)


def beam_forwards(dataset: types.Dataset, width: int) -> int:
  """Live forwards of beam search: 1 + sum_{d < L} min(W, #depth-d prefixes of the catalogue)."""
  codes = dataset.item_codes.tolist()
  return 1 + sum(min(width, len({tuple(c[:d]) for c in codes})) for d in range(1, dataset.num_levels))


def evaluate_params(config, workdir, dataset: types.Dataset, params, cfg, stage: str,
                    extra=None) -> dict:
  """Evaluation of `params` on config.eval.split -> W/eval/<stage>[_ved]_<split>/."""
  split, e = config.eval.split, config.eval
  rows = eval_rows(config, len(dataset.splits[split]))
  trie = trie_lib.build_trie(dataset.item_codes, dataset.num_codes)
  history = backbone.inputs(cfg, dataset, split)[rows]
  start = time.time()
  if e.decoder == 'ved':
    vcfg = ved_config(config)
    codes, _, forwards = search.ved_search_split(params, cfg, trie, history, vcfg, e.batch_size)
    info = {'decoder': 'ved', 'ved': dataclasses.asdict(vcfg),
            'forwards_per_user': float(np.mean(forwards))}
    stage = f'{stage}_ved'
  else:
    codes, _ = search.beam_search_split(params, cfg, trie, history, e.num_beams, e.batch_size)
    info = {'decoder': 'beam', 'forwards_per_user': float(beam_forwards(dataset, e.num_beams))}
  wall = time.time() - start
  if not np.asarray(trie_lib.is_valid_sid(trie, np.maximum(codes, 0)) | (codes < 0).any(-1)).all():
    raise AssertionError(f'{info["decoder"]} produced a SID outside the trie')
  info.update({'eval_wall_s': wall, 'users_per_s': len(rows) / wall, 'num_beams': e.num_beams,
               'split': split, 'sid_source': config.sid.source})
  info.update(extra or {})
  result = export.evaluate_and_export(eval_dir(workdir, stage, split), codes,
                                      dataset.target_sids[split][rows],
                                      dataset.target_codes(split)[rows], dataset.item_codes, info)
  logging.info('%s on %s %s (%s, %d candidates): HR@10 %.4f NDCG@10 %.4f, %d invalid', stage,
               dataset.name, split, info['decoder'], e.num_beams, result.get('HR@10', np.nan),
               result.get('NDCG@10', np.nan), result['invalid'])
  return result
