"""Config files are Python: `configs/<name>.py` with `get_config(arg)`; this module loads them,
applies `key=value` overrides and fails on unknown keys by name."""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from typing import Any, Mapping, Sequence

import ml_collections

from vidlang_jax import paths

REQUIRED_KEYS = ('total_steps', 'batch_size', 'seed', 'log_every', 'eval_every',
                 'checkpoint_every', 'mesh', 'model', 'data', 'optimizer', 'init_from')


class ConfigError(ValueError):
  pass


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """'tiny,frames=8' -> ConfigDict(tiny=True, frames=8, …): flags and typed `key=value` knobs.

  Every knob must have a default (its type is taken from it); an unknown one raises.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for part in filter(None, (arg or '').split(',')):
    key, _, value = part.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f'Unknown config argument {key!r}; known: {sorted(defaults)}.')
    parsed[key] = _coerce(value, defaults[key]) if value else True
  return parsed


def _coerce(text: str, like: Any) -> Any:
  if isinstance(like, bool):
    if text.lower() not in ('true', 'false', '1', '0'):
      raise ConfigError(f'Expected a boolean, got {text!r}.')
    return text.lower() in ('true', '1')
  if isinstance(like, str):
    return text
  value = ast.literal_eval(text)
  return float(value) if isinstance(like, float) else value


def _exec_file(path: str) -> Any:
  """The module defined by the Python file `path` (configs are files, not a package)."""
  name = os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(f'_vidlang_config_{name}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def from_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file (no overrides, no validation)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'Config file {path!r} does not exist.')
  return _exec_file(path).get_config(arg or None)


def import_sibling(config_file: str, name: str) -> Any:
  """The module `name`.py next to `config_file` (e.g. configs/common.py): how configs share
  pieces without being a package or depending on the working directory."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f'{name}.py')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path!r} does not exist (imported by {config_file}).')
  return _exec_file(path)


def load(spec: str, overrides: Mapping[str, str] | Sequence[str] = ()) -> ml_collections.ConfigDict:
  """`configs/two_tower.py:tiny` (+ overrides like `total_steps=10`) -> validated ConfigDict."""
  path, _, arg = spec.partition(':')
  config = from_file(path, arg)
  if not isinstance(overrides, Mapping):
    overrides = dict(item.split('=', 1) for item in overrides)
  apply_overrides(config, overrides)
  validate(config)
  return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
  """Sets dotted keys; string values are parsed to the existing value's type."""
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split('.')
    node = config
    for i, name in enumerate(parents):
      if not isinstance(node, ml_collections.ConfigDict) or name not in node:
        raise ConfigError(f'Unknown config key {".".join(parents[:i + 1])!r} '
                          f'(in override {dotted}){_did_you_mean(node, name)}.')
      node = node[name]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise ConfigError(f'Unknown config key {dotted!r}{_did_you_mean(node, leaf)}.')
    if isinstance(value, str) and not isinstance(node[leaf], str):
      try:
        value = (_literal_or_str(value) if node[leaf] is None or value == 'None'
                 else _coerce(value, node[leaf]))
      except (ValueError, SyntaxError, TypeError) as e:
        raise ConfigError(f'Override {dotted}={value}: expected a '
                          f'{type(node[leaf]).__name__} like {node[leaf]!r}.') from e
    node[leaf] = value


def _did_you_mean(node: Any, name: str) -> str:
  keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
  close = difflib.get_close_matches(name, keys, n=3)
  return f'; did you mean {" or ".join(repr(k) for k in close)}?' if close else ''


def _literal_or_str(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def validate(config: ml_collections.ConfigDict) -> None:
  missing = [k for k in REQUIRED_KEYS if k not in config]
  if missing:
    raise ConfigError(f'Config is missing required top-level keys {missing}.')
  if config.batch_size <= 0 or config.total_steps < 0:
    raise ConfigError(f'batch_size={config.batch_size} and total_steps={config.total_steps} '
                      'must be positive.')


def read_run_config(workdir: str | os.PathLike, expected: str) -> ml_collections.ConfigDict:
  """The `config.json` the trainer (or `vidlang export`) wrote in `workdir` (a local folder or
  gs://...); `expected` says in the error what `workdir` should have been."""
  path = paths.path(workdir) / 'config.json'
  if not path.exists():
    raise FileNotFoundError(f'{path} does not exist: {expected}.')
  return ml_collections.ConfigDict(json.loads(path.read_text(encoding='utf-8')))
