"""A run's workdir: the training config it records, a record and a log per invocation, a lock.

  W/config.json                the resolved config of the last run that trained a model (sid,
                               sft, rl, all), written when that stage's training is done; eval,
                               recommend and the benchmarks restore model, data and SIDs from it
  W/runs/<stamp>-<mode>.json   every invocation: argv, resolved config, start/end, exit status
  W/logs/<stamp>-<mode>.log    its log (the lines that also go to stderr)
  W/.lock                      flock-ed by the one writing run, which names itself in it

The read-only modes (eval, recommend) take no lock and, when W is not writable, write their
outputs, record and log under --out instead.
"""

from __future__ import annotations

import fcntl
import json
import logging as logging_std
import os
import pathlib
import socket
import time

from absl import logging
import ml_collections

from vstar_jax import default_config
from vstar_jax import distributed
from vstar_jax import files

CONFIG_FILE = 'config.json'
TRAINING_MODES = ('sid', 'sft', 'rl', 'all')
READ_ONLY_MODES = ('eval', 'recommend', 'export')
# What the trained model depends on: eval and recommend take these from the training record.
RECORDED = ('dataset', 'seed', 'data', 'synthetic', 'sid', 'model', 'sft', 'rl')
# Keys older records hold under another name: old key -> (new key, old value -> new value).
# A record keeps saying how its model was trained after a knob moves or is renamed.
RENAMED = {
    'rl.ved': ('ved', {}),
    'rl.value_targets': ('rl.value_target', {'prefix': 'dense_prefix', 'reward': 'rl_reward'}),
}
# Keys older records hold that no config has any more (launch settings, now config.distributed).
# What is not RECORDED (eval, recommend, ved, distributed) is the command's.
RETIRED = ('rl.distributed',)


class WorkdirError(ValueError):
  """A workdir (or --out) that cannot be used; the message says which and why."""


class QuietLibraries(logging_std.Filter):
  """Drops orbax's per-save INFO chatter, and its warnings and errors are one line each (no
  traceback: a failing save or restore surfaces in the main thread, which names the cause);
  our own progress lines stay readable."""

  def filter(self, record):
    if record.pathname.endswith('xla_bridge.py') and record.levelno < logging_std.WARNING:
      return False  # "Unable to initialize backend 'tpu'" on every machine without one
    if '/orbax/' not in record.pathname:
      return True
    if record.levelno < logging_std.WARNING or 'directory is read only' in str(record.msg):
      return False  # chatter, and the notice every read-only restore (eval, recommend) gets
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    record.msg, record.args = record.getMessage().splitlines()[0][:500], None
    return True


def _merge(into: ml_collections.ConfigDict, values: dict) -> None:
  """Recorded values onto a config: knobs added since the record keep their defaults, and keys
  only a config file defines (configs/prepared.py's data.name) come back too."""
  for key, value in values.items():
    if isinstance(value, dict) and isinstance(into.get(key), ml_collections.ConfigDict):
      _merge(into[key], value)
    elif isinstance(value, dict):
      into[key] = ml_collections.ConfigDict(value)
    else:
      into[key] = tuple(value) if isinstance(value, list) else value


def _pop(values: dict, dotted: str):
  """Removes and returns values[a][b] for 'a.b' (None when absent)."""
  *sections, name = dotted.split('.')
  for section in sections:
    values = values.get(section, {})
  return values.pop(name, None)


def _recorded(values: dict) -> ml_collections.ConfigDict:
  """A recorded config dict on today's defaults, renamed keys moved, retired keys dropped."""
  for key in RETIRED:
    _pop(values, key)
  for old, (new, value_map) in RENAMED.items():
    value = _pop(values, old)
    if value is None:
      continue
    *sections, name = new.split('.')
    target = values
    for section in sections:
      target = target.setdefault(section, {})
    if name not in target:  # a record that has both keeps the new one
      target[name] = value_map.get(value, value) if isinstance(value, str) else value
  config = default_config.base_config()
  _merge(config, values)
  return config


def training_config(workdir: pathlib.Path) -> ml_collections.ConfigDict | None:
  """How W's model was trained: W/config.json, else (a first training run that was stopped
  before it finished) the config of W's newest training invocation; None if W has neither."""
  workdir = pathlib.Path(workdir)
  if (workdir / CONFIG_FILE).is_file():
    return _recorded(json.loads((workdir / CONFIG_FILE).read_text(encoding='utf-8-sig')))
  runs = sorted((workdir / 'runs').glob('*.json')) if (workdir / 'runs').is_dir() else []
  for path in reversed(runs):
    record = json.loads(path.read_text())
    if record.get('mode') in TRAINING_MODES and record.get('config'):
      return _recorded(record['config'])
  return None


def record_training(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """Writes W/config.json: the config of the training that just finished (process 0 only)."""
  if distributed.is_writer():
    files.write_json_atomic(pathlib.Path(workdir) / CONFIG_FILE, config.to_dict(), default=str)


def flat(config: ml_collections.ConfigDict, prefix: str = '') -> dict:
  """{'sft.epochs': 6, ...}: every knob by its dotted name."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def resolve_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """`config` with W's recorded model, data and SID settings (a copy; logs what they replaced).

  The data folder stays the command's when it names one (the data may have moved).
  """
  recorded = training_config(workdir)
  if recorded is None:
    logging.warning('%s records no training config (%s): using this command\'s model settings',
                    workdir, CONFIG_FILE)
    return config
  resolved = ml_collections.ConfigDict(config.to_dict())
  for key in RECORDED:
    resolved[key] = recorded[key]
  resolved.data_dir = config.data_dir or recorded.data_dir
  before, after = flat(config), flat(resolved)
  changed = [f'{k}={before[k]!r} -> {after[k]!r}' for k in after if before.get(k) != after[k]]
  logging.info('model, data and SID settings from %s%s', pathlib.Path(workdir) / CONFIG_FILE,
               f' (replacing {len(changed)} of this command\'s: {"; ".join(changed[:8])}'
               f'{"; ..." if len(changed) > 8 else ""})' if changed else '')
  return resolved


def _writable(path: pathlib.Path) -> bool:
  """Whether files can be created in `path` (or, if it does not exist yet, in its parent)."""
  path = pathlib.Path(path).absolute()
  while not path.exists():
    path = path.parent
  return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def output_dir(workdir: pathlib.Path, mode: str, out: str = '',
               pretrained: bool = False) -> pathlib.Path:
  """Where this invocation writes: W, or --out for a read-only mode (needed when W is read-only).

  pretrained: the model is a pretrained checkpoint (model.backbone=hf), so eval and recommend
  may start in a new W (they evaluate the checkpoint as it is).
  """
  workdir = pathlib.Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f'--workdir={workdir} is a file, not a directory')
  if mode not in READ_ONLY_MODES:
    if out:
      raise WorkdirError(f'--out is for the read-only modes {READ_ONLY_MODES}; --config.mode={mode} '
                         'writes into --workdir')
    if not _writable(workdir):
      raise WorkdirError(f'--workdir={workdir} is not writable (--config.mode={mode} writes '
                         'checkpoints and outputs there)')
    return workdir
  if not workdir.is_dir() and not pretrained:
    raise WorkdirError(f'--workdir={workdir} does not exist: train a model there first '
                       '(--config.mode=sft)')
  if out:
    if not _writable(pathlib.Path(out)):
      raise WorkdirError(f'--out={out} is not writable')
    return pathlib.Path(out)
  if not _writable(workdir):
    raise WorkdirError(f'--workdir={workdir} is not writable: pass --out=DIR for the '
                       f'{mode} outputs')
  workdir.mkdir(parents=True, exist_ok=True)
  return workdir


class WorkdirBusy(WorkdirError):
  """Another writing run holds W's lock."""


class Lock:
  """An exclusive flock on W/.lock, held by one writing run; a second fails at once, naming it."""

  def __init__(self, workdir: pathlib.Path, command: str):
    path = pathlib.Path(workdir) / '.lock'
    path.parent.mkdir(parents=True, exist_ok=True)
    self._file = open(path, 'a+', encoding='utf-8')
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.close()
      holder = path.read_text(encoding='utf-8').strip() or 'another process'
      raise WorkdirBusy(f'--workdir={workdir} is in use by {holder}; wait for it to finish or '
                        'use another --workdir') from None
    self._file.truncate(0)
    self._file.write(f'pid {os.getpid()} on {socket.gethostname()} ({command})\n')
    self._file.flush()

  def release(self) -> None:
    self._file.truncate(0)
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


def mark_dead_runs(root: pathlib.Path) -> list[pathlib.Path]:
  """Records of this host still 'running' whose process is gone (SIGKILL, out of memory, a
  full disk when it tried to finish) become status 'killed'; returns the records changed."""
  changed = []
  for path in sorted(pathlib.Path(root, 'runs').glob('*.json')):
    try:
      record = json.loads(path.read_text())
    except (OSError, ValueError):
      continue
    if (record.get('status') != 'running' or record.get('host') != socket.gethostname()
        or record.get('pid') == os.getpid() or _alive(int(record.get('pid', 0)))):
      continue
    record.update(status='killed', exit_code=None,
                  error='the process ended without finishing this record (killed, out of '
                        f'memory or out of disk); noticed at {time.strftime("%Y-%m-%dT%H:%M:%S%z")}')
    files.write_json_atomic(path, record, default=str)
    changed.append(path)
  return changed


def _stamp(t: float) -> str:
  return time.strftime('%Y%m%d-%H%M%S', time.localtime(t)) + f'.{int(t * 1000) % 1000:03d}'


class Invocation:
  """This command's record (runs/<stamp>-<mode>.json) and log (logs/<stamp>-<mode>.log) under `root`.

  write=False (the processes of a multi-process run but process 0) keeps the record in memory
  only: one writer per run.
  """

  def __init__(self, root: pathlib.Path, mode: str, argv: list[str], workdir: pathlib.Path,
               write: bool = True):
    self.start = time.time()
    self.write = write
    name = f'{_stamp(self.start)}-{mode}'
    root = pathlib.Path(root)
    self.record_path = root / 'runs' / f'{name}.json'
    self.log_path = root / 'logs' / f'{name}.log'
    self.record = {'mode': mode, 'argv': list(argv), 'cwd': os.getcwd(), 'pid': os.getpid(),
                   'host': socket.gethostname(), 'workdir': str(workdir), 'out': str(root),
                   'start': time.strftime('%Y-%m-%dT%H:%M:%S%z', time.localtime(self.start)),
                   'status': 'running', 'log': str(self.log_path.relative_to(root)), 'config': None}
    self._handler = None
    if not write:
      return
    mark_dead_runs(root)
    files.write_json_atomic(self.record_path, self.record)
    self.log_path.parent.mkdir(parents=True, exist_ok=True)
    self._handler = logging_std.FileHandler(self.log_path, encoding='utf-8')
    self._handler.setFormatter(logging.PythonFormatter())
    self._handler.addFilter(QuietLibraries())
    logging_std.getLogger().addHandler(self._handler)

  def set_config(self, config: ml_collections.ConfigDict) -> None:
    """Records the resolved config this invocation runs with."""
    self.record['config'] = config.to_dict()
    if self.write:
      files.write_json_atomic(self.record_path, self.record, default=str)

  def note(self, text: str) -> None:
    """Plain text into the log only (an error already printed, the summary table)."""
    if self._handler is None:
      return
    self._handler.acquire()
    try:
      self._handler.stream.write(text.rstrip('\n') + '\n')
      self._handler.flush()
    finally:
      self._handler.release()

  def finish(self, status: str, exit_code: int, error: str = '') -> None:
    """Completes the record ('ok' | 'user_error' | 'failed' | 'interrupted') and closes the log."""
    end = time.time()
    self.record.update(status=status, exit_code=exit_code, error=error,
                       end=time.strftime('%Y-%m-%dT%H:%M:%S%z', time.localtime(end)),
                       wall_s=round(end - self.start, 3))
    if self._handler is None:
      return
    files.write_json_atomic(self.record_path, self.record, default=str)
    logging_std.getLogger().removeHandler(self._handler)
    self._handler.close()
    self._handler = None
