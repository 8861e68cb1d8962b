"""Per-device memory and time of the sharded (ring) sigmoid loss vs the dense one, on 8 devices.

The ring keeps `[B/N, B/N]` logits per device instead of XLA partitioning the dense `[B, B]`
loss; both are measured side by side in this run, value and gradient, for growing batches.

  .venv/bin/python benchmarks/contrastive_loss_memory.py   # writes benchmarks/results/*.json
"""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8')

import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P

from vidlang_jax import sharding  # noqa: E402
from vidlang_jax.losses import contrastive  # noqa: E402

DIM = 256


def measure(loss_fn, mesh, batch):
  place = NamedSharding(mesh, P(('data', 'fsdp')))
  video = jax.device_put(jax.random.normal(jax.random.key(0), (batch, DIM)), place)
  text = jax.device_put(jax.random.normal(jax.random.key(1), (batch, DIM)), place)

  def objective(v, t):
    v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    t = t / jnp.linalg.norm(t, axis=-1, keepdims=True)
    return loss_fn(v, t, jnp.log(10.0), -10.0)[0]

  step = jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))
  compiled = step.lower(video, text).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  jax.block_until_ready(compiled(video, text))
  start = time.perf_counter()
  for _ in range(5):
    out = compiled(video, text)
  jax.block_until_ready(out)
  return temp, (time.perf_counter() - start) / 5


def main():
  mesh = sharding.make_mesh(dict(data=8))
  rows = []
  with jax.set_mesh(mesh):
    for batch in (256, 1024, 4096):
      ring_temp, ring_time = measure(contrastive.sigmoid_loss, mesh, batch)
      dense_temp, dense_time = measure(contrastive.sigmoid_loss_dense, mesh, batch)
      rows.append(dict(batch=batch, devices=8, ring_temp_bytes=ring_temp,
                       dense_temp_bytes=dense_temp, temp_ratio=ring_temp / dense_temp,
                       ring_seconds=ring_time, dense_seconds=dense_time,
                       time_ratio=ring_time / dense_time))
      print(f'B={batch:5d}: per-device temp ring {ring_temp / 2**20:8.2f} MiB vs dense '
            f'{dense_temp / 2**20:8.2f} MiB (ratio {ring_temp / dense_temp:.3f}); time ratio '
            f'{ring_time / dense_time:.2f}')
  out_dir = os.path.join(os.path.dirname(__file__), 'results')
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, 'contrastive_loss_memory.json')
  with open(path, 'w') as f:
    json.dump(dict(device=str(jax.devices()[0].device_kind), rows=rows), f, indent=2)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
