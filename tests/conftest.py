"""Shared pytest fixtures: the real-data directory, small synthetic data, a tiny trained run."""

import os
import pathlib
import subprocess
import sys

import pytest

_SIBLING_DATA = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'amazon'


def real_data_dir():
  """VSTAR_DATA_DIR if set, else the shared checkout beside the repo, else None."""
  env = os.environ.get('VSTAR_DATA_DIR')
  if env:
    return pathlib.Path(env)
  return _SIBLING_DATA if _SIBLING_DATA.is_dir() else None


@pytest.fixture(scope='session')
def data_dir():
  path = real_data_dir()
  if path is None or not path.is_dir():
    pytest.skip('real Amazon data not found: set VSTAR_DATA_DIR')
  return path


REPO = pathlib.Path(__file__).resolve().parents[1]
# A 1-layer, 32-wide decoder on 120 synthetic items: an SFT run of ~15 s on 2 CPU cores.
TINY_SYNTHETIC = ['--config=configs/synthetic.py', '--config.synthetic.num_items=120',
                  '--config.synthetic.num_users=150', '--config.synthetic.num_codes=8',
                  '--config.model.num_layers=1', '--config.model.d_model=32',
                  '--config.model.num_heads=2', '--config.model.d_ff=64',
                  '--config.sft.batch_size=64', '--config.sft.warmup_steps=5',
                  '--config.sft.lr=0.003', '--config.sft.valid_beams=10',
                  '--config.sft.valid_max_rows=50', '--config.eval.batch_size=50',
                  '--config.eval.num_beams=10', '--config.sft.epochs=1']


def run_main(*args, check=True, timeout=600, **kwargs):
  """`python -m vstar_jax.main ARGS` from the repository root -> CompletedProcess."""
  proc = subprocess.run([sys.executable, '-m', 'vstar_jax.main', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout, **kwargs)
  if check and proc.returncode:
    raise AssertionError(f'exit {proc.returncode}: {proc.stderr[-3000:]}')
  return proc


@pytest.fixture(scope='session')
def trained_workdir(tmp_path_factory):
  """A tiny synthetic SFT run, trained once per session through the CLI (tests only read it)."""
  workdir = tmp_path_factory.mktemp('trained') / 'w'
  run_main(*TINY_SYNTHETIC, f'--workdir={workdir}', '--config.mode=sft')
  return workdir


@pytest.fixture(autouse=True, scope='module')
def _free_compiled_programs():
  """Drops jax's compiled executables after each test module: one pytest process compiles
  hundreds of programs, and XLA's CPU code mappings pile up towards the kernel's per-process
  map limit (vm.max_map_count 65530), where a later compile segfaults the whole run (measured:
  test_ved + test_beam leave 36,578 mappings without this, 591 with it)."""
  yield
  import jax
  jax.clear_caches()
