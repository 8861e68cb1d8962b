"""Device mesh from config, logical-axis rules, regex overrides, and batch placement.

Weights carry logical axis names (`embed`, `mlp`, `heads`, …, see models/layers.py); the rules
below map them to mesh axes, so FSDP, tensor and sequence parallelism are config, not model code.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from typing import Any, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ('data', 'fsdp', 'tensor', 'sequence')
BATCH_AXES = ('data', 'fsdp')

# Logical name -> mesh axes. Weights are sharded over `fsdp` on their model dimension
# (ZeRO-3 style) and over `tensor` on heads / hidden; activations over the batch axes.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ('batch', BATCH_AXES),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv', None),
    ('vocab', 'tensor'),
    ('length', 'sequence'),
    ('layers', None),
)


def _axis_sizes(mesh_config: Mapping[str, Any], num_devices: int) -> dict[str, int]:
  """The ICI part of `config.mesh` (per slice) with its one `-1` axis resolved."""
  sizes = {name: int(mesh_config.get(name, 1)) for name in MESH_AXES}
  auto = [name for name, size in sizes.items() if size == -1]
  if len(auto) > 1:
    raise ValueError(f'Only one mesh axis may be -1, got {auto}.')
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if auto:
    if num_devices % fixed:
      raise ValueError(f'{num_devices} devices are not divisible by the fixed mesh axes '
                       f'{ {k: v for k, v in sizes.items() if v != -1} }.')
    sizes[auto[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f'Mesh {sizes} needs {math.prod(sizes.values())} devices, '
                     f'but {num_devices} are available.')
  return sizes


def make_mesh(mesh_config: Mapping[str, Any], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """`dict(data=-1, fsdp=1, tensor=1, sequence=1, dcn=dict(data=2))` -> Mesh.

  The axis sizes are per slice (ICI); one `-1` axis takes the rest. `dcn` multiplies axes over
  slices (TPU multi-slice; processes on CPU and GPU), e.g. `dcn.data=2` on two v5e-256 slices gives
  data=2 * data: only the batch gradients' all-reduce crosses the slow network.
  """
  unknown = set(mesh_config) - set(MESH_AXES) - {'dcn'}
  dcn = dict(mesh_config.get('dcn') or {})
  unknown |= {f'dcn.{name}' for name in set(dcn) - set(MESH_AXES)}
  if unknown:
    raise ValueError(f'Unknown mesh axes {sorted(unknown)}; expected a subset of {MESH_AXES} '
                     '(and dcn.<axis>).')
  devices = list(devices if devices is not None else jax.devices())
  dcn_shape = tuple(int(dcn.get(name, 1)) for name in MESH_AXES)
  granules = math.prod(dcn_shape)
  if len(devices) % granules:
    raise ValueError(f'config.mesh.dcn {dcn} needs a multiple of {granules} devices, '
                     f'but {len(devices)} are available.')
  sizes = _axis_sizes(mesh_config, len(devices) // granules)
  shape = tuple(sizes[name] for name in MESH_AXES)
  return Mesh(_device_array(shape, dcn_shape, devices, mesh_config), MESH_AXES,
              axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _device_array(shape: tuple[int, ...], dcn_shape: tuple[int, ...],
                  devices: list[jax.Device], mesh_config: Mapping[str, Any]) -> np.ndarray:
  """Devices laid out so that each mesh axis follows the physical torus; an axis that must split
  a physical axis is allowed (with a warning), one that cannot be laid out is named."""
  multi = math.prod(dcn_shape) > 1
  errors = []
  for allow_split in (False, True):
    try:
      if multi:
        array = mesh_utils.create_hybrid_device_mesh(
            shape, dcn_shape, devices, allow_split_physical_axes=allow_split,
            process_is_granule=devices[0].platform != 'tpu')
      else:
        array = mesh_utils.create_device_mesh(shape, devices,
                                              allow_split_physical_axes=allow_split)
    except (ValueError, NotImplementedError, AssertionError) as e:
      errors.append(str(e))
      continue
    if allow_split:
      log.warning('config.mesh %s splits a physical torus axis of the %d %s devices; the '
                  'collectives over the split axes use fewer links.', dict(mesh_config),
                  len(devices), devices[0].device_kind)
    return array
  raise ValueError(
      f'config.mesh {dict(mesh_config)} cannot be laid out on the {len(devices)} '
      f'{devices[0].device_kind} devices: {errors[-1].rstrip(".")}. Choose config.mesh '
      'sizes (fsdp, tensor, sequence, data) that are products of the slice\'s physical '
      'axes, e.g. 8 x 8 x 8 chips take sequence=8, not 4.')


def logical_rules(config: Any) -> tuple[tuple[str, Any], ...]:
  """`config.sharding.logical_axis_rules`, or the defaults when it is empty."""
  rules = config.get('sharding', {}).get('logical_axis_rules', [])
  return tuple(tuple(rule) for rule in rules) or LOGICAL_AXIS_RULES


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Iterator[None]:
  """The mesh plus the logical-axis rules, so that activation constraints in the models
  (`layers.constrain`) take effect while tracing."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def _path_str(path: tuple[Any, ...]) -> str:
  """Tree path as 'video/encoder/blocks/mlp/Dense_0/kernel' (dict keys and indices only)."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    elif isinstance(key, jax.tree_util.GetAttrKey) and key.name not in ('value',):
      parts.append(key.name)
  return '/'.join(parts)


def tree_paths(tree: Any) -> Any:
  """A tree of the same structure holding each leaf's path string."""
  return jax.tree_util.tree_map_with_path(lambda path, _: _path_str(path), tree)


def strip_boxes(tree: Any) -> Any:
  """Values without their partitioning metadata (and without applying any constraint)."""
  return jax.tree.map(
      lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata) else x,
      tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh, name: str) -> P:
  """Drops mesh axes from dimensions they do not divide (e.g. a 3-wide bias over fsdp=8).

  The leaf then holds a full copy of that dimension on every device, which can cost a lot of
  memory for a big weight (an odd vocabulary over `tensor`), so it is a warning naming the
  leaf, the dimensions and the axes, once per leaf.
  """
  fitted, dropped = [], []
  for i, (dim, axes) in enumerate(zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)))):
    axes_tuple = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in axes_tuple)
    if size > 1 and dim % size:
      dropped.append(f'dim {i} (size {dim}) over {axes!r} (size {size})')
      axes = None
    fitted.append(axes)
  if dropped:
    log.warning('Replicating %s of %s: the mesh axes do not divide it.', ', '.join(dropped),
                name)
  return P(*fitted)


def infer_shardings(
    abstract_tree: Any,
    mesh: Mesh,
    logical_rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES,
    regex_rules: Sequence[tuple[str, Sequence[Any]]] = (),
) -> Any:
  """NamedShardings for a (boxed) abstract tree from `jax.eval_shape`.

  Leaves carrying logical names use `logical_rules`; `regex_rules` are (regex, spec) pairs
  matched against the leaf's full path in the train state (first match wins) and override
  them, e.g. `('.*pos_embedding', ())` replicates a param and its optimizer moments
  (`params/...`, `opt_state/.../mu/...`). Unboxed leaves without a rule are replicated.
  """
  logical_specs = nn.get_partition_spec(abstract_tree)
  mesh_specs = nn.logical_to_mesh(logical_specs, logical_rules)
  shapes = strip_boxes(abstract_tree)
  paths = tree_paths(shapes)
  compiled = [(re.compile(pattern), spec) for pattern, spec in regex_rules]

  used = set()

  def one(spec, leaf, path):
    for pattern, override in compiled:
      if pattern.fullmatch(path):
        spec = P(*override)
        used.add(pattern.pattern)
        break
    spec = spec if isinstance(spec, P) else P()
    return NamedSharding(mesh, _fit_spec(spec, tuple(getattr(leaf, 'shape', ())), mesh, path))

  shardings = jax.tree.map(one, mesh_specs, shapes, paths,
                           is_leaf=lambda x: isinstance(x, P) or x is None)
  for pattern, _ in regex_rules:
    if pattern not in used:
      log.warning('Sharding rule %r matches no parameter (paths look like %r).', pattern,
                  jax.tree.leaves(paths)[-1])
  return shardings


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Leading (batch) dimension over the data axes, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def shard_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles global arrays from each process's slice of the batch (multi-host safe)."""
  return {
      key: jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim), value)
      for key, value in local_batch.items()
  }
