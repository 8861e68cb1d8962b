"""Long-context LM train step with the sequence sharded over 8 devices (ring attention) against
the same step on one device: tokens/s at 2K, 8K and 32K tokens.

The model is lm_vs_llama.py's mid-size world model (d512, 8 heads of 64, SwiGLU 1408, vocab
8192, `model.attention='ring'`, block 512) in `configs/world_model.py:tiny`'s trainer: the
full train step (loss, gradients, clipping, AdamW), batch 1, fp32, one synthetic document per
row. Sharded: mesh sequence=8 (each device holds L / 8 tokens of the row, zigzag layout, keys
and values passed around the ring); one device: sequence=1 (the same blockwise kernel).

The 8 devices are fake CPU devices (XLA_FLAGS) sharing this machine's cores: there is no
parallel speed-up to gain, so the figure (tokens/s sharded / one device) is the ring's
overhead: 1.0 means the ring costs nothing beyond the work (real devices would then add up
to 8x the throughput), below 1.0 is the price of the collectives and the smaller per-device
problems.

To fit `make bench`'s budget (4 minutes here) the model runs 1 of its 8 layers at every length
(`--depth`, named in the figures): at 32K one layer's step alone takes ~1 minute on one device
(causal attention is 3.3 TFLOP of it), and at 2K the full 8-layer step takes 6 s on one device
and 19 s sharded, with 40 s to compile. 8K and 32K also run fewer calls (REPEATS); both sides
of a ratio always run the same model and the same calls.

  .venv/bin/python benchmarks/long_context.py   # writes benchmarks/results/long_context.json
"""

from __future__ import annotations

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8')

from typing import Any, Callable

import harness
import jax
import steps

DEVICES = 8
SIZES = dict(width=512, heads=8, mlp=1408, vocab=8192, block=512, lengths=(2048, 8192, 32768))
SMOKE = dict(width=64, heads=2, mlp=128, vocab=256, block=32, lengths=(256,))
FULL_DEPTH = 8
# (warm-up, timed) calls where the default (1, --repeats) would not fit the budget. Steps are
# compiled ahead, so an unwarmed call only first-touches its buffers (at 8K the first call was
# no slower than the others).
REPEATS = {8192: (0, 3), 32768: (0, 1)}


def config_for(s: dict[str, Any], length: int, depth: int, sequence: int) -> Any:
  return steps.load('world_model.py:tiny', {
      'model.width': s['width'], 'model.depth': depth, 'model.num_heads': s['heads'],
      'model.num_kv_heads': s['heads'], 'model.mlp_dim': s['mlp'],
      'model.vocab_size': s['vocab'], 'model.block_size': s['block'],
      'model.attention': 'ring', 'data.sequence_length': length, 'batch_size': 1}, sequence)


def train_step(config: Any, vocab: int, devices: list[jax.Device]) -> Callable[[], None]:
  """A blocking call of the trainer's compiled train step on `devices`."""
  return steps.Step(config, vocab, devices).step


def main() -> None:
  p = harness.parser(__doc__.splitlines()[0])
  p.add_argument('--depth', type=int, default=1,
                 help=f'decoder layers (the model has {FULL_DEPTH}; 1 fits the budget)')
  args = p.parse_args()
  s = SMOKE if args.smoke else SIZES
  depth = 1 if args.smoke else args.depth
  figures, rows, times = [], [], {}
  for length in s['lengths']:
    warmup, repeats = (0, 1) if args.smoke else REPEATS.get(length, (1, args.repeats))
    candidates = {
        'sharded': train_step(config_for(s, length, depth, DEVICES), s['vocab'],
                              jax.devices()[:DEVICES]),
        'one_device': train_step(config_for(s, length, depth, 1), s['vocab'],
                                 jax.devices()[:1])}
    times[length] = harness.time_interleaved(candidates, repeats=repeats, warmup=warmup)
    t = {k: harness.median(v) for k, v in times[length].items()}
    sharded, one = length / t['sharded'], length / t['one_device']
    rows.append(dict(length=length, depth=depth, warmup=warmup, repeats=repeats,
                     sharded_seconds=t['sharded'], one_device_seconds=t['one_device'],
                     sharded_tokens_per_s=sharded, one_device_tokens_per_s=one))
    print(f'L={length:6d} depth {depth}: sharded {sharded:8.1f} tokens/s, one device '
          f'{one:8.1f} tokens/s (x{sharded / one:.3f})', flush=True)
    reduced = '' if depth == FULL_DEPTH or args.smoke else f', depth {depth} of {FULL_DEPTH}'
    figures.append(harness.figure(
        f'LM train step tokens/s, sequence sharded over {DEVICES} fake CPU devices (ring) / '
        f'one device, L={length}{reduced}', sharded, one, unit='tokens/s', lower_is_better=False,
        note=f'the ring overhead: {DEVICES} fake devices share {os.cpu_count()} cores, so no '
             f'parallel gain is possible; d{s["width"]} x {depth} layers, median of {repeats} '
             f'after {warmup} warm-up call(s)'))
  harness.write(args, 'long_context', figures, sizes=s, rows=rows,
                times={str(k): v for k, v in times.items()},
                note=f'{depth} of the {FULL_DEPTH} layers, and fewer calls at 8K and 32K, so '
                     "that the run fits make bench's budget on 2 cores; see rows")


if __name__ == '__main__':
  main()
