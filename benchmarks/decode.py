"""Constrained beam-search throughput (users/s) and FLOP utilisation of the decoder.

Decode speed does not depend on the weights, so the decoder is randomly
initialised. Times beam search over every test user after a warm-up compile,
measures this machine's matmul peak in the same run, and prints one JSON line.

  python benchmarks/decode.py --dataset=industrial --beams=50 --layers=4 --d_model=256 --heads=4
"""

from __future__ import annotations

import json
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from flops import beam_search_flops, matmul_peak  # pylint: disable=g-bad-import-order
from vstar_jax.data import amazon
from vstar_jax.data import synthetic
from vstar_jax.decode import search
from vstar_jax.model import decoder
from vstar_jax.sid import trie as trie_lib

_DATASET = flags.DEFINE_enum('dataset', 'industrial', ['industrial', 'office', 'synthetic'],
                             'Test users to decode (synthetic: Industrial-sized random catalogue).')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'Amazon data directory (default: $VSTAR_DATA_DIR).')
_BEAMS = flags.DEFINE_integer('beams', 50, 'Beam width W.')
_LAYERS = flags.DEFINE_integer('layers', 4, 'Transformer blocks.')
_D_MODEL = flags.DEFINE_integer('d_model', 256, 'Model width D (d_ff = 4 D).')
_HEADS = flags.DEFINE_integer('heads', 4, 'Attention heads.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Users per jitted beam-search call.')
_MAX_USERS = flags.DEFINE_integer('max_users', 0, 'Decode only the first N test users (0: all).')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                           'Compute dtype (model.dtype; parameters stay float32).')


def load_histories(name: str, data_dir: str | None):
  """-> test histories [N, T, L], item codes [I, L], K."""
  if name == 'synthetic':
    dataset = synthetic.make_dataset(num_items=3686, num_users=4533, num_codes=256, num_top=48)
  else:
    dataset = amazon.load_dataset(name, data_dir)
  return dataset.history_codes('test'), dataset.item_codes, dataset.num_codes


def main(argv):
  del argv
  history, item_codes, num_codes = load_histories(_DATASET.value, _DATA_DIR.value)
  if _MAX_USERS.value:
    history = history[:_MAX_USERS.value]
  num_users, max_history, num_levels = history.shape
  cfg = decoder.DecoderConfig(
      num_levels=num_levels, num_codes=num_codes, max_history=max_history,
      num_layers=_LAYERS.value, d_model=_D_MODEL.value, num_heads=_HEADS.value,
      d_ff=4 * _D_MODEL.value, dropout=0.0, dtype=_DTYPE.value)
  params = decoder.init_params(cfg, jax.random.PRNGKey(0))
  trie = trie_lib.build_trie(item_codes, num_codes)
  batch_size = min(_BATCH_SIZE.value, num_users)

  search.beam_search_split(params, cfg, trie, history[:batch_size], _BEAMS.value, batch_size)
  dtype = jnp.dtype(_DTYPE.value)
  peak = matmul_peak(dtype=dtype)
  start = time.perf_counter()
  codes, _ = search.beam_search_split(params, cfg, trie, history, _BEAMS.value, batch_size)
  wall = time.perf_counter() - start
  valid = np.asarray(trie_lib.is_valid_sid(trie, codes))
  logging.info('decoded %d users; valid SIDs per user: min %d', num_users, valid.sum(1).min())

  peak = max(peak, matmul_peak(dtype=dtype))  # the CPU may be shared: take the better of two probes
  flop_per_s = beam_search_flops(cfg, _BEAMS.value) * num_users / wall
  print(json.dumps({
      'users_per_s': num_users / wall, 'n_users': num_users, 'flop_per_s': flop_per_s,
      'peak_flop_per_s': peak, 'flop_utilization': flop_per_s / peak, 'beams': _BEAMS.value,
      'layers': cfg.num_layers, 'd_model': cfg.d_model, 'heads': cfg.num_heads,
      'batch_size': batch_size, 'wall_s': wall, 'dtype': _DTYPE.value, 'device': str(jax.devices()[0].device_kind),
  }))


if __name__ == '__main__':
  app.run(main)
