"""Per-device memory and time of the sharded (ring) sigmoid loss vs the dense one, on 8 devices.

The ring keeps `[B/N, B/N]` logits per device instead of XLA partitioning the dense `[B, B]`
loss; both are measured side by side in this run, value and gradient, for growing batches:
temp memory from the compiled `memory_analysis()`, time interleaved (ring, dense, ...). The 8
devices are fake CPU devices sharing this machine's cores, so times compare work and
communication overhead, not a parallel speed-up.

  .venv/bin/python benchmarks/contrastive_loss_memory.py   # writes benchmarks/results/*.json
"""

from __future__ import annotations

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8')

from typing import Any, Callable

import harness
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vidlang_jax import sharding
from vidlang_jax.losses import contrastive

DIM, DEVICES = 256, 8
SIZES = dict(batches=(256, 1024, 4096, 8192), dim=DIM)
SMOKE = dict(batches=(64,), dim=32)


def prepare(loss_fn: Callable[..., Any], mesh, batch: int,
            dim: int) -> tuple[int, Callable[[], Any]]:
  """(per-device temp bytes, a blocking call) of the loss's value and gradient."""
  place = NamedSharding(mesh, P(('data', 'fsdp')))
  video = jax.device_put(jax.random.normal(jax.random.key(0), (batch, dim)), place)
  text = jax.device_put(jax.random.normal(jax.random.key(1), (batch, dim)), place)

  def objective(v, t):
    v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    t = t / jnp.linalg.norm(t, axis=-1, keepdims=True)
    return loss_fn(v, t, jnp.log(10.0), -10.0)[0]

  compiled = jax.jit(jax.value_and_grad(objective, argnums=(0, 1))).lower(video, text).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  return temp, lambda: jax.block_until_ready(compiled(video, text))


def main() -> None:
  args = harness.parser(__doc__.splitlines()[0]).parse_args()
  s = SMOKE if args.smoke else SIZES
  repeats = 1 if args.smoke else args.repeats
  mesh = sharding.make_mesh(dict(data=DEVICES))
  rows, times = [], {}
  with jax.set_mesh(mesh):
    for batch in s['batches']:
      ring_temp, ring_call = prepare(contrastive.sigmoid_loss, mesh, batch, s['dim'])
      dense_temp, dense_call = prepare(contrastive.sigmoid_loss_dense, mesh, batch, s['dim'])
      times[batch] = harness.time_interleaved({'ring': ring_call, 'dense': dense_call},
                                              repeats=repeats)
      ring_time, dense_time = (harness.median(times[batch][k]) for k in ('ring', 'dense'))
      rows.append(dict(batch=batch, devices=DEVICES, ring_temp_bytes=ring_temp,
                       dense_temp_bytes=dense_temp, temp_ratio=ring_temp / dense_temp,
                       ring_seconds=ring_time, dense_seconds=dense_time,
                       time_ratio=ring_time / dense_time))
      print(f'B={batch:5d}: per-device temp ring {ring_temp / 2**20:8.2f} MiB vs dense '
            f'{dense_temp / 2**20:8.2f} MiB (ratio {ring_temp / dense_temp:.3f}); time ratio '
            f'{ring_time / dense_time:.2f}', flush=True)
  last = rows[-1]
  big = last['batch']
  figures = [
      harness.figure(
          f'Ring sigmoid loss per-device temp / dense (XLA-partitioned), value+grad, B={big}, '
          f'{DEVICES} devices', last['ring_temp_bytes'], last['dense_temp_bytes'],
          unit='bytes',
          note=f'compiled memory_analysis; [B/N, B/N] logits per device against the [B/N, B] '
               f'rows XLA gives each device of the dense loss: the ratio falls towards 1/{DEVICES}'
               ' as the batch grows and the logits outweigh the embeddings (see rows)'),
      harness.figure(
          f'Ring sigmoid loss time / dense, value+grad, B={big}, {DEVICES} fake CPU devices',
          last['ring_seconds'], last['dense_seconds'], unit='s/call',
          note=f'{DEVICES} fake devices share {os.cpu_count()} cores: work + ring overhead, '
               'not a parallel speed-up'),
  ]
  harness.write(args, 'contrastive_loss_memory', figures, dim=s['dim'], rows=rows,
                times={str(b): v for b, v in times.items()})


if __name__ == '__main__':
  main()
