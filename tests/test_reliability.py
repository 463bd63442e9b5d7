"""Reliability: SIGKILL mid-run then resume, divergence keeps the last good checkpoint, bad config."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from vstar_jax import default_config
from vstar_jax.data import synthetic
from vstar_jax.train import checkpoint as checkpoint_lib
from vstar_jax.train import run_loop
from vstar_jax.train import sft

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = ['--config=configs/synthetic.py', '--config.synthetic.num_items=120',
        '--config.synthetic.num_users=150', '--config.synthetic.num_codes=8',
        '--config.model.num_layers=1', '--config.model.d_model=32', '--config.model.num_heads=2',
        '--config.model.d_ff=64', '--config.sft.batch_size=32', '--config.sft.epochs=3',
        '--config.sft.warmup_steps=5', '--config.sft.checkpoint_every_steps=5',
        '--config.sft.valid_beams=10', '--config.sft.valid_max_rows=50', '--config.eval.batch_size=50',
        '--config.mode=sft']


def _cmd(workdir):
  return [sys.executable, '-m', 'vstar_jax.main', f'--workdir={workdir}', *ARGS]


# ~80 s at idle; CI's resume tests (test_sft, test_loop) check bit-identical resumption in-process.
@pytest.mark.slow
def test_sigkill_then_rerun_matches_uninterrupted(tmp_path):
  subprocess.run(_cmd(tmp_path / 'full'), cwd=REPO, check=True, capture_output=True, timeout=900)
  proc = subprocess.Popen(_cmd(tmp_path / 'killed'), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt = tmp_path / 'killed' / 'checkpoints' / 'sft'
  deadline = time.time() + 600
  # Kill once a mid-run checkpoint beyond the first exists (and before the run can finish).
  while time.time() < deadline and proc.poll() is None:
    steps = [int(p.name) for p in ckpt.glob('*') if p.name.isdigit()] if ckpt.exists() else []
    if any(s >= 10 for s in steps):
      break
    time.sleep(0.2)
  assert proc.poll() is None, 'run finished before it could be killed'
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (tmp_path / 'killed' / 'eval').exists()
  subprocess.run(_cmd(tmp_path / 'killed'), cwd=REPO, check=True, capture_output=True, timeout=900)
  full = json.loads((tmp_path / 'full' / 'eval' / 'sft_test' / 'metrics.json').read_text())
  resumed = json.loads((tmp_path / 'killed' / 'eval' / 'sft_test' / 'metrics.json').read_text())
  for key in ('HR@1', 'HR@10', 'NDCG@10', 'HR@50', 'hit_L1'):
    assert resumed[key] == full[key], key


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
  data = synthetic.make_dataset(num_items=120, num_users=150, num_codes=8, seq_len=8)
  c = default_config.base_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 1, 32, 2, 64
  c.sft.batch_size, c.sft.epochs, c.sft.warmup_steps, c.sft.valid_beams = 32, 2, 2, 10
  sft.train(c, data, tmp_path, stop_at_step=6)
  c.sft.lr = 1e30          # the resumed run blows up
  with pytest.raises(run_loop.TrainingDiverged, match=r'loss is (nan|inf).*last good checkpoint \(step 6\)'):
    sft.train(c, data, tmp_path)
  ckpt = checkpoint_lib.Checkpointer(tmp_path / 'checkpoints' / 'sft', best_metric=sft.BEST_METRIC)
  state, _ = ckpt.restore_latest(sft.state_template(c, data))
  ckpt.close()
  assert int(state.step) == 6
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_impossible_beam_count_is_rejected_before_work(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'vstar_jax.main', f'--workdir={tmp_path}',
                         '--config=configs/synthetic.py', '--config.synthetic.num_items=40',
                         '--config.mode=sft', '--config.eval.num_beams=100'],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert '--config.eval.num_beams=100 exceeds the 40 distinct SIDs' in proc.stderr
  assert not (tmp_path / 'checkpoints').exists()


@pytest.fixture
def small_disk(tmp_path):
  """A 1 MiB tmpfs (root only; skipped where mounting is not allowed)."""
  mount = tmp_path / 'disk'
  mount.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(mount)],
                    capture_output=True).returncode:
    pytest.skip('cannot mount a small tmpfs here (needs root)')
  yield mount
  subprocess.run(['umount', '-l', str(mount)], check=False)


def test_a_full_disk_is_one_line_and_the_record_is_finished_or_marked_later(small_disk):
  """SFT's first checkpoint does not fit on the 1 MiB disk: one line naming the cause and the
  resume, no traceback; the run record says it failed (or, when even that could not be
  written, the next run marks it killed)."""
  workdir = small_disk / 'w'
  proc = subprocess.run(_cmd(workdir), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: no space left on the device') and 'run the same command' in last
  assert 'MiB free' in last  # the checkpoint's size and the free space, checked before writing
  assert len([l for l in proc.stderr.splitlines() if l.startswith(('E', 'error'))]) < 10
  record, = [json.loads(p.read_text()) for p in (workdir / 'runs').glob('*.json')]
  if record['status'] == 'running':  # the disk had no room for the record's last write
    from vstar_jax import workdir as workdir_lib
    assert workdir_lib.mark_dead_runs(workdir)
    record, = [json.loads(p.read_text()) for p in (workdir / 'runs').glob('*.json')]
    assert record['status'] == 'killed'
  else:
    assert record['status'] == 'failed' and record['exit_code'] == 1
