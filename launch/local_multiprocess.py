r"""Starts N processes of one vstar_jax command on this host, joined by jax.distributed on 127.0.0.1.

For trying and testing multi-process runs on one machine (design §6): each process gets
`--cpu_devices` CPU devices of its own, the coordinator address, the process count and its id
(--config.distributed.*), exactly as the processes of a multi-host GPU or TPU run get them
from launch/gpu.sh or the TPU runtime.

  python launch/local_multiprocess.py --processes=2 -- \
      --config=configs/synthetic.py --workdir=workdirs/mp --config.mode=sft

Process 0's output is this command's; process i > 0 writes `<process_logs>/process_<i>.log`
(--process_logs, default: a new folder under the system's temp folder, printed at the start). Exit code: 0 when every
process succeeded, else the first failing process's. If one process fails, the others stop
with its error (vstar_jax.distributed); any still alive after --grace_s are killed.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_PROCESSES = flags.DEFINE_integer('processes', 2, 'Processes to start (>= 1).')
_CPU_DEVICES = flags.DEFINE_integer('cpu_devices', 1, 'CPU devices per process (>= 1).')
_PORT = flags.DEFINE_integer('port', 0, 'Coordinator port on 127.0.0.1 (0: a free one).')
_LOG_DIR = flags.DEFINE_string('process_logs', '', 'Where processes 1..N-1 write their logs.')
_GRACE_S = flags.DEFINE_float('grace_s', 30.0, 'Seconds the others get to stop after a failure.')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_command(main_args: list[str], port: int, num_processes: int, index: int) -> list[str]:
  """`python -m vstar_jax.main MAIN_ARGS` with the --config.distributed.* flags of process `index`."""
  return [sys.executable, '-m', 'vstar_jax.main', *main_args,
          '--config.distributed.enabled=True',
          f'--config.distributed.coordinator=127.0.0.1:{port}',
          f'--config.distributed.num_processes={num_processes}',
          f'--config.distributed.process_id={index}']


def process_env(cpu_devices: int) -> dict:
  """This environment with JAX on CPU and `cpu_devices` devices (other XLA flags kept)."""
  flags_kept = [f for f in os.environ.get('XLA_FLAGS', '').split()
                if not f.startswith('--xla_force_host_platform_device_count')]
  return dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=' '.join(
      flags_kept + [f'--xla_force_host_platform_device_count={cpu_devices}']))


def run(main_args: list[str], num_processes: int, cpu_devices: int, port: int, log_dir: pathlib.Path,
        grace_s: float) -> int:
  """Starts the processes, waits for all; returns the exit code (see the module docstring)."""
  log_dir.mkdir(parents=True, exist_ok=True)
  env = process_env(cpu_devices)
  procs, logs = [], []
  for index in range(num_processes):
    command = process_command(main_args, port, num_processes, index)
    if index == 0:
      procs.append(subprocess.Popen(command, env=env))
    else:
      logs.append(open(log_dir / f'process_{index}.log', 'w'))
      procs.append(subprocess.Popen(command, env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
  failed_at, code = None, 0
  try:
    while any(p.poll() is None for p in procs):
      bad = [p.returncode for p in procs if p.returncode not in (None, 0)]
      if bad and failed_at is None:
        failed_at, code = time.monotonic(), bad[0]
      if failed_at is not None and time.monotonic() - failed_at > grace_s:
        for p in procs:
          if p.poll() is None:
            p.kill()
      time.sleep(0.2)
  except KeyboardInterrupt:
    for p in procs:
      p.send_signal(2)
    for p in procs:
      p.wait()
    return 130
  finally:
    for f in logs:
      f.close()
  return code or next((p.returncode for p in procs if p.returncode), 0)


def main(argv):
  main_args = argv[1:]
  if not main_args:
    raise app.UsageError('pass the flags of python -m vstar_jax.main after --')
  if _PROCESSES.value < 1 or _CPU_DEVICES.value < 1:
    raise app.UsageError('--processes and --cpu_devices must be >= 1')
  log_dir = pathlib.Path(_LOG_DIR.value or tempfile.mkdtemp(prefix='vstar_jax_processes_'))
  if _PROCESSES.value > 1:
    print(f'local_multiprocess: processes 1..{_PROCESSES.value - 1} log to {log_dir}',
          file=sys.stderr)
  return run(main_args, _PROCESSES.value, _CPU_DEVICES.value, _PORT.value or free_port(), log_dir,
             _GRACE_S.value)


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))
