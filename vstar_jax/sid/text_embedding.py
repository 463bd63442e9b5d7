"""Dependency-free item embeddings from item text: TF-IDF + truncated SVD (LSA), numpy only.

The fallback input for SID learning when no sentence-encoder embedding file exists: the
SID codebook needs item vectors whose geometry reflects content, and latent semantic
analysis of title, brand, categories and description gives that from `<Name>.item.json`
alone. Rows are unit-norm, like the shipped sentence embeddings.
"""

from __future__ import annotations

import collections
import json
import pathlib
import re

import numpy as np

TEXT_FIELDS = ('title', 'brand', 'categories', 'description')
_TOKEN = re.compile(r'[a-z0-9]+')


def load_item_text(path: str | pathlib.Path) -> list[str]:
  """`<Name>.item.json` {item_id: {title, description, brand, categories}} -> texts [I]."""
  path = pathlib.Path(path)
  try:
    items = json.loads(path.read_text(encoding='utf-8-sig'))
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: line {e.lineno}: invalid JSON ({e.msg})') from None
  if not isinstance(items, dict) or not items:
    raise ValueError(f'{path}: expected a non-empty JSON object item_id -> item fields')
  if sorted(items, key=lambda k: (len(k), k)) != [str(i) for i in range(len(items))]:
    raise ValueError(f'{path}: item ids must be exactly "0".."{len(items) - 1}"')
  texts = []
  for item in range(len(items)):
    fields = items[str(item)]
    if not isinstance(fields, dict):
      raise ValueError(f'{path}: item {item}: expected an object of text fields')
    texts.append(' '.join(str(fields.get(name) or '') for name in TEXT_FIELDS))
  return texts


def tokenize(text: str) -> list[str]:
  """Lower-cased alphanumeric runs."""
  return _TOKEN.findall(text.lower())


def tfidf(texts: list[str], max_features: int, min_df: int) -> np.ndarray:
  """Sublinear TF-IDF matrix [I, V] float32 with unit-norm rows.

  Vocabulary: terms in at least `min_df` texts, the `max_features` most frequent by
  document frequency (ties alphabetical). Weight (1 + log tf) * (1 + log((1 + I) / (1 + df))).
  Texts with no vocabulary term get a zero row.
  """
  counts = [collections.Counter(tokenize(t)) for t in texts]
  df = collections.Counter(term for c in counts for term in c)
  vocab = sorted((t for t, n in df.items() if n >= min_df), key=lambda t: (-df[t], t))
  vocab = vocab[:max_features]
  column = {t: j for j, t in enumerate(vocab)}
  matrix = np.zeros((len(texts), len(vocab)), np.float32)
  for row, c in enumerate(counts):
    for term, n in c.items():
      if term in column:
        matrix[row, column[term]] = 1.0 + np.log(n)
  idf = 1.0 + np.log((1.0 + len(texts)) / (1.0 + np.array([df[t] for t in vocab], np.float64)))
  matrix *= idf.astype(np.float32)[None, :]
  norms = np.linalg.norm(matrix, axis=1, keepdims=True)
  return matrix / np.maximum(norms, 1e-12)


def truncated_svd(matrix: np.ndarray, dim: int, seed: int, power_iters: int = 4,
                  oversample: int = 16) -> np.ndarray:
  """Top-`dim` left singular vectors scaled by singular values, U_k S_k: [I, V] -> [I, dim].

  Randomized range finder with power iterations (Halko, Martinsson & Tropp, 2011); signs
  fixed so each column's largest-magnitude entry is positive, making it deterministic.
  """
  rank = min(dim + oversample, *matrix.shape)
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(matrix @ rng.standard_normal((matrix.shape[1], rank)).astype(matrix.dtype))
  for _ in range(power_iters):
    q, _ = np.linalg.qr(matrix.T @ q)
    q, _ = np.linalg.qr(matrix @ q)
  u, s, _ = np.linalg.svd(q.T @ matrix, full_matrices=False)
  out = (q @ u[:, :dim]) * s[:dim]
  signs = np.sign(out[np.argmax(np.abs(out), axis=0), np.arange(out.shape[1])])
  return out * np.where(signs == 0, 1.0, signs)


def text_embeddings(texts: list[str], dim: int = 128, max_features: int = 8192, min_df: int = 2,
                    seed: int = 0) -> np.ndarray:
  """Item texts [I] -> unit-norm LSA embeddings [I, dim'] float32, dim' = min(dim, I, V)."""
  matrix = tfidf(texts, max_features, min_df)
  if matrix.shape[1] == 0:
    raise ValueError(f'no term occurs in {min_df} or more of the {len(texts)} item texts: '
                     'cannot build a TF-IDF embedding')
  out = truncated_svd(matrix, min(dim, *matrix.shape), seed)
  norms = np.linalg.norm(out, axis=1, keepdims=True)
  return (out / np.maximum(norms, 1e-12)).astype(np.float32)
