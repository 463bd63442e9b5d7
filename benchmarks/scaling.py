"""How decode and RL cost grow with catalogue size, history length and VED budget.

* catalogue: synthetic catalogues of N random distinct 3-level SIDs (K=256): trie build
  time, trie table size, beam-50 users/s (the trie is a gather per step, so decode cost
  should not grow with N; memory does, linearly in trie nodes x K).
* history: beam-50 users/s as the history length T grows (prompt = 1 + 3T tokens).
* budget: per-user VED rollout time and one full RL iteration (rollout + rewards +
  advantages + update, 16 users, G=16) for budget multipliers m - the training-time vs
  budget view of the paper's Figure 4.
Random-init 4 x 128 decoder (speed does not depend on the weights).

  python benchmarks/scaling.py --catalogues=10000,100000,1000000 --out=plots
prints one JSON object on its last line and writes <out>/scaling.png.
"""

from __future__ import annotations

import json
import pathlib
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from vstar_jax import default_config  # pylint: disable=g-import-not-at-top
from vstar_jax import parallel
from vstar_jax.data import batching
from vstar_jax.decode import search
from vstar_jax.decode import ved as ved_lib
from vstar_jax.model import decoder
from vstar_jax.rl import rollouts
from vstar_jax.rl import settings as settings_lib
from vstar_jax.rl import step as step_lib
from vstar_jax.sid import trie as trie_lib

_CATALOGUES = flags.DEFINE_list('catalogues', ['10000', '100000', '1000000'], 'Catalogue sizes.')
_HISTORIES = flags.DEFINE_list('histories', ['5', '10', '20', '40'], 'History lengths T.')
_MULTIPLIERS = flags.DEFINE_list('multipliers', ['1', '2', '4', '8'], 'VED budget multipliers.')
_USERS = flags.DEFINE_integer('users', 256, 'Users decoded per measurement.')
_BEAMS = flags.DEFINE_integer('beams', 50, 'Beam width.')
_OUT = flags.DEFINE_string('out', 'plots', 'Folder for scaling.png.')

K, L = 256, 3


def random_catalogue(num_items: int, seed: int = 0) -> np.ndarray:
  """[N, 3] distinct random SIDs, vectorised (draw, dedup, top up)."""
  rng = np.random.default_rng(seed)
  codes = np.zeros((0, L), np.int64)
  while len(codes) < num_items:
    draw = rng.integers(K, size=(2 * (num_items - len(codes)) + 16, L))
    codes = np.unique(np.concatenate([codes, draw]), axis=0)
  return codes[rng.permutation(len(codes))[:num_items]].astype(np.int32)


def histories_from(codes: np.ndarray, users: int, length: int, seed: int = 1) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return codes[rng.integers(len(codes), size=(users, length))]


def time_calls(fn, batches) -> float:
  """Seconds per call after a compile call on the first batch."""
  jax.block_until_ready(fn(batches[0]))
  start = time.perf_counter()
  for b in batches:
    jax.block_until_ready(fn(b))
  return (time.perf_counter() - start) / len(batches)


def beam_users_per_s(params, cfg, trie, history, batch=16) -> float:
  fn = jax.jit(lambda h: search.beam_search(params, cfg, trie, h, _BEAMS.value))
  batches = [history[i:i + batch] for i in range(0, len(history) - batch + 1, batch)]
  return batch / time_calls(fn, batches)


def model(max_history: int):
  cfg = decoder.DecoderConfig(num_levels=L, num_codes=K, max_history=max_history, num_layers=4,
                              d_model=128, num_heads=4, d_ff=512, dropout=0.0)
  return decoder.init_params(cfg, jax.random.key(0)), cfg


def catalogue_rows(users: int):
  params, cfg = model(10)
  rows = []
  for n in (int(x) for x in _CATALOGUES.value):
    codes = random_catalogue(n)
    start = time.perf_counter()
    trie = trie_lib.build_trie(codes, K)
    build = time.perf_counter() - start
    history = histories_from(codes, users, 10)
    rows.append({'items': n, 'trie_nodes': trie.num_nodes, 'trie_build_s': build,
                 'trie_mb': (trie.children.nbytes + trie.prefix.nbytes + trie.leaf_items.nbytes) / 2**20,
                 'beam_users_per_s': beam_users_per_s(params, cfg, jax.device_put(trie), history)})
    logging.info('%s', rows[-1])
  return rows


def history_rows(users: int):
  codes = random_catalogue(10000)
  trie = jax.device_put(trie_lib.build_trie(codes, K))
  rows = []
  for t in (int(x) for x in _HISTORIES.value):
    params, cfg = model(t)
    rows.append({'history': t, 'prompt_tokens': cfg.prompt_len,
                 'beam_users_per_s': beam_users_per_s(params, cfg, trie, histories_from(codes, users, t))})
    logging.info('%s', rows[-1])
  return rows


def budget_rows():
  codes = random_catalogue(10000)
  trie = jax.device_put(trie_lib.build_trie(codes, K))
  params, cfg = model(10)
  users = 16
  history = histories_from(codes, users, 10)
  target = histories_from(codes, users, 1, seed=2)[:, 0]
  mesh = parallel.make_mesh(jax.devices()[:1])
  rows = []
  for m in (float(x) for x in _MULTIPLIERS.value):
    c = default_config.base_config()
    c.ved.multiplier, c.rl.steps, c.rl.batch_users = m, 10, users
    settings = settings_lib.RlSettings.from_config(c)
    ved_fn = jax.jit(lambda h, s=settings: rollouts.ved_rollout(params, trie, h, jnp.arange(users),
                                                       jax.random.key(0), cfg=cfg, settings=s))
    rollout_s = time_calls(ved_fn, [history] * 3) / users
    programs = step_lib.make_programs(cfg, settings, mesh)
    state = parallel.replicate(step_lib.init_state(params, settings, 0), mesh)
    batch = batching.UserBatch(history=history, target=target,
                               target_item=np.zeros(users, np.int32),
                               user_index=np.arange(users, dtype=np.int32))
    batch = parallel.shard_batch(batch, mesh)
    state, _ = programs.iteration(state, batch, trie, None)   # compile
    jax.block_until_ready(state.params)
    start = time.perf_counter()
    for _ in range(3):
      state, metrics = programs.iteration(state, batch, trie, None)
    jax.block_until_ready(state.params)
    iteration_s = (time.perf_counter() - start) / 3
    rows.append({'m': m, 'budget': ved_lib.budget(settings.ved, L),
                 'forwards_per_user': float(jax.device_get(metrics['forwards_per_user'])),
                 'ved_ms_per_user': 1e3 * rollout_s, 'rl_iteration_s': iteration_s,
                 'rl_users_per_s': users / iteration_s})
    logging.info('%s', rows[-1])
  return rows


def main(argv):
  del argv
  result = {'catalogue': catalogue_rows(_USERS.value), 'history': history_rows(_USERS.value),
            'budget': budget_rows(), 'device': jax.devices()[0].platform,
            'model': '4 layers x d_model 128 x 4 heads, random init', 'beams': _BEAMS.value}
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
  c = result['catalogue']
  axes[0].plot([r['items'] for r in c], [r['beam_users_per_s'] for r in c], marker='o', label='users/s')
  axes[0].set_xscale('log')
  axes[0].set_xlabel('catalogue items')
  axes[0].set_ylabel('beam-50 users/s')
  twin = axes[0].twinx()
  twin.plot([r['items'] for r in c], [r['trie_mb'] for r in c], marker='s', color='C1')
  twin.set_ylabel('trie tables (MiB)', color='C1')
  axes[0].set_title('catalogue size')
  h = result['history']
  axes[1].plot([r['history'] for r in h], [r['beam_users_per_s'] for r in h], marker='o')
  axes[1].set_xlabel('history length T (items)')
  axes[1].set_ylabel('beam-50 users/s')
  axes[1].set_title('history length')
  b = result['budget']
  axes[2].plot([r['budget'] for r in b], [r['rl_iteration_s'] for r in b], marker='o', label='RL iteration (16 users)')
  axes[2].plot([r['budget'] for r in b], [r['ved_ms_per_user'] * 16 / 1e3 for r in b], marker='s', label='VED rollout (16 users)')
  axes[2].set_xlabel('VED budget (forwards per user)')
  axes[2].set_ylabel('seconds')
  axes[2].set_title('training time vs budget')
  axes[2].legend()
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out / 'scaling.png', dpi=100)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
