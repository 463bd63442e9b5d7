"""Writes predictions.json (MiniOneRec's result format) and metrics.json for one evaluation."""

from __future__ import annotations

import pathlib

import numpy as np

from vstar_jax import distributed
from vstar_jax import files
from vstar_jax.data import sid_strings
from vstar_jax.eval import metrics as metrics_lib


def prediction_records(predictions, targets) -> list[dict]:
  """[{'predict': [SID strings], 'output': target SID}] in row order."""
  return [{'predict': list(p), 'output': t} for p, t in zip(predictions, targets)]


def evaluate_and_export(out_dir, pred_codes: np.ndarray, target_sids, target_codes: np.ndarray,
                        item_codes: np.ndarray, extra: dict | None = None) -> dict:
  """Scores predicted codes [N, W, L] against the targets and writes both JSON files.

  Rows whose slot holds a -1 code (fewer valid SIDs than slots) are written as
  empty strings, which count as invalid, as in MiniOneRec.
  """
  pred_codes = np.asarray(pred_codes)
  predictions = [[('' if min(r) < 0 else sid_strings.format_sid(r)) for r in user]
                 for user in pred_codes.tolist()]
  targets = [str(t) for t in target_sids]
  catalogue = set(sid_strings.format_sids(item_codes))
  result = metrics_lib.evaluate(predictions, targets, catalogue, pred_codes, target_codes)
  if extra:
    result.update(extra)
  if distributed.is_writer():  # every process scores; process 0 writes
    out_dir = pathlib.Path(out_dir)
    files.write_json_atomic(out_dir / 'predictions.json', prediction_records(predictions, targets))
    files.write_json_atomic(out_dir / 'metrics.json', result)
  return result
