"""Causal attention on one device, forward + backward, at the LM benchmark's shape (L = 2048,
8 heads of 64, fp32): our blockwise kernel (ring attention with sequence=1) at each tile size,
the reference attention, `jax.nn.dot_product_attention`, and torch's
`scaled_dot_product_attention` (the kernel LlamaForCausalLM runs), timed in turns.

  .venv/bin/python benchmarks/attention_one_device.py   # needs the [hf] extra (torch)

This is where the LM step loses to torch (docs/performance.md).
"""

from __future__ import annotations

import functools

import harness
import jax

from vidlang_jax import sharding
from vidlang_jax.ops.attention import dot_product_attention
from vidlang_jax.ops.ring_attention import ring_attention

SIZES = dict(length=2048, heads=8, head_dim=64, blocks=(256, 512, 1024))
SMOKE = dict(length=256, heads=2, head_dim=32, blocks=(64, 128))


def jax_candidates(s: dict) -> dict:
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1, sequence=1), jax.devices()[:1])
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, do = (jax.random.normal(key, (1, s['length'], s['heads'], s['head_dim']))
                 for key in keys)
  kernels = {f'ours, blockwise, block {b}': functools.partial(
      ring_attention, mesh=mesh, causal=True, block_size=b) for b in s['blocks']}
  kernels['ours, reference'] = lambda q, k, v: dot_product_attention(q, k, v, causal=True)
  kernels['jax.nn.dot_product_attention'] = lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, is_causal=True)
  out = {}
  with jax.set_mesh(mesh):
    for name, kernel in kernels.items():
      fwd_bwd = jax.jit(lambda q, k, v, kernel=kernel: jax.vjp(kernel, q, k, v)[1](do))
      out[name] = functools.partial(lambda f: jax.block_until_ready(f(q, k, v)), fwd_bwd)
  return out


def torch_candidate(s: dict):
  import torch
  q, k, v = (torch.randn(1, s['heads'], s['length'], s['head_dim'], requires_grad=True)
             for _ in range(3))
  do = torch.randn(1, s['heads'], s['length'], s['head_dim'])

  def fwd_bwd():
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.autograd.grad(out, (q, k, v), do)

  return fwd_bwd


def main() -> None:
  args = harness.parser(__doc__.splitlines()[0]).parse_args()
  s = SMOKE if args.smoke else SIZES
  candidates = jax_candidates(s)
  candidates['torch sdpa'] = torch_candidate(s)
  times = harness.time_interleaved(candidates, repeats=1 if args.smoke else args.repeats)
  t = {k: harness.median(v) for k, v in times.items()}
  torch_s = t.pop('torch sdpa')
  figures = [harness.figure(f'causal attention fwd+bwd, L={s["length"]}, {name} / torch sdpa',
                            seconds, torch_s, unit='s',
                            goal='<= 1.0' if name.startswith('ours, blockwise') else None)
             for name, seconds in t.items()]
  harness.write(args, 'attention_one_device', figures, sizes=s, times=times,
                medians=dict(t, torch_sdpa=torch_s))


if __name__ == '__main__':
  main()
