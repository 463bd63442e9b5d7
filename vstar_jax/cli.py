"""The command line's words: --help, flag parsing that fails in one line, user errors and exit codes.

Exit codes: 0 done, 1 an unexpected failure (traceback kept: a bug to report) or a diverged
training, 2 a user error (one line on stderr, no traceback), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import ast
import errno
import pathlib
import re
import sys

from absl import flags

USER_ERROR, INTERRUPTED = 2, 130
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'
MODES = {  # default_config.MODES, described
    'baseline': 'most-popular and transition recommenders -> W/eval/{popularity,transition}_test/',
    'sid': 'learn a collision-free codebook from item embeddings -> W/sid/',
    'sft': 'train the decoder (resumes), evaluate -> W/checkpoints/sft/, W/eval/sft_test/',
    'rl': 'V-STAR RL from the SFT checkpoint -> W/checkpoints/rl/, W/eval/rl_test/',
    'eval': 're-evaluate the newest checkpoint -> W/eval/<stage>_test/ (read-only: --out)',
    'recommend': 'top-N items with titles (--config.recommend.history=12,55,301) -> '
                 'W/recommend.json (read-only: --out)',
    'export': 'the newest model as a Hugging Face folder (model.backbone=hf) -> W/export/hf/ '
              '(read-only: --out)',
    'all': 'baseline, sft, rl in order (the default)',
}
HELP_FLAGS = ('-h', '-help', '--help', '-?', '--helpshort', '--helpfull')


class UserError(Exception):
  """A mistake on the command line or in the inputs: printed as one line, exit code 2."""


def config_files() -> list[str]:
  """'  configs/<name>.py  <first docstring line>' for each config file beside the package."""
  lines = []
  for path in sorted(CONFIGS.glob('*.py')):
    doc = ast.get_docstring(ast.parse(path.read_text())) or ''
    lines.append(f'  configs/{path.name:<14}{doc.splitlines()[0] if doc else ""}')
  return lines


def help_text() -> str:
  modes = [f'  {name:<10} {text}' for name, text in MODES.items()]
  return '\n'.join([
      'usage: python -m vstar_jax.main --config=FILE[:ARG] --workdir=W [--config.mode=MODE] '
      '[--config.KEY=VALUE ...]',
      '',
      'modes (--config.mode):', *modes,
      '',
      'config files (--config):', *config_files(),
      '',
      'flags:',
      '  --config=FILE[:ARG]  the config file (required); every knob is --config.KEY=VALUE',
      '  --workdir=W          the run directory: checkpoints, eval/, config.json (how the model was',
      '                       trained: eval and recommend restore it), runs/, logs/, .lock',
      '  --out=DIR            where eval / recommend write when W is read-only',
      '  --print_config       print the resolved config (every knob and its value) and exit',
      '',
      'every knob with its default: python -m vstar_jax.main --config=configs/synthetic.py '
      '--print_config',
  ])


def one_line(text: str) -> str:
  """A multi-line message (a wrapped traceback) as its last line, whitespace collapsed."""
  lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
  if len(lines) > 1 and 'Traceback' in str(text):
    return f'{lines[0].rstrip(":")}: {lines[-1]}'
  return ' '.join(lines)


def _misspelt(error: Exception, argv: list[str]) -> str:
  """`--config.sft.epocs=3` -> '--config.sft.epocs: no such setting (did you mean --config.sft.epochs?)';
  the same for a misspelt section (`--config.sfft.epochs`, which ml_collections reports as a
  KeyError rather than an AttributeError)."""
  text = str(error).replace('\\n', '\n').replace("\\'", "'")
  wrong = re.search(r"'(\w+)'", text)
  guess = re.search(r'Did you mean "(\w+)"', text)
  flag = next((a.split('=')[0] for a in argv if a.startswith('--config.') and wrong
               and wrong.group(1) in a.split('=')[0].split('.')), '--config.?')
  hint = ''
  if guess:
    parts = flag.split('.')
    parts[parts.index(wrong.group(1))] = guess.group(1)
    hint = f' (did you mean {".".join(parts)}?)'
  return f'{flag}: no such setting{hint}; --print_config lists every setting'


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def out_of_space(error: BaseException) -> bool:
  """Whether `error` (or an error it was raised from) is a full disk or quota."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _NO_SPACE:
      return True
    if any(text in str(error) for text in ('No space left on device', 'Disk quota exceeded')):
      return True
    error = error.__cause__ or error.__context__
  return False


def fail(message: str, code: int = USER_ERROR) -> None:
  """Prints `error: message` as one line on stderr and exits with `code`."""
  sys.stderr.write(f'error: {one_line(message)}\n')
  sys.stderr.flush()
  sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with --help (exit 0) and one-line errors (exit 2) instead of tracebacks."""
  if any(a in HELP_FLAGS for a in argv[1:]):
    print(help_text())
    sys.exit(0)
  try:
    rest = flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: an override of a key the config lacks
    fail(_misspelt(e, argv))
  except (flags.Error, OSError, ValueError, TypeError) as e:
    fail(str(e))
  if len(rest) > 1:
    fail(f'unexpected arguments {rest[1:]} (settings are --config.KEY=VALUE)')
  return rest

