"""The package's imports run one way: this test parses every module (imports inside functions
included) and fails naming each edge that breaks the layering, and any cycle."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'vidlang_jax'

# Each module group and the groups it may import (besides itself). Bottom first.
ALLOWED = {
    'floor': set(),  # ops, sharding, registry, pixels, config, metrics, paths, distributed, xla_cpu
    'masking': {'floor'},
    'losses': {'floor'},
    'optimizer': {'floor'},
    'checkpoint': {'floor'},
    'data': {'floor'},
    'models': {'floor', 'masking', 'losses'},
    'inputs': {'floor', 'data', 'models', 'checkpoint'},
    'generate': {'floor', 'data', 'models', 'checkpoint', 'inputs'},
    'evaluators': {'floor', 'data', 'models', 'losses', 'masking', 'inputs', 'generate',
                   'checkpoint'},
    'guards': {'floor', 'data'},
    'flops': {'floor', 'models'},
    'train': {'floor', 'data', 'models', 'losses', 'masking', 'optimizer', 'checkpoint',
              'inputs', 'evaluators', 'guards'},
    'release': {'floor', 'data', 'train', 'checkpoint'},
    'convert': {'floor', 'masking', 'release'},
    'aot': {'floor', 'train'},
    'main': {'floor', 'data', 'train', 'checkpoint', 'release', 'convert', 'aot'},
}
FLOOR = {'ops', 'sharding', 'registry', 'pixels', 'config', 'metrics', 'paths', 'distributed',
         'xla_cpu'}


def group(module: str) -> str:
  """'vidlang_jax.data.pipeline' -> 'data'; the package root and __main__ belong to main."""
  parts = module.split('.')
  top = parts[1] if len(parts) > 1 else '__init__'
  if top in FLOOR:
    return 'floor'
  if top in ('__init__', '__main__'):
    return 'main'
  return top


def module_name(path: pathlib.Path, package: pathlib.Path = PACKAGE) -> str:
  parts = path.relative_to(package.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imports(path: pathlib.Path, package: pathlib.Path = PACKAGE) -> set[str]:
  """Every vidlang_jax module `path` imports, anywhere in the file (`from a import b` counts
  as `a.b` when `a.b` is a module)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith('vidlang_jax')}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
        'vidlang_jax'):
      for alias in node.names:
        sub = f'{node.module}.{alias.name}'
        is_module = (package.parent / (sub.replace('.', '/') + '.py')).exists() or (
            package.parent / sub.replace('.', '/') / '__init__.py').exists()
        found.add(sub if is_module else node.module)
  return found


def import_graph(package: pathlib.Path = PACKAGE) -> dict[str, set[str]]:
  return {module_name(p, package): imports(p, package) for p in sorted(package.rglob('*.py'))}


def violations(graph: dict[str, set[str]]) -> list[str]:
  bad = []
  for module, targets in graph.items():
    source = group(module)
    for target in sorted(targets):
      if group(target) != source and group(target) not in ALLOWED[source]:
        bad.append(f'{module} -> {target} ({source} may not import {group(target)})')
  return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Module-level import cycles (each found once, from its first module in sorted order)."""
  found, state = [], {}

  def visit(node, stack):
    state[node] = 'open'
    for target in sorted(graph.get(node, ())):
      if state.get(target) == 'open':
        found.append(stack[stack.index(target):] + [target])
      elif target not in state:
        visit(target, stack + [target])
    state[node] = 'done'

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  return found


def test_every_module_has_a_layer():
  unknown = sorted({group(m) for m in import_graph()} - set(ALLOWED))
  assert not unknown, f'modules in no layer of ALLOWED: {unknown}'


def test_imports_run_one_way():
  bad = violations(import_graph())
  assert not bad, 'forbidden imports:\n  ' + '\n  '.join(bad)


def test_no_import_cycles():
  found = cycles(import_graph())
  assert not found, 'import cycles:\n  ' + '\n  '.join(' -> '.join(c) for c in found)


def test_nothing_imports_configs_tests_or_benchmarks():
  for path in PACKAGE.rglob('*.py'):
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
      for name in names:
        assert name.split('.')[0] not in ('configs', 'tests', 'benchmarks', 'helpers'), (
            f'{path.relative_to(PACKAGE.parent)} imports {name}')


@pytest.mark.parametrize('source, line, expected', [
    ('models/two_tower.py', 'from vidlang_jax.data import pipeline',
     'vidlang_jax.models.two_tower -> vidlang_jax.data.pipeline (models may not import data)'),
    ('data/video.py', '  from vidlang_jax.models import layers',  # inside a function
     'vidlang_jax.data.video -> vidlang_jax.models.layers (data may not import models)'),
    ('ops/attention.py', 'import vidlang_jax.train',
     'vidlang_jax.ops.attention -> vidlang_jax.train (floor may not import train)'),
])
def test_a_forbidden_import_is_named(tmp_path, source, line, expected):
  """The check itself: a copy of the package with one bad import fails, naming the edge."""
  import shutil

  copy = tmp_path / 'vidlang_jax'
  shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns('__pycache__'))
  target = copy / source
  body = f'def _added():\n{line}\n' if line.startswith(' ') else f'{line}\n'
  target.write_text(target.read_text(encoding='utf-8') + '\n' + body, encoding='utf-8')
  assert expected in violations(import_graph(copy))


def test_a_cycle_is_named():
  graph = {'vidlang_jax.data.a': {'vidlang_jax.data.b'},
           'vidlang_jax.data.b': {'vidlang_jax.data.c'},
           'vidlang_jax.data.c': {'vidlang_jax.data.a'}}
  assert cycles(graph) == [['vidlang_jax.data.a', 'vidlang_jax.data.b', 'vidlang_jax.data.c',
                            'vidlang_jax.data.a']]
