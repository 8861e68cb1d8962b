"""One registry for models, objectives, losses, evaluators, datasets, masks, input formats and
CLI commands, looked up by name.

Names are `<kind>.<name>`, e.g. `model.two_tower`, `loss.sigmoid`, `dataset.moving_shapes`.
Lookup strings may carry call syntax, `loss.sigmoid(batch_axes=('data',))`, parsed with `ast` so
that configs stay plain strings. Registering a name twice raises: a silent override is a bug.
"""

from __future__ import annotations

import ast
import functools
from typing import Any, Callable

_REGISTRY: dict[str, Any] = {}


def register(name: str) -> Callable[[Any], Any]:
  """Decorator: `@register('model.two_tower')`."""

  def wrap(obj: Any) -> Any:
    if name in _REGISTRY and _REGISTRY[name] is not obj:
      raise KeyError(f'{name!r} is registered twice ({_REGISTRY[name]} and {obj}).')
    _REGISTRY[name] = obj
    return obj

  return wrap


def _parse_call(spec: str) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
  """'loss.sigmoid(chunk=4)' -> ('loss.sigmoid', (), {'chunk': 4})."""
  expr = ast.parse(spec.strip(), mode='eval').body
  if isinstance(expr, ast.Call):
    name = ast.unparse(expr.func)
    args = tuple(ast.literal_eval(a) for a in expr.args)
    kwargs = {k.arg: ast.literal_eval(k.value) for k in expr.keywords}
    return name, args, kwargs
  return ast.unparse(expr), (), {}


def lookup(spec: str, kind: str | None = None) -> Any:
  """Returns the registered object; with call syntax, a partial with those arguments bound.

  `kind` prefixes bare names: lookup('sigmoid', kind='loss') finds 'loss.sigmoid'.
  """
  _import_builtins()
  name, args, kwargs = _parse_call(spec)
  if kind and not name.startswith(kind + '.'):
    name = f'{kind}.{name}'
  if name not in _REGISTRY:
    prefix = name.split('.')[0] + '.'
    known = sorted(k for k in _REGISTRY if k.startswith(prefix))
    raise KeyError(f'Unknown {name!r}. Registered {prefix}*: {known}')
  obj = _REGISTRY[name]
  if args or kwargs:
    return functools.partial(obj, *args, **kwargs)
  return obj


def names(kind: str) -> list[str]:
  _import_builtins()
  return sorted(k for k in _REGISTRY if k.startswith(kind + '.'))


@functools.cache
def _import_builtins() -> None:
  """Imports the modules that register the built-in entries (lazily, to keep imports one-way)."""
  import importlib

  for module in (
      'vidlang_jax.models.two_tower',
      'vidlang_jax.models.masked_video',
      'vidlang_jax.models.classifier',
      'vidlang_jax.models.world_model',
      'vidlang_jax.models.video_tokenizer',
      'vidlang_jax.losses.contrastive',
      'vidlang_jax.evaluators.retrieval',
      'vidlang_jax.evaluators.linear_probe',
      'vidlang_jax.evaluators.reconstruction',
      'vidlang_jax.evaluators.classification',
      'vidlang_jax.evaluators.video_tokenizer',
      'vidlang_jax.evaluators.world_model',
      'vidlang_jax.data.builders',
      'vidlang_jax.masking',
      'vidlang_jax.inputs',
      'vidlang_jax.flops',
      'vidlang_jax.generate',
  ):
    importlib.import_module(module)
