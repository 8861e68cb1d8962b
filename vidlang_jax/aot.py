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
  hbm_bytes: float
  peak_flops: float  # bf16 matmul FLOP/s
  hbm_bandwidth: float  # bytes/s


# Published per-chip figures (cloud.google.com/tpu/docs/<generation>).
CHIPS = {
    'v4': Chip(32e9, 275e12, 1228e9),
    'v5e': Chip(16e9, 197e12, 819e9),
    'v5p': Chip(95e9, 459e12, 2765e9),
    'v6e': Chip(32e9, 918e12, 1640e9),
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
  """The devices of `topology` ('v5e:16x16', 'v5p:8x8x8', 'v6e:8x8', …) × `num_slices`."""
  _without_local_tpu()
  generation = topology.split(':')[0]
  if generation not in CHIPS or ':' not in topology:
    raise ValueError(f'--topology {topology!r} is not GENERATION:SHAPE with a generation of '
                     f'{sorted(CHIPS)}, e.g. v5e:16x16 or v5p:8x8x8.')
  try:
    from jax.experimental import topologies
    description = topologies.get_topology_desc(platform='tpu', topology_name=topology,
                                               num_slices=num_slices)
  except (ImportError, RuntimeError) as e:
    if 'tpu' in str(e).lower() and ('not found' in str(e).lower() or 'unknown' in str(e).lower()
                                    or isinstance(e, ImportError)):
      raise ValueError(f'Compiling for {topology} needs libtpu: pip install -e ".[tpu]" '
                       f'({e}).') from e
    raise
  return list(description.devices)


def collective_counts(hlo_text: str) -> dict[str, int]:
  """How many of each collective the compiled program holds (an async start/done pair counts
  once; a loop body's once). TPU fuses a gradient's all-reduce with its scatter into an
  `all-reduce-scatter` fusion, counted as reduce-scatter."""
  counts = collections.Counter()
  op = re.compile(r'\b(' + '|'.join(COLLECTIVES) + r')(?:-start)?\(')
  for line in hlo_text.splitlines():
    if ' = ' not in line:
      continue
    if 'calls=%all-reduce-scatter' in line:
      counts['reduce-scatter'] += 1
    elif match := op.search(line.split(' = ', 1)[1]):
      counts[match.group(1)] += 1
  return {name: counts.get(name, 0) for name in COLLECTIVES}


def compile_train_step(config: ml_collections.ConfigDict, topology: str,
                       num_slices: int = 1) -> dict[str, Any]:
  """Lowers and compiles `config`'s train step for the slice; returns the report's figures."""
  chip = CHIPS[topology.split(':')[0]]
  devices = topology_devices(topology, num_slices)
  mesh = sharding.make_mesh(config.mesh, devices)
  start = time.perf_counter()
  with sharding.use_mesh(mesh, sharding.logical_rules(config)):
    setup = train.build(config, mesh)
    step = train.make_train_step(setup.objective, setup.tx, setup.schedule, setup.shardings)
    compiled = step.lower(setup.abstract_state, setup.batch_spec, train.abstract_key()).compile()
    flops = train.step_flops_per_device(config, compiled, mesh, setup.batch_spec)
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  per_chip = (memory.argument_size_in_bytes + memory.output_size_in_bytes
              - memory.alias_size_in_bytes + memory.temp_size_in_bytes
              + memory.generated_code_size_in_bytes)
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
      'memory_per_chip_bytes': per_chip, 'hbm_bytes': chip.hbm_bytes,
      'fits': per_chip <= chip.hbm_bytes,
      'memory': {k: getattr(memory, k) for k in (
          'argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
          'temp_size_in_bytes', 'generated_code_size_in_bytes')},
      'flops_per_chip': flops, 'bytes_accessed_per_chip': bytes_accessed,
      'collectives': collective_counts(compiled.as_text()),
      'roofline_step_s': roofline_s, 'roofline_mfu': compute_s / roofline_s if roofline_s else 0.0,
      'compute_bound': compute_s >= memory_s, 'compile_s': compile_s,
  }


def format_report(report: dict[str, Any]) -> str:
  gb = 1e9
  fit = 'fits' if report['fits'] else 'DOES NOT FIT'
  margin = report['hbm_bytes'] - report['memory_per_chip_bytes']
  lines = [
      f"{report['config_model']} on {report['topology']}"
      f"{' x ' + str(report['num_slices']) if report['num_slices'] > 1 else ''}"
      f" ({report['chips']} chips, mesh {report['mesh']}, {report['params'] / 1e9:.2f}B params, "
      f"batch {report['batch_size']}):",
      f"  memory per chip  {report['memory_per_chip_bytes'] / gb:.1f} GB of "
      f"{report['hbm_bytes'] / gb:.0f} GB HBM: {fit} ({abs(margin) / gb:.1f} GB "
      f"{'spare' if margin >= 0 else 'over'})",
      f"  FLOPs per chip   {report['flops_per_chip']:.3g} per step",
      "  collectives      " + ', '.join(f'{k} {v}' for k, v in report['collectives'].items()),
      f"  roofline step    {report['roofline_step_s']:.3f} s "
      f"({'compute' if report['compute_bound'] else 'HBM'}-bound; MFU at most "
      f"{report['roofline_mfu']:.0%})",
      f"  compiled in      {report['compile_s']:.0f} s on this machine",
  ]
  return '\n'.join(lines)
