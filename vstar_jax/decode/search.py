"""The policy's searches, jitted: constrained beam search, sampling and VED, over a batch or a
whole split, for either backbone (model.backbone).

decode.beam and decode.ved are model-agnostic; this module binds them to the model's policy
functions, checks that trie and model agree on the SID shape, and runs whole splits in
fixed-size batches (one compilation), data-parallel over every device, with a progress line.
On the Hugging Face backbone, beam search ranks as MiniOneRec's evaluation does (the L code
steps plus the forced tail; decode.hf_beam).
"""

from __future__ import annotations

import functools
import time

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import numpy as np

from vstar_jax import parallel
from vstar_jax.decode import beam as beam_lib
from vstar_jax.decode import hf_beam
from vstar_jax.decode import sampling as sampling_lib
from vstar_jax.decode import ved as ved_lib
from vstar_jax.model import backbone
from vstar_jax.sid import trie as trie_lib


def check_trie(cfg, trie: trie_lib.Trie) -> None:
  """Rejects a trie whose SID length or codebook size differs from the model's."""
  if (trie.num_levels, trie.num_codes) != (cfg.num_levels, cfg.num_codes):
    raise ValueError(f'trie has L={trie.num_levels}, K={trie.num_codes}; the decoder has '
                     f'L={cfg.num_levels}, K={cfg.num_codes}')


@functools.partial(jax.jit, static_argnames=('cfg', 'num_beams'))
def beam_search(params, cfg, trie: trie_lib.Trie, history: jnp.ndarray, num_beams: int):
  """Top-`num_beams` valid SIDs per user of history (the model's inputs: codes [B, T, L], -1 for
  missing items; or prompt ids [B, P]).

  Returns:
    codes [B, W, L] int32 (distinct valid SIDs, -1 in the tail) and scores [B, W]
    float32 (sum of log-probs) sorted descending (-inf in the tail).
  """
  check_trie(cfg, trie)
  if backbone.is_hf(cfg):
    return hf_beam.beam_search(params, cfg, trie, history, num_beams)
  state, step = backbone.beam_policy(params, cfg, history)
  return beam_lib.beam_search(step, state, trie, history.shape[0], num_beams)


@functools.partial(jax.jit, static_argnames=('cfg', 'num_samples'))
def sample_search(params, cfg, trie: trie_lib.Trie, history: jnp.ndarray,
                  keys: jnp.ndarray, num_samples: int):
  """`num_samples` SIDs per user of history [B, T, L] drawn from the constrained policy, with
  per-user keys [B] (decode.sampling): codes [B, G, L] int32, log-probs [B, G] float32."""
  check_trie(cfg, trie)
  state, step = backbone.beam_policy(params, cfg, history)
  return sampling_lib.sample(step, state, trie, history.shape[0], num_samples, keys)


def user_keys(key: jax.Array, user_index: jnp.ndarray) -> jax.Array:
  """Per-user keys [B]: fold_in(key, each user's index) [B], so a user's draws do not depend on
  the batching or sharding."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, user_index)


@functools.partial(jax.jit, static_argnames=('cfg', 'vcfg', 'keep_tree'))
def ved_search(params, cfg, trie: trie_lib.Trie, history: jnp.ndarray,
               keys: jnp.ndarray, vcfg: ved_lib.VedConfig,
               keep_tree: bool = False) -> ved_lib.VedOutput:
  """VED (paper Sec. 4.2) for users history [B, T, L] with per-user keys [B]: one batched search.

  The search tree is returned only with keep_tree=True (figures, tests): otherwise XLA
  drops every tree field the candidates do not depend on (e.g. Q when neither the rule nor
  the leaf ranking reads it) and the [B, N, ...] arrays never leave the device.
  """
  check_trie(cfg, trie)
  root_fn, expand_fn = backbone.ved_policy(params, cfg, history)
  out = ved_lib.ved(root_fn, expand_fn, trie, keys, vcfg)
  return out if keep_tree else out.replace(tree=None)


def _sharded(body, mesh: Mesh, num_inputs: int):
  """jit(shard_map(body)) over the mesh: params and trie on every device, the `num_inputs`
  per-user inputs split over 'data'. No device talks to another."""
  in_specs = (P(), P()) + (P(parallel.DATA_AXIS),) * num_inputs
  return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=in_specs,
                               out_specs=P(parallel.DATA_AXIS), check_vma=False))


@functools.lru_cache(maxsize=16)
def _sharded_beam(cfg, num_beams: int, mesh: Mesh):
  """The data-parallel beam search of (cfg, num_beams) on `mesh`, built (and compiled) once."""
  return _sharded(lambda params, trie, history: beam_search(params, cfg, trie, history, num_beams),
                  mesh, 1)


@functools.lru_cache(maxsize=16)
def _sharded_ved(cfg, vcfg: ved_lib.VedConfig, mesh: Mesh):
  """The data-parallel VED of (cfg, vcfg) on `mesh`: per-user keys from (seed, row id)."""
  def body(params, trie, history, rows, seed):
    out = ved_search(params, cfg, trie, history, user_keys(jax.random.key(seed[0]), rows), vcfg)
    return out.candidates, out.scores, out.num_forwards
  return _sharded(body, mesh, 3)


def beam_search_split(params, cfg, trie: trie_lib.Trie,
                      history: np.ndarray, num_beams: int, batch_size: int,
                      log_every_s: float = 30.0, mesh: Mesh | None = None):
  """Beam search over a whole split in fixed-size batches (the last one padded), data-parallel.

  Args:
    params: decoder params pytree (host arrays, or replicated on the mesh).
    cfg: the model's static config (model.backbone.model_config).
    trie: Trie of the catalogue's SIDs.
    history: [N, T, L] int32 histories of the split's rows (the same on every process).
    num_beams: W.
    batch_size: users per jitted call over all devices (rounded up to a multiple of the
      device count; one compilation for the whole split).
    log_every_s: seconds between progress lines.
    mesh: the devices to decode on (default: every device of every process); each device
      searches its share of every batch.

  Returns:
    codes [N, W, L] int32 and scores [N, W] float32 numpy arrays (on every process), row
    order kept.
  """
  mesh = mesh or parallel.make_mesh()
  return _split(_sharded_beam(cfg, num_beams, mesh), params, trie, history, (), batch_size,
                'beam search', log_every_s, mesh)


def ved_search_split(params, cfg, trie: trie_lib.Trie, history: np.ndarray,
                     vcfg: ved_lib.VedConfig, batch_size: int, seed: int = 0,
                     log_every_s: float = 30.0, mesh: Mesh | None = None):
  """VED over a whole split in fixed-size batches: codes [N, G, L], scores [N, G], forwards [N].

  User i's key is fold_in(key(seed), i), so a row's result does not depend on the batching or
  the number of devices.
  """
  mesh = mesh or parallel.make_mesh()
  return _split(_sharded_ved(cfg, vcfg, mesh), params, trie, history, (seed,), batch_size,
                'VED', log_every_s, mesh)


def _split(fn, params, trie, history: np.ndarray, per_user_extra: tuple, batch_size: int,
           name: str, log_every_s: float, mesh: Mesh):
  """fn(params, trie, history batch[, row ids, *extra]) over fixed-size sharded batches (last
  padded; one compilation), the next batch launched before the last one is collected; outputs
  gathered to every host, concatenated in row order.

  per_user_extra: scalars broadcast to every row (the VED seed), passed with the row ids.
  """
  history = np.asarray(history, np.int32)
  num_rows = history.shape[0]
  batch_size = -(-batch_size // mesh.size) * mesh.size
  num_batches = -(-num_rows // batch_size)
  padded = np.concatenate(
      [history, np.repeat(history[-1:], num_batches * batch_size - num_rows, axis=0)])
  params, trie = parallel.on_mesh(params, mesh), parallel.on_mesh(trie, mesh)
  extra_rows = ((np.arange(batch_size, dtype=np.int32),)
                + tuple(np.full(batch_size, x, np.int32) for x in per_user_extra)
                if per_user_extra else ())
  mine = parallel.process_rows(batch_size)
  outputs = []
  start = last_log = time.perf_counter()

  def collect(result, done):
    nonlocal last_log
    outputs.append(parallel.to_host(result))
    now = time.perf_counter()
    if now - last_log >= log_every_s or done == num_rows:
      # A line every log_every_s while a user waits; the closing line only with -v 1.
      level = logging.INFO if now - last_log >= log_every_s else logging.DEBUG
      last_log = now
      rate = done / (now - start)
      logging.log(level, '%s: %d/%d users, %.1f users/s, ETA %.0f s', name, done, num_rows, rate,
                  (num_rows - done) / rate)

  pending = None
  for i in range(num_batches):
    first = i * batch_size
    inputs = (padded[first:first + batch_size],)
    if extra_rows:
      inputs += (extra_rows[0] + first,) + extra_rows[1:]
    launched = fn(params, trie, *parallel.shard_batch(tuple(x[mine] for x in inputs), mesh))
    if pending is not None:
      collect(pending, first)
    pending = launched
  collect(pending, num_rows)
  return tuple(np.concatenate(x)[:num_rows] for x in zip(*outputs))
