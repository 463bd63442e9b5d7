"""Tests for vstar_jax.sid.learn: the SID pipeline, its outputs and the code statistics."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax import default_config
from vstar_jax.data import amazon
from vstar_jax.data import sid_strings
from vstar_jax.sid import codebook
from vstar_jax.sid import learn
from vstar_jax.sid import trie

_NAME = 'Industrial_and_Scientific'


def _clustered(num_points=160, dim=12, num_clusters=10, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((num_clusters, dim))
  x = centres[rng.integers(0, num_clusters, num_points)]
  x += 0.2 * rng.standard_normal((num_points, dim))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _small_config(**overrides):
  cfg = default_config.sid_config()
  cfg.update(dict(codebook_size=32, kmeans_iters=10, steps=60, batch_size=64, hidden_dims=(32,),
                  latent_dim=8, reseed_every=20, sinkhorn_iters=20))
  cfg.update(overrides)
  return cfg


def test_default_config_matches_the_paper_setup():
  cfg = default_config.sid_config()
  assert (cfg.source, cfg.method, cfg.num_levels, cfg.codebook_size, cfg.disambiguation) == (
      'given', 'kmeans', 3, 256, 'reassign')
  ccfg = learn.codebook_config(cfg)
  assert isinstance(ccfg, codebook.CodebookConfig)
  assert (ccfg.num_levels, ccfg.codebook_size, ccfg.hidden_dims) == (3, 256, tuple(cfg.hidden_dims))


def test_code_stats_hand_computed():
  codes = np.array([[0, 0], [0, 1], [1, 1], [1, 1]])
  x = np.array([[0.0], [2.0], [4.0], [6.0]])
  stats = learn.code_stats(codes, num_codes=4, embeddings=x)
  assert stats['utilization'] == [0.5, 0.5]
  entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
  np.testing.assert_allclose(stats['perplexity'], [2.0, math.exp(entropy)])
  assert stats['distinct_prefixes'] == [2, 3]
  assert stats['collision_groups'] == 1
  assert stats['items_in_collisions'] == 2 and stats['max_items_per_sid'] == 2
  # Level-1 groups {0, 2} and {4, 6}; level-2 leaves only {4, 6} unresolved.
  np.testing.assert_allclose(stats['prefix_sq_err'], [1.0, 0.5])
  # Items 0 and 1 are fitted exactly; items 2 and 3 share codes, so their best fit is 5.
  np.testing.assert_allclose(stats['additive_sq_err'], 0.5, atol=1e-9)
  json.dumps(stats)


def test_code_stats_without_embeddings_is_perfect_for_uniform_codes():
  codes = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing='ij'), -1).reshape(-1, 2)
  stats = learn.code_stats(codes, num_codes=4)
  assert stats['utilization'] == [1.0, 1.0] and stats['collision_groups'] == 0
  np.testing.assert_allclose(stats['perplexity'], [4.0, 4.0])
  assert 'prefix_sq_err' not in stats


def test_index_json_is_minionerec_format_and_loads(tmp_path):
  codes = np.array([[1, 2, 3], [255, 0, 7], [9, 9, 9]])
  index = sid_strings.index_json(codes)
  assert list(index) == ['0', '1', '2']
  assert index['1'] == ['<a_255>', '<b_0>', '<c_7>']
  path = tmp_path / 'index.json'
  path.write_text(json.dumps(index))
  np.testing.assert_array_equal(amazon.load_index(path), codes)


@pytest.mark.parametrize('method', learn.METHODS)
def test_learn_sids_writes_collision_free_outputs(tmp_path, method):
  x = np.concatenate([_clustered(), np.tile(_clustered(1, seed=9), (24, 1))])  # 24 duplicates.
  cfg = _small_config(method=method)
  codes, stats = learn.learn_sids(x, cfg, workdir=str(tmp_path), embedding_source='test')
  assert codes.shape == (x.shape[0], 3) and codes.dtype == np.int32
  assert trie.collision_groups(codes) == []
  assert stats['collisions_before'] >= 1 and stats['collisions_after'] == 0
  assert stats['after']['max_items_per_sid'] == 1 and stats['items_changed'] >= 23
  assert stats['embedding_source'] == 'test' and stats['sid_length'] == 3

  sid_dir = tmp_path / 'sid'
  np.testing.assert_array_equal(amazon.load_index(sid_dir / 'index.json', num_codes=32), codes)
  assert json.loads((sid_dir / 'stats.json').read_text()) == json.loads(json.dumps(stats))
  params = learn.restore_params(sid_dir)
  assert params['codebooks'].shape[:2] == (3, 32)
  assert ('encoder' in params) == (method == 'rqvae')
  recon = jnp.mean(jnp.sum((codebook.decode(params, jnp.asarray(codes)) - x) ** 2, -1))
  np.testing.assert_allclose(float(recon), stats['recon_sq_err'], rtol=1e-5)


def test_learn_sids_extra_level_gives_longer_sids_the_trie_accepts(tmp_path):
  x = np.concatenate([_clustered(), np.tile(_clustered(1, seed=9), (24, 1))])
  codes, stats = learn.learn_sids(x, _small_config(method='kmeans', disambiguation='extra_level'),
                                  workdir=str(tmp_path))
  assert codes.shape == (x.shape[0], 4) and stats['sid_length'] == 4
  assert trie.collision_groups(codes) == []
  np.testing.assert_array_equal(np.sort(codes[-24:, 3]), np.arange(24))
  t = trie.build_trie(codes, num_codes=32)
  assert t.num_levels == 4 and bool(np.all(trie.is_valid_sid(t, jnp.asarray(codes))))
  index = json.loads((tmp_path / 'sid' / 'index.json').read_text())
  assert index['0'][3].startswith('<d_')


def test_learn_sids_is_deterministic():
  x = np.concatenate([_clustered(), np.tile(_clustered(1, seed=9), (24, 1))])
  cfg = _small_config(method='kmeans')
  first, _ = learn.learn_sids(x, cfg)
  second, _ = learn.learn_sids(x.copy(), cfg)
  np.testing.assert_array_equal(first, second)


def test_learn_sids_rejects_bad_config_and_inputs():
  with pytest.raises(ValueError, match='method'):
    learn.learn_sids(_clustered(), _small_config(method='pq'))
  with pytest.raises(ValueError, match='disambiguation'):
    learn.learn_sids(_clustered(), _small_config(disambiguation='drop'))
  bad = _clustered()
  bad[5, 0] = np.nan
  with pytest.raises(ValueError, match='row 5'):
    learn.learn_sids(bad, _small_config())


def _write_dataset(root, num_items, emb_rows=None):
  index = root / 'index'
  index.mkdir(parents=True, exist_ok=True)
  topics = ['steel staples', 'ink pen', 'glass beaker', 'safety gloves']
  items = {str(i): {'title': f'{topics[i % 4]} model {i}', 'description': topics[i % 4],
                    'brand': '', 'categories': ''} for i in range(num_items)}
  (index / f'{_NAME}.item.json').write_text(json.dumps(items))
  if emb_rows is not None:
    np.save(index / f'{_NAME}.emb-minilm-td.npy', np.ones((emb_rows, 6), np.float32))


def test_load_item_embeddings_prefers_the_npy(tmp_path):
  _write_dataset(tmp_path, 12, emb_rows=12)
  emb, source = learn.load_item_embeddings(tmp_path, _NAME)
  assert emb.shape == (12, 6) and source.endswith('.emb-minilm-td.npy')
  user = tmp_path / 'mine.npy'
  np.save(user, np.zeros((12, 3)))
  emb, source = learn.load_item_embeddings(tmp_path, _NAME, embedding_path=user)
  assert emb.shape == (12, 3) and emb.dtype == np.float32 and source == str(user)


def test_load_item_embeddings_falls_back_to_text(tmp_path):
  _write_dataset(tmp_path, 12)
  emb, source = learn.load_item_embeddings(tmp_path, _NAME, text_dim=3)
  assert emb.shape == (12, 3) and source.startswith('tfidf-svd:')
  sim = emb @ emb.T
  assert sim[0, 4] > sim[0, 1]  # items 0 and 4 share a topic.


def test_load_item_embeddings_checks_row_alignment(tmp_path):
  _write_dataset(tmp_path, 12, emb_rows=11)
  with pytest.raises(ValueError, match='11 rows'):
    learn.load_item_embeddings(tmp_path, _NAME)
  with pytest.raises(ValueError, match='does not exist'):
    learn.load_item_embeddings(tmp_path, _NAME, embedding_path=tmp_path / 'none.npy')


@pytest.mark.realdata
def test_real_embeddings_beat_shipped_sids(data_dir):
  emb, _ = learn.load_item_embeddings(data_dir, _NAME)
  cfg = default_config.sid_config()
  cfg.update(dict(kmeans_iters=10, sinkhorn_iters=10))
  codes, stats = learn.learn_sids(emb, cfg)
  shipped = learn.code_stats(amazon.load_index(data_dir / 'index' / f'{_NAME}.index.json'), 256)
  assert codes.shape == (emb.shape[0], 3)
  assert stats['collisions_after'] == 0 and trie.collision_groups(codes) == []
  assert shipped['collision_groups'] == 15 and shipped['utilization'][0] == 48 / 256
  assert stats['after']['utilization'][0] >= 0.9
  assert stats['after']['perplexity'][0] > 3 * shipped['perplexity'][0]
