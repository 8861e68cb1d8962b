"""Per-device temp memory of ring attention as the sequence grows, against single-device
attention, from XLA's compiled `memory_analysis()` (compiled, not run: no 64K x 64K arrays).

For each L: causal ring attention (value + gradient) over 8 devices at L; the same blockwise
kernel on one device at L / 8 (what one device of the ring would hold if it had the sequence to
itself); and the plain reference attention on one device at L, whose logits grow as L^2. Also
the causal work per device (tiles computed) for the contiguous and zigzag layouts.

  .venv/bin/python benchmarks/ring_attention_memory.py   # writes benchmarks/results/*.json
"""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8')

import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P

from vidlang_jax import sharding  # noqa: E402
from vidlang_jax.ops.attention import dot_product_attention  # noqa: E402
from vidlang_jax.ops.ring_attention import causal_tiles_per_device, ring_attention  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 8, 8, 64, 512
LENGTHS = (4096, 8192, 16384, 32768, 65536)


def temp_bytes(attention, mesh, length, spec):
  shape = jax.ShapeDtypeStruct((1, length, HEADS, HEAD_DIM), jnp.bfloat16,
                               sharding=NamedSharding(mesh, spec))

  def loss(q, k, v):
    return jnp.sum(attention(q, k, v).astype(jnp.float32))

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  return step.lower(shape, shape, shape).compile().memory_analysis().temp_size_in_bytes


def main():
  ring_mesh = sharding.make_mesh(dict(data=1, sequence=8))
  one_mesh = sharding.make_mesh(dict(data=1, sequence=1), jax.devices()[:1])
  ring = lambda mesh: (lambda q, k, v: ring_attention(q, k, v, mesh=mesh, causal=True,
                                                      block_size=BLOCK))
  rows = []
  for length in LENGTHS:
    with jax.set_mesh(ring_mesh):
      ring_temp = temp_bytes(ring(ring_mesh), ring_mesh, length, P(None, 'sequence'))
    with jax.set_mesh(one_mesh):
      blockwise_temp = temp_bytes(ring(one_mesh), one_mesh, length // 8, P())
      reference_temp = temp_bytes(lambda q, k, v: dot_product_attention(q, k, v, causal=True),
                                  one_mesh, length, P())
    contiguous = causal_tiles_per_device(length, 8, BLOCK, 'contiguous')
    zigzag = causal_tiles_per_device(length, 8, BLOCK, 'zigzag')
    rows.append(dict(
        length=length, devices=8, ring_temp_bytes_per_device=ring_temp,
        blockwise_one_device_at_length_over_8_bytes=blockwise_temp,
        reference_one_device_bytes=reference_temp,
        ring_over_blockwise=ring_temp / blockwise_temp,
        ring_over_reference=ring_temp / reference_temp,
        contiguous_work_max_over_mean=float(contiguous.max() / contiguous.mean()),
        zigzag_work_max_over_mean=float(zigzag.max() / zigzag.mean())))
    r = rows[-1]
    print(f'L={length:6d}: ring {ring_temp / 2**20:8.1f} MiB/device, blockwise at L/8 '
          f'{blockwise_temp / 2**20:8.1f} MiB (x{r["ring_over_blockwise"]:.2f}), reference at L '
          f'{reference_temp / 2**20:9.1f} MiB (x{r["ring_over_reference"]:.4f}); causal work '
          f'max/mean contiguous {r["contiguous_work_max_over_mean"]:.2f}, zigzag '
          f'{r["zigzag_work_max_over_mean"]:.2f}', flush=True)
  os.makedirs(os.path.join(os.path.dirname(__file__), 'results'), exist_ok=True)
  path = os.path.join(os.path.dirname(__file__), 'results', 'ring_attention_memory.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(dict(heads=HEADS, head_dim=HEAD_DIM, block=BLOCK, dtype='bfloat16', rows=rows),
              f, indent=2)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
