"""Orbax checkpoints of the whole run (params, optimizer state, step, data-iterator state, config)
and partial loading of params from another run by regex rules.

Restore order (as in maxtext / big_vision): the run's own latest good checkpoint, else
`config.init_from` (params only, regex-mapped), else fresh init.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any, NamedTuple, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vidlang_jax import paths
from vidlang_jax.ops import resample as resample_lib
from vidlang_jax.paths import PathLike
from vidlang_jax.sharding import tree_paths

log = logging.getLogger(__name__)


class CheckpointSaveError(OSError):
  """A checkpoint could not be written; the committed ones are intact."""


class Restored(NamedTuple):
  step: int
  state: Any
  data_restored: bool  # False: the data iterator was saved by another number of processes
  counters: dict[str, Any]  # the run's running totals at `step` (see `Checkpointer.save`)


class Checkpointer:
  """`workdir/checkpoints/<step>/{state,data,config,counters}`; async saves, keeps the last
  `max_to_keep`.

  Orbax writes each step into a temporary folder and renames it when every file is written,
  and removes the oldest step only after a newer one is committed: a step that exists is
  complete unless files were lost afterwards, which `restore_latest` detects.
  """

  def __init__(self, directory: PathLike, max_to_keep: int = 3, async_save: bool = True):
    self.directory = paths.path(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=async_save),
        item_names=('state', 'data', 'config', 'counters'))

  def save(self, step: int, state: Any, data_iterator: Any | None, config: dict[str, Any],
           counters: dict[str, Any] | None = None) -> None:
    """`counters`: JSON running totals (e.g. skipped records) that a resumed run continues."""
    items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config))
    if counters is not None:
      items['counters'] = ocp.args.JsonSave(counters)
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    with self._save_errors():
      self.manager.save(step, args=ocp.args.Composite(**items))

  @contextlib.contextmanager
  def _save_errors(self):
    """A failed save (disk full, no permission: raised here or by the next save or wait,
    as saves are asynchronous) as one CheckpointSaveError saying what is intact."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise plain errors
      with contextlib.suppress(Exception):
        self.manager.reload()  # what is committed on disk, not Orbax's list of this run's saves
      committed = self.steps()
      message = _first_line(e, 2000)
      raise CheckpointSaveError(
          f'Saving a checkpoint in {self.directory} failed: {message}. '
          + (f'The committed checkpoints (steps {committed}) are intact: fix the cause (e.g. '
             f'free disk space) and rerun the same command to resume from step {committed[-1]}.'
             if committed else 'No checkpoint was committed yet.')) from e

  def saved_process_count(self, step: int) -> int | None:
    """How many processes wrote step's data-iterator states (`process_<i>-of-<n>.json`)."""
    folder = self.directory / str(step) / 'data'
    counts = {int(m.group(1)) for f in (folder.iterdir() if folder.is_dir() else ())
              if (m := re.fullmatch(r'process_\d+-of-(\d+)\.json', f.name))}
    return counts.pop() if len(counts) == 1 else None

  def restore_latest(self, abstract_state: Any, data_iterator: Any | None) -> Restored | None:
    """Restores the newest checkpoint that loads, walking back past damaged ones.

    `abstract_state` leaves are `jax.ShapeDtypeStruct`s with shardings: the state is restored
    straight onto the current mesh, whatever mesh wrote it. The data iterator's state is
    restored when as many processes wrote it as run now (else `data_restored` is False and the
    caller restarts its input at the step). Returns None when there is no checkpoint.
    Checkpoints that exist but do not fit this config (other shapes or params) raise instead of
    silently starting the run again.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    problems = []
    for step in steps:
      try:
        mismatch = self._mismatch(step, abstract_state)
      except Exception as e:  # noqa: BLE001 - unreadable metadata: a damaged step
        problems.append(self._damaged(step, e))
        continue
      if mismatch:
        raise ValueError(f'Checkpoint {self.directory}/{step} does not fit this config: '
                         f'{mismatch}.\nUse a new --workdir, or the config that wrote it.')
      items = dict(state=ocp.args.StandardRestore(abstract_state))
      saved_processes = self.saved_process_count(step)
      restore_data = data_iterator is not None and saved_processes in (None,
                                                                        jax.process_count())
      if restore_data:
        items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
      if (self.directory / str(step) / 'counters').exists():
        items['counters'] = ocp.args.JsonRestore()
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:  # noqa: BLE001 - it fits (checked above), so files are damaged
        problems.append(self._damaged(step, e))
        continue
      if 'counters' not in items:
        log.warning('Checkpoint %d in %s has no counters (written by an older version): the '
                    'counts of skipped records and updates restart at 0.', step, self.directory)
      counters = restored['counters'] if 'counters' in items else {}
      return Restored(step, restored['state'], restore_data, counters)
    if steps:
      raise FileNotFoundError(f'No checkpoint in {self.directory} loads (steps {steps} are all '
                              f'incomplete or damaged: {"; ".join(problems)}); move them away '
                              'to start again.')
    return None

  def _damaged(self, step: int, error: Exception) -> str:
    first_line = _first_line(error, 300)
    log.warning('Checkpoint %s/%d is incomplete or damaged (%s: %s); trying an older one.',
                self.directory, step, type(error).__name__, first_line)
    return f'{step}: {first_line}'

  def _mismatch(self, step: int, abstract_state: Any) -> str | None:
    """How step's saved state differs from `abstract_state` in params and shapes (None: it
    fits), read from its metadata; raises when the metadata cannot be read."""
    with _Quiet():
      manager = _manager(self.directory)
      try:
        saved = manager.item_metadata(step)['state']
      finally:
        manager.close()
    saved = getattr(saved, 'tree', saved)
    if saved is None:
      raise FileNotFoundError('no state metadata')
    part = lambda tree: tree['params'] if 'params' in tree else tree
    have = {p: tuple(m.shape) for p, m in _flatten(part(saved)).items()}
    want = {p: tuple(x.shape) for p, x in _flatten(part(abstract_state)).items()}
    differences = ([f'{p}: saved {have[p]}, this config {want[p]}'
                    for p in sorted(have.keys() & want.keys()) if have[p] != want[p]]
                   + [f'{p} only in the checkpoint' for p in sorted(have.keys() - want.keys())]
                   + [f'{p} only in this config' for p in sorted(want.keys() - have.keys())])
    if not differences and len(jax.tree.leaves(saved)) != len(jax.tree.leaves(abstract_state)):
      differences = [f'the train state has {len(jax.tree.leaves(saved))} arrays saved and '
                     f'{len(jax.tree.leaves(abstract_state))} in this config (another optimizer?)']
    if differences:
      more = f' and {len(differences) - 5} more' if len(differences) > 5 else ''
      return '; '.join(differences[:5]) + more
    return None

  def steps(self) -> list[int]:
    """The committed steps, oldest first."""
    return sorted(self.manager.all_steps())

  def wait(self) -> None:
    with self._save_errors():
      self.manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      with contextlib.suppress(Exception):  # its error, if any, was raised just above
        self.manager.close()


def _first_line(error: Exception, limit: int) -> str:
  """An error's first line (Orbax and TensorStore append pages of detail), or its type."""
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]


RELEASE_PARAMS = 'params'  # a release's params-only Orbax checkpoint, see vidlang_jax/release.py


def is_release(path: PathLike) -> bool:
  """A release folder (params only, see vidlang_jax/release.py), not a run's workdir."""
  path = paths.path(path)
  return (path / RELEASE_PARAMS).is_dir() and not (path / 'checkpoints').is_dir()


def _resolve_checkpoint(path: PathLike) -> tuple[epath.Path, int]:
  """A workdir, its `checkpoints/` folder, or one `checkpoints/<step>` -> (manager dir, step)."""
  path = paths.path(path)
  if not path.exists():
    raise FileNotFoundError(f"Checkpoint '{path}' does not exist (expected a run's workdir, "
                            'its checkpoints/, one checkpoints/<step> or a release).')
  if path.name.isdigit():
    return path.parent, int(path.name)
  if (path / 'checkpoints').is_dir():
    path = path / 'checkpoints'
  steps = sorted(int(d.name) for d in path.iterdir() if d.name.isdigit())
  if not steps:
    raise FileNotFoundError(f"No checkpoints found in '{path}'.")
  return path, steps[-1]


def _params_source(path: PathLike) -> tuple[epath.Path, int | None]:
  """(directory, step) of a run's params; step None for a release's params folder."""
  if is_release(path):
    return paths.path(path) / RELEASE_PARAMS, None
  return _resolve_checkpoint(path)


def checkpoint_name(path: str) -> str:
  """'<dir>/<step>' of the checkpoint `read_params_tree(path)` reads (a release: its params
  folder), without reading it."""
  directory, step = _params_source(path)
  return directory if step is None else f'{directory}/{step}'


def save_params(directory: PathLike, params: Any) -> None:
  """Params alone (no optimizer state), as a release holds them."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(paths.path(directory), params)
  checkpointer.wait_until_finished()
  checkpointer.close()


def _replicated_sharding(mesh: jax.sharding.Mesh | None) -> jax.sharding.Sharding:
  """Replicated over `mesh` (default: the mesh set with `jax.set_mesh`), else one device."""
  if mesh is None and not jax.sharding.get_mesh().empty:
    mesh = jax.sharding.get_mesh()
  return (NamedSharding(mesh, P()) if mesh is not None
          else jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split('/')
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def _flatten(tree: Any) -> dict[str, Any]:
  return dict(zip(jax.tree.leaves(tree_paths(tree)), jax.tree.leaves(tree)))


class _Quiet:
  """Orbax warns about every item it is not asked to restore (data state, config) and about
  read-only mode: noise for a read of the params alone."""

  def __enter__(self):
    self.verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)

  def __exit__(self, *exc):
    absl_logging.set_verbosity(self.verbosity)


def _manager(directory: str) -> ocp.CheckpointManager:
  # The handler must be named for the metadata to be read and for a partial restore; without
  # it the restore falls back to the saved shardings, which fail on any other topology.
  return ocp.CheckpointManager(directory, item_handlers={'state': ocp.PyTreeCheckpointHandler()},
                               options=ocp.CheckpointManagerOptions(read_only=True))


def params_metadata(path: str) -> tuple[dict[str, jax.ShapeDtypeStruct], str]:
  """{'a/b/kernel': shape and dtype} of a checkpoint's or a release's params, and its name,
  without reading any array."""
  directory, step = _params_source(path)
  with _Quiet():
    if step is None:
      checkpointer = ocp.PyTreeCheckpointer()
      tree = checkpointer.metadata(directory).item_metadata
    else:
      manager = _manager(directory)
      tree = manager.item_metadata(step)['state']
      manager.close()
  tree = getattr(tree, 'tree', tree)
  if step is not None:
    tree = tree['params']
  return ({p: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype) for p, m in _flatten(tree).items()},
          checkpoint_name(path))


def read_params_subset(path: str, wanted: dict[str, jax.sharding.Sharding],
                       shapes: dict[str, jax.ShapeDtypeStruct] | None = None
                       ) -> dict[str, jax.Array]:
  """Only the `wanted` params ('a/b/kernel' -> sharding), each restored straight onto its
  sharding (an Orbax partial restore): the optimizer state and the other params are never
  read, and a sharded param never sits whole on one device. `shapes`: the checkpoint's
  `params_metadata`, when the caller has already read it."""
  if shapes is None:
    shapes, _ = params_metadata(path)
  item = _unflatten({p: jax.ShapeDtypeStruct(shapes[p].shape, shapes[p].dtype, sharding=s)
                     for p, s in wanted.items()})
  restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(
      sharding=x.sharding, global_shape=x.shape, dtype=x.dtype), item)
  directory, step = _params_source(path)
  with _Quiet():
    if step is None:
      checkpointer = ocp.PyTreeCheckpointer()
      params = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
          item=item, restore_args=restore_args, partial_restore=True))
      checkpointer.close()
    else:
      manager = _manager(directory)
      params = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item={'params': item}, restore_args={'params': restore_args},
          partial_restore=True)))['state']['params']
      manager.close()
  return _flatten(params)


def read_params_tree(path: str, mesh: jax.sharding.Mesh | None = None) -> tuple[Any, str]:
  """The params tree of a run's checkpoint (a workdir, its checkpoints/ or one step) or of a
  release, replicated over `mesh` (default: the mesh set with `jax.set_mesh`, so that jitted
  code under it takes them), else on one device, and a name for it. The saving run's topology
  does not matter; the optimizer state is not read."""
  shapes, name = params_metadata(path)
  replicated = _replicated_sharding(mesh)
  return _unflatten(read_params_subset(path, {p: replicated for p in shapes}, shapes)), name


def read_params(path: str, mesh: jax.sharding.Mesh | None = None) -> tuple[dict[str, Any], str]:
  """Like `read_params_tree`, flattened to {'a/b/kernel': array} (for regex partial loads)."""
  params, name = read_params_tree(path, mesh)
  return ({p: leaf for p, leaf in zip(jax.tree.leaves(tree_paths(params)),
                                       jax.tree.leaves(params))}, name)


# Target params that may differ in shape from the checkpoint's, and how they are fitted
# (vidlang_jax/ops/resample.py): time and space position embeddings, the tubelet embedding.
DEFAULT_RESAMPLE = ((r'.*pos_time', 'linear'), (r'.*pos_space', 'grid'),
                    (r'.*patch_embed/kernel', 'inflate_central'))


def load_params(path: str, params: Any, *, load: Sequence[tuple[str, str]] = (('(.*)', r'\1'),),
                dont_load: Sequence[str] = (),
                resample: Sequence[tuple[str, str]] = DEFAULT_RESAMPLE) -> Any:
  """Loads params from another run's checkpoint or a release into `params` (a tree of arrays,
  sharded as the model wants them).

  `load` is a list of (regex on the target path, replacement giving the checkpoint path), first
  match wins; e.g. `[('video/(.*)', r'encoder/\\1')]` loads an MAE encoder into the video tower.
  Strict: every target param must be loaded, or matched by a `dont_load` regex (the explicit
  list of what stays as initialised). A target whose shape differs is fitted by the first
  `resample` rule it matches (position embeddings to other frame counts or resolutions, a 2D
  patch kernel inflated to a tubelet), else it is an error. All missing and mismatched params
  are named at once, with both shapes. Only the params needed are read, each straight onto its
  target sharding: no device ever holds the whole checkpoint.
  """
  source, name = params_metadata(path)
  load_rules = [(re.compile(a), b) for a, b in load]
  skip_rules = [re.compile(p) for p in dont_load]
  resample_rules = [(re.compile(a), kind) for a, kind in resample]
  targets = _flatten(params)
  plan, kept, missing, unloaded, mismatched = {}, [], [], [], []
  for target_path, value in targets.items():
    if any(rule.fullmatch(target_path) for rule in skip_rules):
      kept.append(target_path)
      continue
    rule = next((r for r in load_rules if r[0].fullmatch(target_path)), None)
    if rule is None:
      unloaded.append(target_path)
      continue
    source_path = rule[0].sub(rule[1], target_path)
    if source_path not in source:
      missing.append(f'{target_path} <- {source_path}')
      continue
    kind = None
    if tuple(source[source_path].shape) != tuple(value.shape):
      kind = next((k for r, k in resample_rules if r.fullmatch(target_path)), None)
      if kind is None:
        mismatched.append(f'{target_path} {tuple(value.shape)} <- {source_path} '
                          f'{tuple(source[source_path].shape)}')
        continue
    plan[target_path] = (source_path, kind)
  problems = []
  if missing:
    problems.append(f'not in the checkpoint ({len(missing)}): {", ".join(missing[:10])}'
                    f'{" ..." if len(missing) > 10 else ""}; it has '
                    f'{sorted({p.split("/")[0] for p in source})} at the top')
  if mismatched:
    problems.append(f'other shapes ({len(mismatched)}; add an init_from.resample rule if they '
                    f'should be fitted): {", ".join(mismatched[:10])}')
  if unloaded:
    problems.append(f'matched by no init_from.load rule ({len(unloaded)}; list what may stay '
                    f'as initialised in init_from.dont_load): {", ".join(unloaded[:10])}')
  if problems:
    raise ValueError(f'Cannot load {name}: ' + '; '.join(problems) + '.')

  direct = {src: targets[t].sharding for t, (src, kind) in plan.items() if kind is None}
  fitted = {src: _replicated_sharding(None) for t, (src, kind) in plan.items() if kind}
  restored = read_params_subset(path, {**fitted, **direct}, source)
  unused = sorted(set(source) - {src for src, _ in plan.values()})
  loaded = {}
  for target_path, (source_path, kind) in plan.items():
    target, value = targets[target_path], restored[source_path]
    if kind is not None:
      value = resample_lib.fit(kind, np.asarray(value), tuple(target.shape))
      log.info('Fitted %s %s -> %s (%s).', target_path, tuple(restored[source_path].shape),
               tuple(target.shape), kind)
    loaded[target_path] = jax.device_put(jnp.asarray(value, target.dtype), target.sharding)
  log.info('Loaded %d params from %s; kept %d as initialised (%s); %d checkpoint params '
           'unused (%s).', len(loaded), name, len(kept), kept[:10], len(unused), unused[:10])
  return jax.tree.map(lambda path, value: loaded.get(path, value), tree_paths(params), params)
