"""What every benchmark shares: interleaved timing, the matmul peaks, the machine, the JSON.

Every figure is a ratio of two things measured in the same run: candidates are timed in turns
(a, b, a, b, ...) after a warm-up, so that a machine that slows down part way slows both, and
the median of each is kept. A result file holds `figures` (one row of RESULTS.md each):

  {"figure": ..., "goal": "<= 0.85", "ours": 2.1, "peer": 3.0, "unit": "s/step",
   "ratio": 0.7, "met": true, "note": ...}

`--smoke` (every benchmark takes it) runs tiny sizes with one repeat and writes to `--out`:
the test suite runs it so that no benchmark rots; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def parser(description: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=description)
  p.add_argument('--smoke', action='store_true', help='tiny sizes, one repeat (tests)')
  p.add_argument('--repeats', type=int, default=5, help='timed calls of each candidate')
  p.add_argument('--out', default=RESULTS, help='folder for <name>.json')
  return p


def time_interleaved(candidates: dict[str, Callable[[], Any]], repeats: int,
                     warmup: int = 1) -> dict[str, list[float]]:
  """Seconds per call of each candidate, called in turns. Each callable must block until its
  work is done (`jax.block_until_ready`; torch on CPU is synchronous)."""
  for fn in candidates.values():
    for _ in range(warmup):
      fn()
  times: dict[str, list[float]] = {name: [] for name in candidates}
  for _ in range(repeats):
    for name, fn in candidates.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


def median(times: list[float]) -> float:
  return statistics.median(times)


def jax_matmul(size: int = 2048) -> Callable[[], Any]:
  """A callable doing one fp32 `[size, size]` matmul in jax (its FLOPs: 2 size^3)."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((size, size), jnp.float32) * 0.5
  matmul = jax.jit(lambda x: x @ x)
  return lambda: jax.block_until_ready(matmul(a))


def torch_matmul(size: int = 2048) -> Callable[[], Any]:
  import torch
  a = torch.full((size, size), 0.5)
  return lambda: a @ a


def against_torch(ours: Callable[[], Any], torch_step: Callable[[], Any], model_flops: float,
                  repeats: int) -> dict[str, Any]:
  """Our step, torch's and each framework's 2048² matmul, timed in turns: the medians, and
  each step's MFU over its own framework's matmul peak measured in the same run."""
  times = time_interleaved({'ours': ours, 'torch': torch_step, 'jax matmul': jax_matmul(),
                            'torch matmul': torch_matmul()}, repeats=repeats)
  t = {k: median(v) for k, v in times.items()}
  jax_peak, torch_peak = 2 * 2048**3 / t['jax matmul'], 2 * 2048**3 / t['torch matmul']
  return dict(times=times, medians=t, model_flops=model_flops,
              mfu=model_flops / t['ours'] / jax_peak,
              torch_mfu=model_flops / t['torch'] / torch_peak,
              jax_matmul_flops_per_s=jax_peak, torch_matmul_flops_per_s=torch_peak)


def machine() -> dict[str, Any]:
  """What the numbers were measured on."""
  info: dict[str, Any] = dict(python=platform.python_version(), cores=os.cpu_count(),
                              platform=platform.platform())
  try:
    with open('/proc/cpuinfo') as f:
      info['cpu'] = next((line.split(':', 1)[1].strip() for line in f
                          if line.startswith('model name')), platform.processor())
  except OSError:
    info['cpu'] = platform.processor()
  for module in ('jax', 'jaxlib', 'flax', 'torch', 'transformers'):
    if module in sys.modules:
      info[module] = getattr(sys.modules[module], '__version__', '?')
  if 'jax' in sys.modules:
    import jax
    info['jax_device'] = jax.devices()[0].device_kind
    info['jax_devices'] = jax.device_count()
  if 'torch' in sys.modules:
    info['torch_threads'] = sys.modules['torch'].get_num_threads()
  info['xla_flags'] = os.environ.get('XLA_FLAGS', '')
  return info


def figure(name: str, ours: float, peer: float | None = None, *, goal: str | None = None,
           unit: str = '', ratio: float | None = None, note: str = '',
           lower_is_better: bool = True) -> dict[str, Any]:
  """One row: `ratio` defaults to ours / peer; `goal` is '<= x' or '>= x' on the ratio (or on
  `ours` when there is no peer)."""
  if ratio is None and peer:
    ratio = ours / peer
  value = ratio if ratio is not None else ours
  met = None
  if goal:
    op, bound = goal.split()
    met = value <= float(bound) if op == '<=' else value >= float(bound)
  return dict(figure=name, ours=ours, peer=peer, ratio=ratio, unit=unit, goal=goal, met=met,
              note=note, lower_is_better=lower_is_better)


def write(args: argparse.Namespace, name: str, figures: list[dict[str, Any]],
          **details: Any) -> str:
  """`<out>/<name>.json` with the figures, the machine, the date and the command."""
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, f'{name}.json')
  payload = dict(name=name, figures=figures, machine=machine(),
                 date=datetime.date.today().isoformat(), smoke=args.smoke,
                 command=' '.join(['python', os.path.relpath(sys.argv[0])] + sys.argv[1:]),
                 **details)
  with open(path, 'w') as f:
    json.dump(payload, f, indent=2, default=float)
  for row in figures:
    ratio = '' if row['ratio'] is None else f"  ratio {row['ratio']:.3g}"
    goal = '' if not row['goal'] else f"  goal {row['goal']} ({'met' if row['met'] else 'MISSED'})"
    peer = '' if row['peer'] is None else f" vs {row['peer']:.4g}"
    print(f"{row['figure']}: {row['ours']:.4g}{peer} {row['unit']}{ratio}{goal}")
  print(f'wrote {path}')
  return path
