"""Compile the real train step for a TPU slice without the slice (what maxtext's train_compile
does): per-chip memory against HBM, FLOPs, collectives and a roofline step time, on a CPU.

  vidlang compile --config configs/two_tower.py:base --topology v5e:16x16 \
      --config.mesh.fsdp=-1 --config.mesh.data=1 [--num_slices 2] [--json out.json]

Needs libtpu (`pip install -e '.[tpu]'`): jax describes the slice from it
(`jax.experimental.topologies.get_topology_desc`) and XLA compiles for its chips. Nothing is
allocated and no data is read: the train state and the batch are shapes with shardings.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import re
import time
from typing import Any

import jax
import ml_collections

from vidlang_jax import sharding, train


@dataclasses.dataclass(frozen=True)
class Chip:
  usable_hbm_bytes: float  # what XLA lets a program use (it refuses to compile more)
  peak_flops: float  # bf16 matmul FLOP/s
  hbm_bandwidth: float  # bytes/s
  chip_config: str  # libtpu's name: v4 / v5p pair two TensorCores as one device
  dims: int  # torus dimensions


GiB = 2**30
# FLOP/s and bandwidth as published (cloud.google.com/tpu/docs/<generation>); usable HBM as
# XLA reports it when a program does not fit ("exceeds available HBM (15.75G)").
CHIPS = {
    'v4': Chip(30.75 * GiB, 275e12, 1228e9, 'megacore', 3),
    'v5e': Chip(15.75 * GiB, 197e12, 819e9, 'default', 2),
    'v5p': Chip(95.74 * GiB, 459e12, 2765e9, 'megacore', 3),
    'v6e': Chip(31.25 * GiB, 918e12, 1640e9, 'default', 2),
}
COLLECTIVES = ('all-gather', 'all-reduce', 'reduce-scatter', 'all-to-all', 'collective-permute')


def _without_local_tpu() -> None:
  """On a machine without TPU chips: run on the CPU (libtpu would probe for chips first) and
  let several processes load libtpu (its lock file guards chips there are none of)."""
  if glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'):
    return
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  if not os.environ.get('JAX_PLATFORMS'):
    jax.config.update('jax_platforms', 'cpu')


def topology_devices(topology: str, num_slices: int = 1) -> list[Any]:
  """The devices of `topology` ('v5e:16x16', 'v5p:8x8x8', 'v6e:8x8', …) × `num_slices`.

  Torus wrap-around links exist on a full 16-chip axis of v5e / v6e and on v4 / v5p slices
  made of whole 4x4x4 cubes; they change the compiled collectives, so they are described.
  """
  generation, _, shape = topology.partition(':')
  dims = [int(d) for d in shape.split('x')] if re.fullmatch(r'\d+(x\d+)+', shape) else []
  if generation not in CHIPS or len(dims) != CHIPS[generation].dims:
    raise ValueError(f'--topology {topology!r} is not GENERATION:SHAPE with a generation of '
                     f'{sorted(CHIPS)}, e.g. v5e:16x16 or v5p:8x8x8.')
  chip = CHIPS[generation]
  if chip.dims == 2:
    wrap = tuple(d == 16 for d in dims) + (False,)
  else:
    wrap = (all(d % 4 == 0 for d in dims),) * 3
  _without_local_tpu()
  try:
    from jax.experimental import topologies
    description = topologies.get_topology_desc(
        platform='tpu', topology_name=topology, chip_config_name=chip.chip_config,
        chips_per_host_bounds=(2, 2, 1), num_slices=num_slices, wrap=wrap)
  except (ImportError, RuntimeError) as e:
    missing = isinstance(e, ImportError) or (
        'tpu' in str(e).lower() and 'not found' in str(e).lower())
    if not missing:
      raise
    raise ValueError(f'Compiling for {topology} needs libtpu: pip install -e ".[tpu]" '
                     f'({e}).') from e
  return list(description.devices)


def collective_counts(hlo_text: str) -> dict[str, int]:
  """How many of each collective the compiled program holds (an async start/done pair counts
  once; a loop body's once). TPU wraps collectives into fusions (`calls=%all-gather.3`) and
  fuses a gradient's all-reduce with its scatter (`all-reduce-scatter`, a reduce-scatter)."""
  counts = collections.Counter()
  names = '|'.join(sorted(COLLECTIVES + ('all-reduce-scatter',), key=len, reverse=True))
  op = re.compile(r'\b(' + names + r')(?:-start)?\(')
  fused = re.compile(r'calls=%(' + names + r')[.\d]*\b')
  for line in hlo_text.splitlines():
    if ' = ' not in line:
      continue
    match = fused.search(line) or op.search(line.split(' = ', 1)[1])
    if match:
      name = match.group(1)
      counts['reduce-scatter' if name == 'all-reduce-scatter' else name] += 1
  return {name: counts.get(name, 0) for name in COLLECTIVES}


def compile_train_step(config: ml_collections.ConfigDict, topology: str,
                       num_slices: int = 1) -> dict[str, Any]:
  """Lowers and compiles `config`'s train step for the slice; returns the report's figures."""
  devices = topology_devices(topology, num_slices)
  chip = CHIPS[topology.split(':')[0]]
  mesh = sharding.make_mesh(config.mesh, devices)
  start = time.perf_counter()
  with sharding.use_mesh(mesh, sharding.logical_rules(config)):
    setup = train.build(config, mesh)
    step = train.make_train_step(setup.objective, setup.tx, setup.schedule, setup.shardings)
    lowered = step.lower(setup.abstract_state, setup.batch_spec, train.abstract_key())
    try:
      compiled = lowered.compile()
    except Exception as e:  # XLA refuses a program that does not fit: that is the answer
      if 'RESOURCE_EXHAUSTED' not in str(e):
        raise
      return {'config_model': config.model.name, 'topology': topology,
              'num_slices': num_slices, 'chips': len(devices), 'mesh': dict(mesh.shape),
              'fits': False, 'hbm_bytes': chip.usable_hbm_bytes,
              'error': str(e).split('\n')[0][:2000]}
    flops = train.step_flops_per_device(config, compiled, mesh, setup.batch_spec)
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  # XLA's own measure of what the program holds at once (what it checks against HBM); the sum
  # of argument, output and temp buffers over-counts buffers that are never live together.
  per_chip = getattr(memory, 'peak_memory_in_bytes', 0) or (
      memory.argument_size_in_bytes + memory.output_size_in_bytes
      - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  per_chip += memory.generated_code_size_in_bytes
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  bytes_accessed = float(cost.get('bytes accessed', 0.0))
  compute_s, memory_s = flops / chip.peak_flops, bytes_accessed / chip.hbm_bandwidth
  # A lower bound: compute and HBM traffic at their peaks, collectives fully overlapped.
  roofline_s = max(compute_s, memory_s)
  num_params = sum(x.size for x in jax.tree.leaves(setup.abstract_state['params']))
  return {
      'config_model': config.model.name, 'topology': topology, 'num_slices': num_slices,
      'chips': len(devices), 'mesh': dict(mesh.shape), 'params': num_params,
      'batch_size': config.batch_size,
      'tokens_per_row': config.data.get('sequence_length'),
      'memory_per_chip_bytes': per_chip, 'hbm_bytes': chip.usable_hbm_bytes,
      'fits': per_chip <= chip.usable_hbm_bytes,
      'memory': {k: getattr(memory, k, None) for k in (
          'peak_memory_in_bytes', 'argument_size_in_bytes', 'output_size_in_bytes',
          'alias_size_in_bytes', 'temp_size_in_bytes', 'generated_code_size_in_bytes')},
      'flops_per_chip': flops, 'bytes_accessed_per_chip': bytes_accessed,
      'collectives': collective_counts(compiled.as_text()),
      'roofline_step_s': roofline_s, 'roofline_mfu': compute_s / roofline_s if roofline_s else 0.0,
      'compute_bound': compute_s >= memory_s, 'compile_s': compile_s,
  }


def format_report(report: dict[str, Any]) -> str:
  name = (f"{report['config_model']} on {report['topology']}"
          f"{' x ' + str(report['num_slices']) if report['num_slices'] > 1 else ''}")
  if 'error' in report:
    return (f"{name} ({report['chips']} chips, mesh {report['mesh']}): DOES NOT FIT in "
            f"{report['hbm_bytes'] / GiB:.2f} GiB per chip.\n  {report['error']}")
  fit = 'fits' if report['fits'] else 'DOES NOT FIT'
  margin = report['hbm_bytes'] - report['memory_per_chip_bytes']
  lines = [
      f"{name} ({report['chips']} chips, mesh {report['mesh']}, "
      f"{report['params'] / 1e9:.2f}B params, batch {report['batch_size']}):",
      f"  memory per chip  {report['memory_per_chip_bytes'] / GiB:.1f} GiB peak of "
      f"{report['hbm_bytes'] / GiB:.2f} GiB usable HBM: {fit} ({abs(margin) / GiB:.1f} GiB "
      f"{'spare' if margin >= 0 else 'over'})",
      f"  FLOPs per chip   {report['flops_per_chip']:.3g} per step",
      "  collectives      " + ', '.join(f'{k} {v}' for k, v in report['collectives'].items()),
      f"  roofline step    {report['roofline_step_s']:.3f} s "
      f"({'compute' if report['compute_bound'] else 'HBM'}-bound; MFU at most "
      f"{report['roofline_mfu']:.0%})",
      f"  compiled in      {report['compile_s']:.0f} s on this machine",
  ]
  return '\n'.join(lines)
