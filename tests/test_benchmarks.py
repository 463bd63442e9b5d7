"""benchmarks/device_check.py, the prepared accelerator command: every section runs and writes its
JSON (a CPU smoke run on few users; the real run is on a GPU: benchmarks/README.md)."""

import json
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow  # ~4 min on 2 CPU cores: every section compiles its programs in two dtypes
@pytest.mark.realdata
def test_device_check_writes_every_section(data_dir, tmp_path):
  out = tmp_path / 'device_check.json'
  proc = subprocess.run([sys.executable, 'benchmarks/device_check.py', f'--data_dir={data_dir}',
                         f'--out={out}', '--max_users=32', '--steps=2', '--decode_batch=16'],
                        cwd=REPO, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result == json.loads(out.read_text()) and not result['skipped']
  assert result['devices']['backend'] == 'cpu'
  assert {r['dtype'] for r in result['decode']} == {'float32', 'bfloat16'}
  assert len(result['decode']) == 4 and all(r['all_valid'] for r in result['decode'])
  assert all(r['samples_per_s'] > 0 for r in result['sft']) and len(result['rl']) == 2
  pairs = result['ved_vs_beam']
  assert [p['beam_width'] for p in pairs] == [16, 50]
  assert all(p['ved_forwards'] <= p['beam_forwards'] + 1 for p in pairs)
