"""Recommender latency on a trained workdir: ms per user after the first (compiling) call, and
the wall time of one `--config.mode=recommend` CLI call (process start to exit).

  python benchmarks/recommend.py --workdir=W [--users=100 --k=10 --repeats=5]

Histories are the first --users rows of W's test split. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

import vstar_jax

REPO = pathlib.Path(__file__).resolve().parents[1]
_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir the CLI trained (sft or rl).')
_USERS = flags.DEFINE_integer('users', 100, 'Histories per recommend() call.')
_K = flags.DEFINE_integer('k', 10, 'Items per history.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls after the first; the median is reported.')


def cli_wall_s(workdir: str, history: list[int], k: int, out: str) -> float:
  """Seconds of one `python -m vstar_jax.main --config.mode=recommend` (no model flags)."""
  start = time.perf_counter()
  subprocess.run([sys.executable, '-m', 'vstar_jax.main', '--config=configs/synthetic.py',
                  f'--workdir={workdir}', '--config.mode=recommend', f'--out={out}',
                  f'--config.recommend.history={",".join(map(str, history))}',
                  f'--config.recommend.top_n={k}'], cwd=REPO, check=True, capture_output=True)
  return time.perf_counter() - start


def main(argv):
  del argv
  start = time.perf_counter()
  rec = vstar_jax.Recommender.load(_WORKDIR.value)
  load_s = time.perf_counter() - start
  split = rec.dataset.splits['test']
  rows = range(min(_USERS.value, len(split)))
  histories = [[int(i) for i in split.history_items[r] if i >= 0] for r in rows]
  start = time.perf_counter()
  rec.recommend(histories, k=_K.value)
  first_s = time.perf_counter() - start
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    results = rec.recommend(histories, k=_K.value)
    times.append(time.perf_counter() - start)
  assert all(len({r['item_id'] for r in items}) == _K.value for items in results)
  out = pathlib.Path(_WORKDIR.value) / 'benchmark_recommend'
  cli = cli_wall_s(_WORKDIR.value, histories[0], _K.value, str(out))
  call_s = statistics.median(times)
  print(json.dumps({
      'workdir': _WORKDIR.value, 'stage': rec.stage, 'model': {
          'layers': rec.cfg.num_layers, 'd_model': rec.cfg.d_model, 'heads': rec.cfg.num_heads},
      'items': rec.dataset.num_items, 'users': len(histories), 'k': _K.value,
      'load_s': round(load_s, 3), 'first_call_s': round(first_s, 3),
      'call_s_median': round(call_s, 4), 'call_s_all': [round(t, 4) for t in times],
      'ms_per_user': round(1000 * call_s / len(histories), 3), 'cli_recommend_wall_s': round(cli, 2),
      'load_avg': [round(x, 2) for x in os.getloadavg()], 'cpus': os.cpu_count()}))


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
