"""Files every stage writes: JSON written atomically, so a crash never leaves a partial file."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile


def _umask() -> int:
  """The process umask (read by setting and restoring it: there is no getter)."""
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def write_json_atomic(path: pathlib.Path, obj, default=None) -> None:
  """Writes JSON through a temp file + rename so a crash never leaves a partial file (mode 0644
  under the usual umask); `default` as json.dump's, for values JSON cannot hold."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'w') as f:
      json.dump(obj, f, indent=1, default=default)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are as readable as any file
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
