r"""The prepared accelerator check: every speed a GPU / TPU user asks about, in one command, one JSON.

  python benchmarks/device_check.py --data_dir=.data/amazon --out=$OUT/device_check.json

Sections (each written to --out as soon as it is done, so a run stopped by its time limit
still returns what it measured; a section that would start past --budget_s is skipped and
listed as such):
  devices      jax version, backend, every device, the mesh the stages run on
  peak         measured matmul FLOP/s in float32 and bfloat16 (the denominators below)
  decode       beam-50 users/s on Industrial test users, both model sizes of
               benchmarks/decode.py (4 x 256 x 4 heads, 4 x 128 x 4 heads), float32 and bfloat16,
               model FLOP/s and share of the same dtype's measured peak
  sft          SFT samples/s of the default 4 x 128 decoder on Industrial train rows (batch 128,
               and 1024 on an accelerator), float32 and bfloat16, share of peak
  rl           seconds per V-STAR RL iteration (configs/amazon.py:industrial's rl: VED rollouts,
               64 users, G = 16, one update), float32 and bfloat16
  ved_vs_beam  ms/user of VED and beam search at equal forwards: VED m = 2 (34 forwards) vs
               beam 16 (33), and the eval-time VED m = 5.8 (98) vs beam 50 (99), float32
Speeds do not depend on the weights: every model is randomly initialised. Data parallel over
every device (parallel.make_mesh), as the CLI runs.

On this repository's CPU machine: `--max_users=64 --steps=2` runs every section in a few
minutes (tests/test_benchmarks.py runs a smaller smoke test).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

import flops  # pylint: disable=g-bad-import-order
from vstar_jax import default_config
from vstar_jax import parallel
from vstar_jax.data import amazon
from vstar_jax.data import batching
from vstar_jax.decode import search
from vstar_jax.decode import ved as ved_lib
from vstar_jax.eval import evaluate
from vstar_jax.model import backbone
from vstar_jax.model import decoder
from vstar_jax.rl import settings as settings_lib
from vstar_jax.rl import step as step_lib
from vstar_jax.sid import trie as trie_lib
from vstar_jax.train import sft

REPO = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = ('devices', 'peak', 'decode', 'sft', 'rl', 'ved_vs_beam')
DTYPES = ('float32', 'bfloat16')
DECODE_SIZES = ((4, 256, 4), (4, 128, 4))  # benchmarks/decode.py's two model sizes

_DATA_DIR = flags.DEFINE_string('data_dir', '', 'Amazon data folder (default: $VSTAR_DATA_DIR, '
                                'else .data/amazon in the repository).')
_OUT = flags.DEFINE_string('out', '', 'JSON file written after every section ("" : none).')
_SECTIONS = flags.DEFINE_list('sections', list(SECTIONS), f'Which of {SECTIONS} to run.')
_BUDGET_S = flags.DEFINE_float('budget_s', 420.0, 'Skip the sections that would start later.')
_MAX_USERS = flags.DEFINE_integer('max_users', 0, 'Test / valid users decoded (0: every test '
                                  'user; 1024 evenly spaced valid users for ved_vs_beam).')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed SFT steps and RL iterations (after a compile).')
_DECODE_BATCH = flags.DEFINE_integer('decode_batch', 0, 'Users per decode call (0: 16 on CPU, '
                                     '512 on an accelerator).')


def data_dir() -> str:
  return _DATA_DIR.value or os.environ.get('VSTAR_DATA_DIR') or str(REPO / '.data' / 'amazon')


def accelerator() -> bool:
  return jax.default_backend() != 'cpu'


def timed(fn, repeats: int) -> float:
  """Seconds per call of fn() after one compiling call (results blocked on)."""
  jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn())
  return (time.perf_counter() - start) / repeats


def decoder_cfg(dataset, layers: int, d_model: int, heads: int, dtype: str, hash_buckets=0):
  return decoder.DecoderConfig(
      num_levels=dataset.num_levels, num_codes=dataset.num_codes,
      max_history=dataset.max_history, num_layers=layers, d_model=d_model, num_heads=heads,
      d_ff=4 * d_model, dropout=0.0, dtype=dtype, item_hash_buckets=hash_buckets)


def section_devices(_, mesh) -> dict:
  return {'jax': jax.__version__, 'backend': jax.default_backend(),
          'devices': [str(d) for d in jax.devices()],
          'device_kind': jax.devices()[0].device_kind, 'process_count': jax.process_count(),
          'mesh': {parallel.DATA_AXIS: mesh.size}}


def section_peak(_, mesh) -> dict:
  n = 8192 if accelerator() else 2048
  return {f'{dtype}_flop_per_s': max(flops.matmul_peak(n, dtype=jnp.dtype(dtype))
                                     for _ in range(2)) for dtype in DTYPES}


def section_decode(dataset, mesh, peak) -> list:
  trie = trie_lib.build_trie(dataset.item_codes, dataset.num_codes)
  history = dataset.history_codes('test')
  if _MAX_USERS.value:
    history = history[:_MAX_USERS.value]
  batch = _DECODE_BATCH.value or (512 if accelerator() else 16)
  rows = []
  for layers, d_model, heads in DECODE_SIZES:
    for dtype in DTYPES:
      cfg = decoder_cfg(dataset, layers, d_model, heads, dtype)
      params = parallel.replicate(decoder.init_params(cfg, jax.random.key(0)), mesh)
      search.beam_search_split(params, cfg, trie, history[:batch], 50, batch, mesh=mesh)
      start = time.perf_counter()
      codes, _ = search.beam_search_split(params, cfg, trie, history, 50, batch, mesh=mesh)
      wall = time.perf_counter() - start
      flop_per_s = flops.beam_search_flops(cfg, 50) * len(history) / wall
      rows.append({'model': f'{layers} x {d_model} x {heads} heads', 'dtype': dtype,
                   'beams': 50, 'users': len(history), 'batch': batch,
                   'users_per_s': len(history) / wall, 'flop_per_s': flop_per_s,
                   'share_of_peak': flop_per_s / peak.get(f'{dtype}_flop_per_s', np.nan),
                   'all_valid': bool(np.asarray(trie_lib.is_valid_sid(trie, codes)).all())})
      logging.info('decode %s', rows[-1])
  return rows


def section_sft(dataset, mesh, peak) -> list:
  config = default_config.base_config()
  history, target = batching.training_rows(dataset, ('train',))
  batches = (128, 1024) if accelerator() else (128,)
  rows = []
  for dtype in DTYPES:
    config.model.dtype = dtype
    cfg = backbone.model_config(config, dataset)
    for size in batches:
      size = size - size % mesh.size
      plan = sft.Schedule(len(history), size, len(history) // size, 10_000)
      optimizer = sft.make_optimizer(config.sft, plan)
      keys = jax.random.split(jax.random.key(0))
      state = parallel.replicate(sft.initial_state(cfg, optimizer, keys[0], keys[1], 0.0), mesh)
      step = sft.make_train_step(cfg, optimizer, 0.0, mesh=mesh)
      rng = np.random.default_rng(0)
      draws = [rng.integers(len(history), size=size) for _ in range(_STEPS.value + 1)]
      batch = [parallel.shard_batch((history[r], target[r]), mesh) for r in draws]
      holder = {'state': state, 'i': 0}

      def one_step():
        holder['state'], metrics = step(holder['state'], *batch[holder['i'] % len(batch)])
        holder['i'] += 1
        return metrics

      seconds = timed(one_step, _STEPS.value)
      flop_per_s = flops.train_flops(cfg, size) / seconds
      rows.append({'model': f'{cfg.num_layers} x {cfg.d_model} x {cfg.num_heads} heads',
                   'dtype': dtype, 'batch': size, 'step_s': seconds,
                   'samples_per_s': size / seconds, 'flop_per_s': flop_per_s,
                   'share_of_peak': flop_per_s / peak.get(f'{dtype}_flop_per_s', np.nan)})
      logging.info('sft %s', rows[-1])
  return rows


def section_rl(dataset, mesh, _) -> list:
  from configs import amazon as amazon_config  # pylint: disable=g-import-not-at-top
  config = amazon_config.get_config('industrial')
  users = batching.UserRows.from_dataset(dataset, ('train',))
  trie = parallel.replicate(trie_lib.build_trie(dataset.item_codes, dataset.num_codes), mesh)
  settings = settings_lib.RlSettings.from_config(config, steps=1000)
  rows = []
  for dtype in DTYPES:
    config.model.dtype = dtype
    cfg = backbone.model_config(config, dataset)
    programs = step_lib.make_programs(cfg, settings, mesh)
    params = decoder.init_params(cfg, jax.random.key(0))
    holder = {'state': parallel.replicate(step_lib.init_state(params, settings, 0), mesh), 'i': 0}

    def iteration():
      index = holder['i'] % (len(users) // config.rl.batch_users)
      rows_i = batching.batch_rows(len(users), config.rl.batch_users, 0, 0, index)
      holder['state'], metrics = programs.iteration(holder['state'], users.batch(rows_i, mesh),
                                                    trie, None)
      holder['i'] += 1
      return metrics

    seconds = timed(iteration, max(2, _STEPS.value // 4))
    rows.append({'rollout': config.rl.rollout, 'dtype': dtype, 'users': config.rl.batch_users,
                 'group_size': config.rl.group_size,
                 'ved_budget': ved_lib.budget(settings.ved, dataset.num_levels),
                 'iteration_s': seconds, 'users_per_s': config.rl.batch_users / seconds})
    logging.info('rl %s', rows[-1])
  return rows


def section_ved_vs_beam(dataset, mesh, _) -> list:
  config = default_config.base_config()
  trie = trie_lib.build_trie(dataset.item_codes, dataset.num_codes)
  rows_index = batching.validation_rows(len(dataset.splits['valid']), _MAX_USERS.value or 1024)
  history = dataset.history_codes('valid')[rows_index]
  cfg = backbone.model_config(config, dataset)
  params = parallel.replicate(decoder.init_params(cfg, jax.random.key(0)), mesh)
  batch = _DECODE_BATCH.value or (256 if accelerator() else 16)
  rl_ved = settings_lib.ved_config(config)
  config.eval.num_beams = 50
  pairs = ((rl_ved, config.rl.group_size), (evaluate.ved_config(config), 50))
  rows = []
  for vcfg, beams in pairs:
    ved_fn = lambda: search.ved_search_split(params, cfg, trie, history, vcfg, batch, mesh=mesh)
    beam_fn = lambda: search.beam_search_split(params, cfg, trie, history, beams, batch, mesh=mesh)
    forwards = timed_split(ved_fn)
    ved_s, beam_s = forwards[0], timed_split(beam_fn)[0]
    rows.append({'ved': dataclasses.asdict(vcfg), 'ved_forwards': forwards[1],
                 'beam_width': beams, 'beam_forwards': evaluate.beam_forwards(dataset, beams),
                 'users': len(history), 'ved_ms_per_user': 1e3 * ved_s / len(history),
                 'beam_ms_per_user': 1e3 * beam_s / len(history), 'ved_over_beam': ved_s / beam_s})
    logging.info('ved vs beam %s', rows[-1])
  return rows


def timed_split(fn) -> tuple[float, float]:
  """(seconds of one whole-split call after a compiling call, mean VED forwards if reported)."""
  fn()
  start = time.perf_counter()
  out = fn()
  seconds = time.perf_counter() - start
  return seconds, (float(np.mean(out[2])) if len(out) > 2 else float('nan'))


def main(argv):
  del argv
  sys.path.insert(0, str(REPO))  # configs/ as a package
  unknown = set(_SECTIONS.value) - set(SECTIONS)
  if unknown:
    raise app.UsageError(f'--sections: unknown {sorted(unknown)}; choose from {SECTIONS}')
  start = time.perf_counter()
  mesh = parallel.make_mesh()
  dataset = amazon.load_dataset('industrial', data_dir())
  result = {'started': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'skipped': [], 'seconds': {}}
  peak = {}
  for name in SECTIONS:
    if name not in _SECTIONS.value:
      continue
    if time.perf_counter() - start > _BUDGET_S.value:
      result['skipped'].append(name)
      continue
    began = time.perf_counter()
    if name == 'devices':
      result[name] = section_devices(dataset, mesh)
    elif name == 'peak':
      result[name] = peak = section_peak(dataset, mesh)
    else:
      result[name] = globals()[f'section_{name}'](dataset, mesh, peak)
    result['seconds'][name] = time.perf_counter() - began
    result['wall_s'] = time.perf_counter() - start
    if _OUT.value:
      path = pathlib.Path(_OUT.value)
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(json.dumps(result, indent=1))
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
