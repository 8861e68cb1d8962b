"""Ring attention over 8 devices against single-device attention: per-device temp memory as the
sequence grows (XLA's compiled `memory_analysis()`, compiled, not run: no 64K x 64K arrays),
and fwd + bwd time at the largest length whose reference fits the time budget.

For each L (bf16, causal, value + gradient): ring attention over 8 devices at L; the same
blockwise kernel on one device at L / 8 (what one device of the ring would hold if it had the
sequence to itself); and the plain reference attention on one device at L, whose fp32 logits
grow as L^2. Also the causal work per device (tiles computed) for the contiguous and zigzag
layouts. Then both are run, interleaved, at `--time_length` (fp32: XLA:CPU's bf16 matmuls
are not what a CPU run uses).

The 8 devices are fake CPU devices sharing this machine's cores, so the time ratio is not a
parallel speed-up: it is the blockwise kernel's work (future tiles skipped, no [L, L] logits
in memory) plus the ring's overhead, against materialising the logits.

  .venv/bin/python benchmarks/ring_attention_memory.py   # writes benchmarks/results/*.json
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
from vidlang_jax.ops.attention import dot_product_attention
from vidlang_jax.ops.ring_attention import causal_tiles_per_device, ring_attention

HEADS, HEAD_DIM, DEVICES = 8, 64, 8
SIZES = dict(lengths=(4096, 8192, 16384, 32768, 65536), block=512, time_length=4096)
SMOKE = dict(lengths=(1024,), block=64, time_length=512)


def _step(attention: Callable[..., jax.Array]) -> Callable[..., Any]:
  def loss(q, k, v):
    return jnp.sum(attention(q, k, v).astype(jnp.float32))

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def _shape(mesh, length: int, spec: P, dtype: Any) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((1, length, HEADS, HEAD_DIM), dtype,
                              sharding=NamedSharding(mesh, spec))


def temp_bytes(attention: Callable[..., jax.Array], mesh, length: int, spec: P) -> int:
  """Per-device temp memory of the compiled value + gradient, bf16 inputs."""
  shape = _shape(mesh, length, spec, jnp.bfloat16)
  return _step(attention).lower(shape, shape, shape).compile().memory_analysis(
      ).temp_size_in_bytes


def runner(attention: Callable[..., jax.Array], mesh, length: int,
           spec: P) -> Callable[[], Any]:
  """A blocking call of the compiled fp32 value + gradient on random q, k, v."""
  place = NamedSharding(mesh, spec)
  qkv = [jax.device_put(jax.random.normal(jax.random.key(i), (1, length, HEADS, HEAD_DIM)),
                        place) for i in range(3)]
  compiled = _step(attention).lower(*qkv).compile()
  return lambda: jax.block_until_ready(compiled(*qkv))


def memory_rows(s: dict[str, Any], ring, reference, ring_mesh, one_mesh) -> list[dict]:
  rows = []
  for length in s['lengths']:
    with jax.set_mesh(ring_mesh):
      ring_temp = temp_bytes(ring(ring_mesh), ring_mesh, length, P(None, 'sequence'))
    with jax.set_mesh(one_mesh):
      blockwise_temp = temp_bytes(ring(one_mesh), one_mesh, length // DEVICES, P())
      reference_temp = temp_bytes(reference, one_mesh, length, P())
    contiguous = causal_tiles_per_device(length, DEVICES, s['block'], 'contiguous')
    zigzag = causal_tiles_per_device(length, DEVICES, s['block'], 'zigzag')
    r = dict(
        length=length, devices=DEVICES, ring_temp_bytes_per_device=ring_temp,
        blockwise_one_device_at_length_over_8_bytes=blockwise_temp,
        reference_one_device_bytes=reference_temp,
        ring_over_blockwise=ring_temp / blockwise_temp,
        ring_over_reference=ring_temp / reference_temp,
        contiguous_work_max_over_mean=float(contiguous.max() / contiguous.mean()),
        zigzag_work_max_over_mean=float(zigzag.max() / zigzag.mean()))
    rows.append(r)
    print(f'L={length:6d}: ring {ring_temp / 2**20:8.1f} MiB/device, blockwise at L/8 '
          f'{blockwise_temp / 2**20:8.1f} MiB (x{r["ring_over_blockwise"]:.2f}), reference at L '
          f'{reference_temp / 2**20:9.1f} MiB (x{r["ring_over_reference"]:.4f}); causal work '
          f'max/mean contiguous {r["contiguous_work_max_over_mean"]:.2f}, zigzag '
          f'{r["zigzag_work_max_over_mean"]:.2f}', flush=True)
  return rows


def main() -> None:
  p = harness.parser(__doc__.splitlines()[0])
  p.add_argument('--time_length', type=int, default=None,
                 help=f'sequence length of the timed comparison (default {SIZES["time_length"]}:'
                      ' the reference fwd + bwd takes ~20 s a call there on 2 cores)')
  args = p.parse_args()
  s = SMOKE if args.smoke else SIZES
  repeats = 1 if args.smoke else args.repeats
  time_length = args.time_length or s['time_length']
  ring_mesh = sharding.make_mesh(dict(data=1, sequence=DEVICES))
  one_mesh = sharding.make_mesh(dict(data=1, sequence=1), jax.devices()[:1])
  ring = lambda mesh: (lambda q, k, v: ring_attention(q, k, v, mesh=mesh, causal=True,
                                                      block_size=s['block']))
  reference = lambda q, k, v: dot_product_attention(q, k, v, causal=True)
  rows = memory_rows(s, ring, reference, ring_mesh, one_mesh)

  with jax.set_mesh(ring_mesh):
    ring_call = runner(ring(ring_mesh), ring_mesh, time_length, P(None, 'sequence'))
  with jax.set_mesh(one_mesh):
    reference_call = runner(reference, one_mesh, time_length, P())
  times = harness.time_interleaved({'ring': ring_call, 'reference': reference_call},
                                   repeats=repeats)
  t = {k: harness.median(v) for k, v in times.items()}

  last = rows[-1]
  big = last['length']
  figures = [
      harness.figure(
          f'Ring attention per-device temp / reference (one device), causal fwd+bwd bf16, '
          f'L={big}, {DEVICES} devices', last['ring_temp_bytes_per_device'],
          last['reference_one_device_bytes'], goal=f'<= {1 / DEVICES}', unit='bytes',
          note='compiled memory_analysis; the reference holds [heads, L, L] fp32 logits; the '
               f'goal is the {DEVICES}x that sharding alone would give'),
      harness.figure(
          f'Ring attention per-device temp at L over {DEVICES} devices / the same kernel on '
          f'one device at L/{DEVICES}, L={big}', last['ring_temp_bytes_per_device'],
          last['blockwise_one_device_at_length_over_8_bytes'], goal='<= 1.5', unit='bytes',
          note='the ring adds only the key/value shards in flight and their gradients: '
               'memory stays O(L / devices)'),
      harness.figure(
          f'Ring attention fwd+bwd time over {DEVICES} fake CPU devices / reference on one '
          f'device, causal fp32, L={time_length}', t['ring'], t['reference'], unit='s/call',
          note=f'{DEVICES} fake devices share {os.cpu_count()} cores: no parallel speed-up; '
               'the ratio is blockwise work (future tiles skipped, no [L, L] logits) plus the '
               'ring overhead, against materialised logits'),
  ]
  harness.write(args, 'ring_attention_memory', figures, heads=HEADS, head_dim=HEAD_DIM,
                block=s['block'], dtype='bfloat16', rows=rows, time_length=time_length,
                time_dtype='float32', times=times, medians=t)


if __name__ == '__main__':
  main()
