"""SID learning: item embeddings -> trained codebook -> collision-free SIDs -> <workdir>/sid/.

Writes `index.json` (MiniOneRec format: {"item_id": ["<a_X>", "<b_Y>", "<c_Z>"]}, keys in
item-id order), `stats.json` (per-level utilization and perplexity, collisions before and
after disambiguation, reconstruction errors, wall time, the config) and `params/` (the
codebook params, an orbax checkpoint). `code_stats` scores any code assignment, so the
shipped SIDs and ours are measured by the same function.
"""

from __future__ import annotations

import os
import pathlib
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from vstar_jax import default_config
from vstar_jax import distributed
from vstar_jax import files
from vstar_jax.data import sid_strings
from vstar_jax.sid import codebook
from vstar_jax.sid import disambiguate
from vstar_jax.sid import rqvae
from vstar_jax.sid import text_embedding
from vstar_jax.sid import trie

METHODS = ('rqvae', 'kmeans')
SOURCES = ('given', 'learned')


def validate_config(sid: ml_collections.ConfigDict) -> None:
  """Rejects impossible config.sid settings, naming the flag."""
  if sid.source not in SOURCES:
    raise default_config.ConfigError('sid.source', f'{sid.source!r} is not one of {SOURCES}')
  if sid.method not in METHODS:
    raise default_config.ConfigError('sid.method', f'{sid.method!r} is not one of {METHODS}')
  if sid.disambiguation not in disambiguate.METHODS:
    raise default_config.ConfigError('sid.disambiguation', f'{sid.disambiguation!r} is not one of '
                                     f'{disambiguate.METHODS}')


def codebook_config(cfg: ml_collections.ConfigDict) -> codebook.CodebookConfig:
  """The static codebook settings of `config.sid`."""
  return codebook.CodebookConfig(
      num_levels=cfg.num_levels, codebook_size=cfg.codebook_size,
      hidden_dims=tuple(cfg.hidden_dims), latent_dim=cfg.latent_dim, commitment=cfg.commitment,
      sinkhorn_iters=cfg.sinkhorn_iters, sinkhorn_eps=cfg.sinkhorn_eps)


def _validate_embeddings(emb: np.ndarray, where: str) -> np.ndarray:
  """emb as float32 [I, D]; a malformed matrix raises ValueError naming `where` and the row."""
  if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
    raise ValueError(f'{where}: expected an item-embedding matrix [num_items, D], '
                     f'got shape {emb.shape}')
  if not np.issubdtype(emb.dtype, np.number):
    raise ValueError(f'{where}: expected numbers, got dtype {emb.dtype}')
  bad = np.flatnonzero(~np.all(np.isfinite(emb), axis=1))
  if len(bad):
    raise ValueError(f'{where}: row {bad[0]} (item {bad[0]}) has non-finite values '
                     f'({len(bad)} such rows)')
  return emb.astype(np.float32)


def load_item_embeddings(data_dir: str | os.PathLike, dataset_full_name: str,
                         fallback_item_json: str | os.PathLike | None = None, *,
                         embedding_path: str | os.PathLike | None = None, text_dim: int = 128,
                         seed: int = 0) -> tuple[np.ndarray, str]:
  """Item embeddings [I, D] float32 (row i = item i) and a note of where they came from.

  Order of preference: `embedding_path` (a user .npy), the dataset's sentence embeddings
  `<data_dir>/index/<Name>.emb-minilm-td.npy`, else the TF-IDF + SVD embedding of the item
  text in `fallback_item_json` (default `<data_dir>/index/<Name>.item.json`). A .npy is
  checked against the item count of that item file when it exists.

  Args:
    data_dir: the MiniOneRec data folder (holding index/).
    dataset_full_name: 'Industrial_and_Scientific' or 'Office_Products'.
    fallback_item_json: item-text file for the fallback and the row-count check.
    embedding_path: optional user .npy overriding the dataset's embeddings.
    text_dim: width of the fallback embedding.
    seed: seed of the fallback's randomized SVD.
  """
  index_dir = pathlib.Path(data_dir) / 'index'
  item_json = pathlib.Path(fallback_item_json or index_dir / f'{dataset_full_name}.item.json')
  npy = pathlib.Path(embedding_path or index_dir / f'{dataset_full_name}.emb-minilm-td.npy')
  if embedding_path and not npy.is_file():
    raise ValueError(f'embedding file {npy} does not exist')
  if npy.is_file():
    emb = _validate_embeddings(np.load(npy, allow_pickle=False), str(npy))
    if item_json.is_file():
      num_items = len(text_embedding.load_item_text(item_json))
      if emb.shape[0] != num_items:
        raise ValueError(f'{npy}: {emb.shape[0]} rows but {item_json} lists {num_items} items; '
                         'rows must be aligned with item ids')
    logging.info('SID embeddings: %s %s', npy, emb.shape)
    return emb, str(npy)
  if not item_json.is_file():
    raise ValueError(f'no embedding file {npy} and no item text {item_json} for the fallback')
  emb = text_embedding.text_embeddings(text_embedding.load_item_text(item_json), dim=text_dim,
                                       seed=seed)
  logging.info('SID embeddings: TF-IDF + SVD of %s %s (no %s)', item_json, emb.shape, npy)
  return emb, f'tfidf-svd:{item_json}'


def code_stats(codes: np.ndarray, num_codes: int, embeddings: np.ndarray | None = None) -> dict:
  """Quality of any SID assignment codes [I, L] (shipped or learned), as plain JSON values.

  Per level l: `utilization` (distinct codes / K), `perplexity` (exp of the entropy of the
  code frequencies; K = perfectly even use), `distinct_prefixes` (trie nodes at depth l).
  Overall: `collision_groups`, `items_in_collisions`, `max_items_per_sid`. With item
  embeddings x [I, D]: `prefix_sq_err[l]` = mean ||x_i - mean of x over the items sharing
  i's first l+1 codes||^2 (how much of the embedding each depth of the trie explains), and
  `additive_sq_err` = mean ||x_i - sum_l A_l[c_il]||^2 with the per-level code vectors A
  fitted by least squares (a model-free reconstruction error of the codes themselves).
  """
  codes = np.asarray(codes, np.int64)
  num_items, num_levels = codes.shape
  util, perplexity, prefixes = [], [], []
  for level in range(num_levels):
    counts = np.bincount(codes[:, level], minlength=num_codes)
    p = counts[counts > 0] / num_items
    util.append(float(np.count_nonzero(counts) / num_codes))
    perplexity.append(float(np.exp(-np.sum(p * np.log(p)))))
    prefixes.append(int(len(np.unique(codes[:, :level + 1], axis=0))))
  groups = trie.collision_groups(codes)
  stats = {'num_levels': num_levels, 'utilization': util, 'perplexity': perplexity,
           'distinct_prefixes': prefixes, 'collision_groups': len(groups),
           'items_in_collisions': int(sum(len(g) for g in groups)),
           'max_items_per_sid': max([1] + [len(g) for g in groups])}
  if embeddings is not None:
    x = np.asarray(embeddings, np.float64)
    prefix_err = []
    for level in range(num_levels):
      _, group = np.unique(codes[:, :level + 1], axis=0, return_inverse=True)
      group = group.reshape(-1)
      means = np.zeros((group.max() + 1, x.shape[1]))
      np.add.at(means, group, x)
      means /= np.bincount(group)[:, None]
      prefix_err.append(float(np.mean(np.sum((x - means[group]) ** 2, axis=1))))
    design = np.zeros((num_items, num_levels * num_codes))
    design[np.arange(num_items)[:, None], codes + num_codes * np.arange(num_levels)] = 1.0
    # Normal equations, with a tiny ridge for the rank deficiency (a constant can move
    # between levels; unused codes have empty columns): fitted values are unaffected.
    gram = design.T @ design + 1e-6 * np.eye(design.shape[1])
    fit = np.linalg.solve(gram, design.T @ x)
    stats['prefix_sq_err'] = prefix_err
    stats['additive_sq_err'] = float(np.mean(np.sum((x - design @ fit) ** 2, axis=1)))
  return stats


def learn_sids(embeddings: np.ndarray, cfg: ml_collections.ConfigDict,
               workdir: str | os.PathLike | None = None,
               embedding_source: str = 'array',
               extra_stats: dict | None = None) -> tuple[np.ndarray, dict]:
  """Learns a codebook on item embeddings [I, D] and returns collision-free SIDs.

  Args:
    embeddings: [I, D], row i = item i.
    cfg: `config.sid` (default_config.sid_config).
    workdir: when given, index.json, stats.json and params/ go to `<workdir>/sid/`.
    embedding_source: where the embeddings came from, recorded in stats.json.
    extra_stats: more entries for stats.json (e.g. the shipped SIDs' stats, for comparison).

  Returns:
    item_codes [I, L'] int32 with distinct rows (L' = L, or L + 1 for 'extra_level'), and
    the stats dict written to stats.json.
  """
  start = time.time()
  validate_config(cfg)
  emb = _validate_embeddings(np.asarray(embeddings), 'item embeddings')
  x = jnp.asarray(emb)
  ccfg = codebook_config(cfg)
  key = jax.random.PRNGKey(cfg.seed)
  history = {}
  if cfg.method == 'kmeans':
    params = {'codebooks': codebook.residual_kmeans(key, x, ccfg, cfg.kmeans_iters)}
  else:
    params, history = rqvae.fit_rqvae(
        key, x, ccfg, steps=cfg.steps, batch_size=cfg.batch_size, learning_rate=cfg.lr,
        kmeans_iters=cfg.kmeans_iters, reseed_every=cfg.reseed_every)
  raw = codebook.encode(params, x, ccfg)
  last_dists = np.asarray(codebook.code_distances(params, x, raw))[:, -1]
  raw = np.asarray(raw)
  codes = disambiguate.disambiguate(raw, last_dists, cfg.disambiguation)
  learn_time = time.time() - start
  recon = lambda c: float(codebook.reconstruction_error(params, x, c))
  before = code_stats(raw, cfg.codebook_size, emb)
  after = code_stats(codes, cfg.codebook_size, emb)
  stats = {
      'method': cfg.method, 'disambiguation': cfg.disambiguation,
      'num_items': int(emb.shape[0]), 'embedding_dim': int(emb.shape[1]),
      'embedding_source': embedding_source, 'sid_length': int(codes.shape[1]),
      'codebook_size': cfg.codebook_size,
      'collisions_before': before['collision_groups'],
      'collisions_after': after['collision_groups'],
      'items_changed': int(np.sum(np.any(codes[:, :raw.shape[1]] != raw, axis=1))
                           + np.sum(codes[:, raw.shape[1]:] != 0)),
      'recon_sq_err_before': recon(raw), 'recon_sq_err': recon(codes[:, :raw.shape[1]]),
      'before': before, 'after': after,
      'train': {k: v[-1] for k, v in history.items() if v},
      'learn_time_s': learn_time, 'config': cfg.to_dict(),
  }
  stats.update(extra_stats or {})
  stats['wall_time_s'] = time.time() - start
  logging.info('SIDs: %d items, level-1 utilization %.3f perplexity %.1f, collisions %d -> %d, '
               'recon %.4f, %.1fs', emb.shape[0], after['utilization'][0], after['perplexity'][0],
               stats['collisions_before'], stats['collisions_after'], stats['recon_sq_err'],
               stats['wall_time_s'])
  if workdir is not None:
    write_outputs(pathlib.Path(workdir) / 'sid', codes, stats, params)
  return codes, stats


def write_outputs(sid_dir: pathlib.Path, codes: np.ndarray, stats: dict, params) -> None:
  """index.json, stats.json and the orbax params checkpoint under sid_dir.

  Every process of a multi-process run learns the same SIDs (a deterministic function of the
  data and seed); process 0 writes the JSON files, orbax saves the (host) params from all of
  them, and the barrier at the end lets no process read the files before they exist.
  """
  if distributed.is_writer():
    sid_dir.mkdir(parents=True, exist_ok=True)
    files.write_json_atomic(sid_dir / 'index.json', sid_strings.index_json(codes))
    files.write_json_atomic(sid_dir / 'stats.json', stats)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save((sid_dir / 'params').resolve(), jax.tree.map(np.asarray, params), force=True)
  checkpointer.wait_until_finished()
  distributed.barrier('sid_outputs')


def restore_params(sid_dir: str | os.PathLike) -> dict:
  """The codebook params saved by `learn_sids` under `<workdir>/sid/`."""
  return ocp.StandardCheckpointer().restore(pathlib.Path(sid_dir, 'params').resolve())

