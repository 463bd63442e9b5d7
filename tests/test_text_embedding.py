"""Tests for vstar_jax.sid.text_embedding: the TF-IDF + SVD fallback embedding."""

import json

import numpy as np
import pytest

from vstar_jax.sid import text_embedding

_CORPUS = [
    'steel staples half inch staples',
    'staples for staple gun steel',
    'blue ink pen fine point',
    'black ink pen gel',
    'lab glass beaker 250 ml',
    'glass beaker borosilicate lab',
]


def test_tokenize_lowercases_and_splits_on_punctuation():
  assert text_embedding.tokenize("SUPCO SPP6 Relay/Capacitor ['kit', 500%]") == [
      'supco', 'spp6', 'relay', 'capacitor', 'kit', '500']


def test_tfidf_matches_hand_computation():
  texts = ['a a b', 'a c', 'b b b c']
  m = text_embedding.tfidf(texts, max_features=10, min_df=1)
  # Vocabulary by document frequency (2 each, ties alphabetical): a, b, c.
  idf = 1 + np.log(4 / 3)
  rows = np.array([[1 + np.log(2), 1, 0], [1, 0, 1], [0, 1 + np.log(3), 1]]) * idf
  np.testing.assert_allclose(m, rows / np.linalg.norm(rows, axis=1, keepdims=True), rtol=1e-5)


def test_tfidf_vocabulary_limits():
  texts = ['x y z', 'x y', 'x']
  assert text_embedding.tfidf(texts, max_features=10, min_df=2).shape == (3, 2)  # x, y.
  assert text_embedding.tfidf(texts, max_features=1, min_df=1).shape == (3, 1)  # x.


def test_truncated_svd_matches_exact_svd():
  rng = np.random.default_rng(0)
  m = rng.standard_normal((40, 6)) @ rng.standard_normal((6, 30))
  m += 0.01 * rng.standard_normal((40, 30))
  got = text_embedding.truncated_svd(m, 4, seed=0)
  u, s, _ = np.linalg.svd(m, full_matrices=False)
  np.testing.assert_allclose(np.linalg.norm(got, axis=0), s[:4], rtol=1e-4)
  # Same subspace and, up to sign, the same columns.
  np.testing.assert_allclose(np.abs(got), np.abs(u[:, :4] * s[:4]), atol=1e-3)


def test_text_embeddings_unit_norm_deterministic_and_semantic():
  emb = text_embedding.text_embeddings(_CORPUS, dim=4, min_df=1, seed=0)
  assert emb.shape == (6, 4) and emb.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
  again = text_embedding.text_embeddings(_CORPUS, dim=4, min_df=1, seed=0)
  np.testing.assert_array_equal(emb, again)
  sim = emb @ emb.T
  np.fill_diagonal(sim, -np.inf)
  # Each text's nearest neighbour is its topical twin.
  np.testing.assert_array_equal(sim.argmax(1), [1, 0, 3, 2, 5, 4])


def test_text_embeddings_without_vocabulary_raises():
  with pytest.raises(ValueError, match='no term'):
    text_embedding.text_embeddings(['alpha', 'beta'], min_df=2)


def test_load_item_text_orders_by_item_id(tmp_path):
  items = {str(i): {'title': f't{i}', 'description': 'd', 'brand': None, 'categories': 'c'}
           for i in (2, 0, 1, 10, 3, 4, 5, 6, 7, 8, 9)}
  path = tmp_path / 'items.json'
  path.write_text(json.dumps(items))
  texts = text_embedding.load_item_text(path)
  assert texts[0] == 't0  c d' and texts[10] == 't10  c d'
  path.write_bytes(b'\xef\xbb\xbf' + path.read_bytes())  # a BOM (spreadsheet export) is skipped
  assert text_embedding.load_item_text(path) == texts


def test_load_item_text_rejects_gaps(tmp_path):
  path = tmp_path / 'items.json'
  path.write_text(json.dumps({'0': {'title': 'a'}, '2': {'title': 'b'}}))
  with pytest.raises(ValueError, match='items.json'):
    text_embedding.load_item_text(path)
