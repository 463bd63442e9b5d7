"""Writes predictions.json (MiniOneRec's result format) and metrics.json for one evaluation."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

import numpy as np

from vstar_jax.eval import metrics as metrics_lib
from vstar_jax.sid import sid_strings


def write_json_atomic(path: pathlib.Path, obj) -> None:
  """Writes JSON through a temp file + rename so a crash never leaves a partial file."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'w') as f:
      json.dump(obj, f, indent=1)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


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
  out_dir = pathlib.Path(out_dir)
  write_json_atomic(out_dir / 'predictions.json', prediction_records(predictions, targets))
  write_json_atomic(out_dir / 'metrics.json', result)
  return result
