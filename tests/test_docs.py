"""The commands in README.md and docs/**/*.md run as written on today's code.

Every `python -m vstar_jax.main ...` command (in a code block or an inline code span; `\\`
continuations joined, `# comments` dropped), every `python launch/sweep.py ... -- <main flags>`
(each grid point becomes the main command the sweep would run) and every launcher command
whose flags after `--` are main's is parsed as the CLI parses it: the named config file is
loaded with its `:arg` (ml_collections.config_flags, as main.py does) and every
`--config.a.b=value` override applied, so a misspelt or moved key, or a value of the wrong
type, fails here naming the file, line and flag. The resolved config then passes the CLI's
own validation (`pipeline.validate`: modes, exactly one of rl.steps / rl.epochs, ...). Any
other `--config.a.b=` fragment in prose must name a real key. Scripts (`benchmarks/X.py`,
`launch/X`) named in a command must exist, with the flags they define. The headline table
in README.md must equal what docs/headline.py builds from its metrics.json files.

Shell variables ($W) and placeholders (<industrial|office> expands to each; <D> is a
variable) stand for values: their keys are checked, their values are not.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import itertools
import pathlib
import re
import shlex
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from vstar_jax import default_config

# ml_collections loads config files with the deprecated load_module().
pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / 'README.md', *sorted((ROOT / 'docs').rglob('*.md'))]
MAIN = ('python', '-m', 'vstar_jax.main')
MAIN_FLAGS = {'config', 'workdir', 'out', 'print_config', 'help'}
# Launchers whose flags after `--` are python -m vstar_jax.main's.
PASS_THROUGH = {'launch/sweep.py', 'launch/local_multiprocess.py', 'launch/gpu.sh',
                'launch/tpu_pod.sh'}
SWEEP_DEFAULT_CONFIG = 'configs/amazon.py:industrial'  # launch/sweep.py's --config default
# Wrong on purpose: the docs show what a misspelt override prints.
DELIBERATE = {'--config.sft.epocs', '--config.sfft.epochs'}
SEPARATORS = {'&&', '||', ';', '|'}


@dataclasses.dataclass(frozen=True)
class Command:
  path: pathlib.Path
  line: int
  tokens: tuple[str, ...]

  @property
  def where(self) -> str:
    return f'{self.path.relative_to(ROOT)}:{self.line}'


def _expand_placeholders(text: str) -> list[str]:
  """'<industrial|office>' -> one text per alternative; '<D>' -> '$D' (a value)."""
  texts = [text]
  while True:
    match = next((m for t in texts for m in [re.search(r'<([\w.-]+(?:\|[\w.-]+)+)>', t)] if m), None)
    if not match:
      break
    texts = [t.replace(match.group(0), alt, 1) if match.group(0) in t else t
             for t in texts for alt in match.group(1).split('|')]
    texts = list(dict.fromkeys(texts))
  return [re.sub(r'<([A-Za-z_][\w-]*)>', lambda m: '$' + m.group(1).upper().replace('-', '_'), t)
          for t in texts]


def _split_commands(text: str) -> list[list[str]]:
  """Shell words of each command in `text` (comments dropped, split at && || ; |)."""
  lexer = shlex.shlex(text, posix=True, punctuation_chars=';&|')
  lexer.whitespace_split = True
  lexer.commenters = '#'
  try:
    words = list(lexer)
  except ValueError:  # unbalanced quotes: prose, not a command
    return []
  commands, current = [], []
  for word in words:
    if word in SEPARATORS:
      commands.append(current)
      current = []
    else:
      current.append(word)
  return [c for c in commands + [current] if c]


def _strip_env(words: list[str]) -> list[str]:
  """Drops leading VAR=value assignments and a `$ ` prompt."""
  i = 0
  while i < len(words) and (words[i] == '$' or re.fullmatch(r'[A-Za-z_]\w*=.*', words[i])):
    i += 1
  return words[i:]


def _code_texts(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line, text) of every fenced block's logical lines and every inline code span."""
  lines = path.read_text().splitlines()
  found, prose, in_fence, pending, start = [], [], False, '', 0
  for number, line in enumerate(lines, 1):
    if line.lstrip().startswith('```'):
      in_fence = not in_fence
      prose.append((number, ''))
      continue
    if in_fence:
      if not pending:
        start = number
      if line.rstrip().endswith('\\'):
        pending += line.rstrip()[:-1] + ' '
        continue
      found.append((start, pending + line))
      pending = ''
    else:
      prose.append((number, line))
  # Inline spans may wrap inside a paragraph: scan each paragraph as one text.
  paragraph, first = [], 0
  for number, line in prose + [(len(lines) + 1, '')]:
    if line.strip():
      if not paragraph:
        first = number
      paragraph.append(line)
      continue
    text = '\n'.join(paragraph)
    for span in re.finditer(r'(`+)(.+?)\1', text, flags=re.S):
      found.append((first + text[:span.start()].count('\n'), span.group(2).replace('\n', ' ')))
    paragraph = []
  return found


def _commands_and_fragments():
  commands, fragments = [], []
  for path in DOC_FILES:
    for line, text in _code_texts(path):
      for variant in _expand_placeholders(text):
        for words in _split_commands(variant):
          words = _strip_env(words)
          if tuple(words[:3]) == MAIN or (words[:1] == ['python'] and words[1:2] and (
              words[1] in PASS_THROUGH or words[1].startswith('benchmarks/'))) or (
              words[:1] and words[0] in PASS_THROUGH):
            commands.append(Command(path, line, tuple(words)))
          else:
            for word in words:
              flag = re.match(r'--config\.[A-Za-z_$][\w.$]*\w', word)
              if flag and '$' not in flag.group(0):
                fragments.append((f'{path.relative_to(ROOT)}:{line}', flag.group(0)))
  return list(dict.fromkeys(commands)), list(dict.fromkeys(fragments))


COMMANDS, FRAGMENTS = _commands_and_fragments()


def _load_module(relative: str, name: str):
  if name not in sys.modules:
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[name])
  return sys.modules[name]


sweep = _load_module('launch/sweep.py', 'docs_test_sweep')


def _defined_flags(script: pathlib.Path, seen=()) -> set[str]:
  """The absl flags a script defines, with those of the sibling scripts it imports (empty: it
  defines none, or not with absl)."""
  text = script.read_text()
  names = set(re.findall(r"DEFINE_\w+\(\s*'([\w-]+)'", text))
  for sibling in re.findall(r'^(?:import|from) (\w+)', text, flags=re.M):
    path = script.parent / f'{sibling}.py'
    if path.is_file() and path not in seen:
      names |= _defined_flags(path, (*seen, script))
  return names


def _flag_name(word: str) -> str:
  return word.lstrip('-').split('=', 1)[0]


def _has_key(config, dotted: str) -> bool:
  node = config
  for part in dotted.split('.'):
    if not hasattr(node, 'keys') or part not in node.keys():
      return False
    node = node[part]
  return True


def _config_flag(argv: list[str]):
  """The config main.py's --config flag holds after parsing argv (ml_collections.config_flags)."""
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=values, sys_argv=argv)
  values(argv)
  return values['config'].value


@functools.lru_cache(maxsize=None)
def _config_file(spec: str):
  """The config a --config=FILE[:ARG] names, without overrides (read, never changed)."""
  return _config_flag(['main', f'--config={ROOT / spec}'])


def _parse_main(args: list[str], where: str):
  """The config `python -m vstar_jax.main <args>` would run (config_flags, as main.py)."""
  if '--help' in args:
    return None
  config_args = [a for a in args if a.startswith('--config=')]
  assert len(config_args) == 1, f'{where}: needs exactly one --config=FILE[:ARG], got {config_args}'
  spec = config_args[0].split('=', 1)[1]
  generic = '$' in spec  # a usage line (--config=<file>): keys checked against the defaults
  if not generic:
    file = spec.split(':', 1)[0]
    assert (ROOT / file).is_file(), f'{where}: --config names {file}, which does not exist'
  base = default_config.base_config() if generic else _config_file(spec)
  overrides = []
  for arg in args:
    if arg in ('--', '--help') or arg.startswith('--config='):
      continue
    assert arg.startswith('--'), f'{where}: stray argument {arg!r} (main takes --flags only)'
    name = _flag_name(arg)
    if not name.startswith('config.'):
      assert name.removeprefix('no') in MAIN_FLAGS, f'{where}: {arg!r} is not a flag of vstar_jax.main'
      continue
    if arg.split('=', 1)[0] in DELIBERATE:
      return None
    key = name[len('config.'):]
    assert _has_key(base, key), (f'{where}: {arg.split("=", 1)[0]} is not a setting of {spec} '
                                 '(python -m vstar_jax.main --config=... --print_config lists them)')
    if key == 'model.hf_path':  # a checkpoint the reader downloads: the test fixture stands in
      arg = f'--config.model.hf_path={ROOT / "tests" / "fixtures" / "hf" / "qwen2_sid"}'
    if '$' not in arg:  # a shell variable's value is not checked
      overrides.append(arg)
  if generic:
    return None
  try:
    return _config_flag(['main', f'--config={ROOT / spec}', *overrides])
  except Exception as e:  # pylint: disable=broad-except
    pytest.fail(f'{where}: {shlex.join(overrides)} does not parse: {e}')


def _main_invocations(command: Command) -> list[tuple[str, list[str]]]:
  """(label, main's args) of every vstar_jax.main call the command makes."""
  words, where = list(command.tokens), command.where
  if tuple(words[:3]) == MAIN:
    return [(where, words[3:])] if words[3:] else []  # bare: the module named in prose
  program = words[1] if words[0] == 'python' else words[0]
  own, rest = (words[words.index(program) + 1:], [])
  if '--' in own:
    own, rest = own[:own.index('--')], own[own.index('--') + 1:]
  if program != 'launch/sweep.py':
    return [(where, rest)] if rest else []
  options = {_flag_name(w): (w.split('=', 1)[1] if '=' in w else '') for w in own}
  defined = _defined_flags(ROOT / program)
  for name in options:
    assert name.removeprefix('no') in defined, f'{where}: {program} has no flag --{name}'
  try:
    grid = sweep.parse_grid(options.get('grid', ''))
    sweep.check_extra(rest, grid)
  except ValueError as e:  # what launch/sweep.py would refuse
    pytest.fail(f'{where}: launch/sweep.py refuses it: {e}')
  config = options.get('config', SWEEP_DEFAULT_CONFIG)
  invocations = []
  for combo in itertools.product(*(values for _, values in grid)):
    run = sweep.Run(0, tuple(zip((k for k, _ in grid), combo)))
    # A --summarize call (no flags after --) too: its grid has to name real settings.
    invocations.append((f'{where} [{run.label}]',
                        sweep.command([], config, pathlib.Path('$R'), run, rest)))
  return invocations


def test_docs_have_commands():
  mains = [c for c in COMMANDS if tuple(c.tokens[:3]) == MAIN]
  sweeps = [c for c in COMMANDS if 'launch/sweep.py' in c.tokens[:2]]
  assert len(mains) >= 20 and len(sweeps) >= 20, (len(mains), len(sweeps))


@pytest.mark.parametrize('command', COMMANDS, ids=lambda c: c.where)
def test_command_runs_as_written(command):
  words = list(command.tokens)
  for word in words:
    for script in re.findall(r'(?:^|[\s=\'"])((?:launch|benchmarks)/[\w.-]+)', ' ' + word):
      assert (ROOT / script).exists(), f'{command.where}: {script} does not exist'
  if words[0] == 'python' and words[1].startswith('benchmarks/'):
    defined = _defined_flags(ROOT / words[1])
    for word in words[2:]:
      if defined and word.startswith('--'):
        assert _flag_name(word).removeprefix('no') in defined, (
            f'{command.where}: {words[1]} has no flag {word.split("=", 1)[0]}')
    return
  from vstar_jax import pipeline  # pylint: disable=import-outside-toplevel
  for where, args in _main_invocations(command):
    config = _parse_main(args, where)
    if config is None:
      continue
    try:
      pipeline.validate(config)
    except ValueError as e:
      pytest.fail(f'{where}: the CLI refuses it: {e}')


@pytest.mark.parametrize('where,fragment', FRAGMENTS, ids=[w for w, _ in FRAGMENTS])
def test_flag_fragment_names_a_setting(where, fragment):
  flag = fragment.split('=', 1)[0]
  if flag in DELIBERATE:
    return
  assert _has_key(default_config.base_config(), flag[len('--config.'):]), (
      f'{where}: {flag} is not a setting (python -m vstar_jax.main --config=... --print_config)')


def test_links_resolve():
  for path in DOC_FILES:
    text = re.sub(r'```.*?```', '', path.read_text(), flags=re.S)
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
      if re.match(r'[a-z]+:', target) or target.startswith('#'):
        continue
      file = (path.parent / target.split('#', 1)[0]).resolve()
      assert file.exists(), f'{path.relative_to(ROOT)}: link to {target}, which does not exist'


def test_readme_is_a_front_page():
  assert len((ROOT / 'README.md').read_text().splitlines()) <= 300


def test_headline_table_is_current():
  headline = _load_module('docs/headline.py', 'docs_test_headline')
  readme = (ROOT / 'README.md').read_text()
  assert headline.rewrite(readme, headline.build(headline.DEFAULT_ROOT)) == readme, (
      'README.md headline table differs from docs/results/headline: python docs/headline.py')
