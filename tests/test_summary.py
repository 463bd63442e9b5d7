"""The end-of-run table: this run's evaluations (starred) beside the baselines, --out over W."""

import json
import os
import time

from vstar_jax.eval import summary


def _write(root, name, hr10, mtime=None):
  path = root / 'eval' / f'{name}_test' / 'metrics.json'
  path.parent.mkdir(parents=True)
  path.write_text(json.dumps({'HR@3': 0.1, 'NDCG@3': 0.05, 'HR@10': hr10, 'n': 600}))
  if mtime is not None:
    os.utime(path, (mtime, mtime))


def test_table_lists_fresh_evaluations_and_the_baselines(tmp_path):
  w, out = tmp_path / 'w', tmp_path / 'out'
  start = time.time()
  _write(w, 'transition', 0.2, mtime=start - 100)
  _write(w, 'rl', 0.9, mtime=start - 100)   # an older stage: not this run's
  _write(w, 'sft', 0.5, mtime=start - 100)
  _write(out, 'sft', 0.6)                    # this run re-evaluated sft into --out
  lines = summary.table([w, out], 'test', start).splitlines()
  assert lines[0] == 'results on test (* = written by this run)'
  assert [line.split()[0] for line in lines[2:]] == ['transition', 'sft']
  assert lines[3].split()[:3] == ['sft', '*', '600'] and lines[3].split()[-2:] == ['0.6000', '-']
  assert summary.table([w], 'test', start) == ''  # nothing written since the start


def test_an_rl_row_that_kept_the_sft_policy_says_so(tmp_path):
  start = time.time()
  _write(tmp_path, 'sft', 0.5)
  path = tmp_path / 'eval' / 'rl_test' / 'metrics.json'
  path.parent.mkdir(parents=True)
  path.write_text(json.dumps({'HR@10': 0.5, 'n': 600, 'best_step': 0, 'rl_steps': 40}))
  table = summary.table([tmp_path], 'test', start)
  assert table.splitlines()[-1] == ('note: rl kept step 0 (the SFT policy): no RL step beat it on '
                                    'valid NDCG@10 (40 steps); rl_final is what RL ended with')
  path.write_text(json.dumps({'HR@10': 0.6, 'n': 600, 'best_step': 20, 'rl_steps': 40}))
  assert 'note' not in summary.table([tmp_path], 'test', start)
