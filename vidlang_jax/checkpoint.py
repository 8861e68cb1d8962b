"""Orbax checkpoints of the whole run (params, optimizer state, step, data-iterator state, config)
and partial loading of params from another run by regex rules.

Restore order (as in maxtext / big_vision): the run's own latest good checkpoint, else
`config.init_from` (params only, regex-mapped), else fresh init.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Sequence

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vidlang_jax.sharding import tree_paths

log = logging.getLogger(__name__)


class Checkpointer:
  """`workdir/checkpoints/<step>/{state,data,config}`; async saves, keeps the last `max_to_keep`."""

  def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=async_save),
        item_names=('state', 'data', 'config'))

  def save(self, step: int, state: Any, data_iterator: Any | None, config: dict[str, Any]) -> None:
    items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config))
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**items))

  def restore_latest(self, abstract_state: Any,
                     data_iterator: Any | None) -> tuple[int, Any] | None:
    """Restores the newest checkpoint that loads, walking back past damaged ones.

    `abstract_state` leaves are `jax.ShapeDtypeStruct`s with shardings: the state is restored
    straight onto the current mesh, whatever mesh wrote it. Returns (step, state), or None when
    there is no checkpoint. Checkpoints that exist but do not fit this config (other shapes or
    params) raise instead of silently starting the run again.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    for step in steps:
      items = dict(state=ocp.args.StandardRestore(abstract_state))
      if data_iterator is not None:
        items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
      except (KeyError, ValueError, FileNotFoundError) as e:
        if not _is_missing_data(e):
          raise ValueError(f'Checkpoint {self.directory}/{step} does not fit this config: {e}\n'
                           'Use a new --workdir, or the config that wrote it.') from e
        log.warning('Checkpoint %d in %s is incomplete (%s); trying an older one.',
                    step, self.directory, e)
        continue
      return step, restored['state']
    if steps:
      raise FileNotFoundError(f'No checkpoint in {self.directory} loads (steps {steps} are all '
                              'incomplete); move them away to start again.')
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _is_missing_data(error: Exception) -> bool:
  """Orbax's errors for a half-written / half-deleted step: a missing item or array file."""
  return isinstance(error, (KeyError, FileNotFoundError)) or 'NOT_FOUND' in str(error)


RELEASE_PARAMS = 'params'  # a release's params-only Orbax checkpoint, see vidlang_jax/release.py


def _is_release(path: str) -> bool:
  return (os.path.isdir(os.path.join(path, RELEASE_PARAMS))
          and not os.path.isdir(os.path.join(path, 'checkpoints')))


def _resolve_checkpoint(path: str) -> tuple[str, int]:
  """A workdir, its `checkpoints/` folder, or one `checkpoints/<step>` -> (manager dir, step)."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f'Checkpoint {path!r} does not exist (expected a run\'s workdir, '
                            'its checkpoints/, one checkpoints/<step> or a release).')
  if os.path.basename(path).isdigit():
    return os.path.dirname(path), int(os.path.basename(path))
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    path = os.path.join(path, 'checkpoints')
  steps = sorted(int(d) for d in os.listdir(path) if d.isdigit())
  if not steps:
    raise FileNotFoundError(f'No checkpoints found in {path!r}.')
  return path, steps[-1]


def checkpoint_name(path: str) -> str:
  """'<dir>/<step>' of the checkpoint `read_params_tree(path)` reads (a release: its params
  folder), without reading it."""
  if _is_release(path):
    return os.path.join(os.path.abspath(path), RELEASE_PARAMS)
  directory, step = _resolve_checkpoint(path)
  return f'{directory}/{step}'


def save_params(directory: str, params: Any) -> None:
  """Params alone (no optimizer state), as a release holds them."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(directory), params)
  checkpointer.wait_until_finished()
  checkpointer.close()


def _replicated(metadata: Any, mesh: jax.sharding.Mesh | None) -> Any:
  """Abstract arrays for Orbax array metadata, replicated over `mesh` (default: the mesh set
  with `jax.set_mesh`), else on one device."""
  if mesh is None and not jax.sharding.get_mesh().empty:
    mesh = jax.sharding.get_mesh()
  sharding = (NamedSharding(mesh, P()) if mesh is not None
              else jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                      metadata)


def read_params_tree(path: str, mesh: jax.sharding.Mesh | None = None) -> tuple[Any, str]:
  """The params tree of a run's checkpoint (a workdir, its checkpoints/ or one step) or of a
  release, replicated over `mesh` (default: the mesh set with `jax.set_mesh`, so that jitted
  code under it takes them), else on one device, and a name for it. The saving run's topology
  does not matter."""
  # Orbax warns about every item it is not asked to restore (data state, config) and about
  # read-only mode: noise for a read of the params alone.
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    if _is_release(path):
      directory = os.path.join(os.path.abspath(path), RELEASE_PARAMS)
      checkpointer = ocp.StandardCheckpointer()
      metadata = checkpointer.metadata(directory).item_metadata
      params = checkpointer.restore(directory, _replicated(metadata, mesh))
      checkpointer.close()
      return params, directory
    directory, step = _resolve_checkpoint(path)
    # The handler must be named for the metadata to be read; without it the restore falls
    # back to the saved shardings, which fail on any other topology (a pod's run read here).
    manager = ocp.CheckpointManager(
        directory, item_handlers={'state': ocp.StandardCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(read_only=True))
    metadata = manager.item_metadata(step)['state']
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_replicated(metadata, mesh))))
    manager.close()
  finally:
    absl_logging.set_verbosity(verbosity)
  return state['state']['params'], f'{directory}/{step}'


def read_params(path: str, mesh: jax.sharding.Mesh | None = None) -> tuple[dict[str, Any], str]:
  """Like `read_params_tree`, flattened to {'a/b/kernel': array} (for regex partial loads)."""
  params, name = read_params_tree(path, mesh)
  return ({p: leaf for p, leaf in zip(jax.tree.leaves(tree_paths(params)),
                                       jax.tree.leaves(params))}, name)


def load_params(path: str, params: Any, *, load: Sequence[tuple[str, str]] = (('(.*)', r'\1'),),
                dont_load: Sequence[str] = (), mesh: jax.sharding.Mesh | None = None) -> Any:
  """Loads params from another run's checkpoint into `params` (a tree of arrays).

  `load` is a list of (regex on the target path, replacement giving the checkpoint path), first
  match wins; e.g. `[('video/(.*)', r'encoder/\\1')]` loads an MAE encoder into the video tower.
  Target params matched by a `dont_load` regex, or by no `load` rule, keep their values. A
  target whose checkpoint path is missing or has another shape raises, naming both.
  """
  source, name = read_params(path, mesh)
  load_rules = [(re.compile(a), b) for a, b in load]
  skip_rules = [re.compile(p) for p in dont_load]
  loaded, kept = [], []

  def merge(target_path: str, value: Any) -> Any:
    if any(rule.fullmatch(target_path) for rule in skip_rules):
      kept.append(target_path)
      return value
    for rule, replacement in load_rules:
      if rule.fullmatch(target_path):
        source_path = rule.sub(replacement, target_path)
        break
    else:
      kept.append(target_path)
      return value
    if source_path not in source:
      raise KeyError(f'{target_path!r} maps to {source_path!r}, which is not in checkpoint '
                     f'{name}. Checkpoint params start with: '
                     f'{sorted({p.split("/")[0] for p in source})}')
    new = source[source_path]
    if tuple(new.shape) != tuple(value.shape):
      raise ValueError(f'Shape mismatch loading {source_path!r} {tuple(new.shape)} from '
                       f'{name} into {target_path!r} {tuple(value.shape)}.')
    loaded.append(target_path)
    return jax.device_put(np.asarray(new).astype(value.dtype), value.sharding)

  merged = jax.tree.map(merge, tree_paths(params), params)
  log.info('Loaded %d params from %s; kept %d as initialised: %s', len(loaded), name,
           len(kept), kept[:20])
  return merged
