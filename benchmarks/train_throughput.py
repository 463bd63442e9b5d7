"""SFT training throughput (samples/s, tokens/s, model FLOP/s) and peak host memory.

Times the jitted, state-donating SFT step of vstar_jax.train.sft on batches of real
(--dataset=industrial|office) or synthetic histories after a compile step.

  python benchmarks/train_throughput.py --dataset=industrial --batch_size=128 --steps=30
prints one JSON object on its last line.
"""

from __future__ import annotations

import json
import resource
import time

from absl import app, flags
import jax
import numpy as np

from flops import train_flops  # pylint: disable=g-bad-import-order
from vstar_jax import default_config
from vstar_jax.data import batching
from vstar_jax.data import loading
from vstar_jax.model import backbone
from vstar_jax.model import decoder
from vstar_jax.train import sft
from vstar_jax.train import state as state_lib

_DATASET = flags.DEFINE_enum('dataset', 'synthetic', ['industrial', 'office', 'synthetic'], 'Data.')
_DATA_DIR = flags.DEFINE_string('data_dir', '', 'Amazon data folder (default $VSTAR_DATA_DIR).')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Training batch size.')
_STEPS = flags.DEFINE_integer('steps', 30, 'Timed steps.')
_D_MODEL = flags.DEFINE_integer('d_model', 128, 'Model width (d_ff = 4 D).')
_LAYERS = flags.DEFINE_integer('layers', 4, 'Transformer blocks.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                           'Compute dtype (model.dtype; parameters and optimizer state stay float32).')


def main(argv):
  del argv
  config = default_config.base_config()
  config.dataset, config.data_dir = _DATASET.value, _DATA_DIR.value
  config.model.d_model, config.model.d_ff, config.model.num_layers = (
      _D_MODEL.value, 4 * _D_MODEL.value, _LAYERS.value)
  config.model.dtype = _DTYPE.value
  dataset = loading.load(config)
  cfg = backbone.model_config(config, dataset)
  history, target = batching.training_rows(dataset, ('train',))
  optimizer = state_lib.make_optimizer(1e-3, 10, 1000, 0.1)
  state = state_lib.TrainState.create(decoder.init_params(cfg, jax.random.key(0)), optimizer,
                                      jax.random.key(1))
  step = sft.make_train_step(cfg, optimizer, 0.0)
  rng = np.random.default_rng(0)
  batches = [rng.integers(len(history), size=_BATCH.value) for _ in range(_STEPS.value + 1)]
  state, metrics = step(state, history[batches[0]], target[batches[0]])
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for rows in batches[1:]:
    state, metrics = step(state, history[rows], target[rows])
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / _STEPS.value
  tokens = cfg.prompt_len + cfg.num_levels + 1
  print(json.dumps({
      'dataset': dataset.name, 'batch_size': _BATCH.value, 'step_s': seconds,
      'samples_per_s': _BATCH.value / seconds, 'tokens_per_s': _BATCH.value * tokens / seconds,
      'flop_per_s': train_flops(cfg, _BATCH.value) / seconds,
      'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      'params': int(sum(x.size for x in jax.tree.leaves(state.params))),
      'layers': cfg.num_layers, 'd_model': cfg.d_model, 'dtype': cfg.dtype,
      'device': jax.devices()[0].platform}))


if __name__ == '__main__':
  app.run(main)
