"""The package's import graph runs one way: no module imports from a later layer.

config -> files/parallel/distributed/workdir -> data -> sid -> model -> decode -> eval -> train -> rl ->
pipeline/prepare/recommender -> main/cli. Read from the source (ast), so a late import inside a function
counts too.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'vstar_jax'
LAYERS = [
    ('default_config',),
    ('files', 'parallel', 'distributed', 'workdir', 'interrupts'),
    ('data',),
    ('sid',),
    ('model',),
    ('decode',),
    ('eval', 'baselines'),
    ('train',),
    ('rl',),
    ('pipeline', 'prepare', 'recommender', 'trained'),
    ('main', 'cli', '__init__'),
]


def layer_of(module: str) -> int:
  """Layer index of a dotted module name inside the package (its first component decides)."""
  head = module.split('.')[0]
  for index, names in enumerate(LAYERS):
    if head in names:
      return index
  raise AssertionError(f'vstar_jax.{module} is in no layer of tests/test_layers.py: add it')


def package_modules():
  for path in sorted(PACKAGE.rglob('*.py')):
    parts = path.relative_to(PACKAGE).with_suffix('').parts
    if parts[-1] == '__init__' and len(parts) > 1:
      parts = parts[:-1]
    yield '.'.join(parts), path


def imported_modules(path: pathlib.Path):
  """vstar_jax-internal modules imported by the file (without the 'vstar_jax.' prefix)."""
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module == 'vstar_jax':
        yield from (alias.name for alias in node.names)
      elif node.module.startswith('vstar_jax.'):
        yield node.module[len('vstar_jax.'):]
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith('vstar_jax.'):
          yield alias.name[len('vstar_jax.'):]


@pytest.mark.parametrize('module,path', list(package_modules()), ids=lambda x: str(x))
def test_no_import_from_a_later_layer(module, path):
  own = layer_of(module)
  later = [m for m in imported_modules(path) if layer_of(m) > own]
  assert not later, f'vstar_jax.{module} (layer {own}) imports later layers: {later}'


def test_default_config_is_pure_data():
  assert not list(imported_modules(PACKAGE / 'default_config.py'))


def test_no_module_over_350_lines():
  long = {m: n for m, p in package_modules() if (n := len(p.read_text().splitlines())) > 350}
  assert not long, long
  assert len((PACKAGE / 'rl' / 'loop.py').read_text().splitlines()) < 200


def test_the_check_can_fail():
  assert layer_of('rl.loop') > layer_of('train.sft') > layer_of('model.decoder')
  with pytest.raises(AssertionError, match='in no layer'):
    layer_of('nowhere')
