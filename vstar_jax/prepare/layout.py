"""Writes the MiniOneRec layout (see vstar_jax.data.prepared), every file atomically.

The CSV bytes are those of MiniOneRec's conversion (pandas `to_csv` of Python lists): list
columns are `str(list)`, quoting is minimal, lines end in '\\n', users are `A<number>`.
"""

from __future__ import annotations

import csv
import io
import os
import pathlib
import tempfile

import numpy as np

from vstar_jax import files
from vstar_jax.data import amazon
from vstar_jax.data import prepared
from vstar_jax.data.types import PAD
from vstar_jax.prepare import progress
from vstar_jax.prepare import titles as titles_lib


def write_text_atomic(path: pathlib.Path, text: str) -> None:
  """Writes text through a temp file + rename: a crash leaves the old file or the new, never half."""
  commit_text_atomic(stage_text(path, text), path)


def stage_text(path: pathlib.Path, text: str) -> pathlib.Path:
  """Writes text to a temp file beside path and returns it (rename it with commit_text_atomic)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'w', encoding='utf-8', newline='') as f:
      f.write(text)
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
  except BaseException:
    os.unlink(tmp)
    raise
  return pathlib.Path(tmp)


def commit_text_atomic(tmp: pathlib.Path, path: pathlib.Path) -> None:
  os.replace(tmp, path)


def user_label(number: int) -> str:
  """The user_id column: MiniOneRec's 'A' + user number."""
  return f'A{number}'


def split_csv(users: list[str], histories: list[list[int]], targets: list[int], titles: list[str],
              sids: list[str], desc: str = 'writing') -> str:
  """The seven-column CSV text of one split; sids[i] is item i's SID string ('' before SIDs)."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(amazon.COLUMNS)
  bar = progress.Progress(desc, len(targets), ' rows')
  for row, (user, history, target) in enumerate(zip(users, histories, targets)):
    writer.writerow([user, str([titles[i] for i in history]), titles[target], str(history),
                     target, str([sids[i] for i in history]), sids[target]])
    if row % 50000 == 0:
      bar.update(row)
  bar.close()
  return out.getvalue()


def info_text(titles: list[str], sids: list[str]) -> str:
  """info/NAME.txt: `SID<TAB>title<TAB>item_id` per item, in id order (a title's tabs and line
  breaks written as spaces, so every item stays one line of three fields)."""
  return ''.join(f'{sid}\t{titles_lib.one_line(title)}\t{item}\n'
                 for item, (title, sid) in enumerate(zip(titles, sids)))


def history_lists(history: np.ndarray) -> list[list[int]]:
  """history [N, T] int32 left-padded with PAD -> N lists of item ids."""
  return [[i for i in row if i != PAD] for row in history.tolist()]


def write_dataset(out: pathlib.Path, name: str, users: np.ndarray, history: np.ndarray,
                  targets: np.ndarray, bounds: dict, items: list[dict], user_raw: list[str],
                  item_raw: list[str]) -> dict[str, pathlib.Path]:
  """Writes splits, info, item.json and the id maps of a dataset with no SIDs yet.

  Args:
    out: the dataset folder DIR.
    name: NAME.
    users: [N] int32 user numbers.
    history: [N, T] int32 item ids, PAD-padded.
    targets: [N] int32 item ids.
    bounds: split -> (first row, end row).
    items: item id -> {title, description, brand, categories}.
    user_raw: user number -> raw user id.
    item_raw: item id -> raw item id.
  """
  paths = prepared.files(out, name)
  titles = [it['title'] for it in items]
  no_sids = [''] * len(items)
  histories = history_lists(history)
  labels = [user_label(u) for u in users.tolist()]
  targets = targets.tolist()
  for split, (lo, hi) in bounds.items():
    write_text_atomic(paths[split], split_csv(labels[lo:hi], histories[lo:hi], targets[lo:hi],
                                              titles, no_sids, f'writing {split}'))
  write_text_atomic(paths['info'], info_text(titles, no_sids))
  files.write_json_atomic(paths['items'], {str(i): it for i, it in enumerate(items)})
  write_text_atomic(paths['user2id'], ''.join(f'{raw}\t{n}\n' for n, raw in enumerate(user_raw)))
  write_text_atomic(paths['item2id'], ''.join(f'{raw}\t{n}\n' for n, raw in enumerate(item_raw)))
  if paths['index'].exists():  # SIDs of an earlier run no longer match these files
    paths['index'].unlink()
  return paths
