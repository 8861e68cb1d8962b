"""World-model train step time on one device: blockwise ring attention against plain attention
(sequence=1: online softmax over tiles, skipping future tiles and, in packed rows, tiles whose
documents differ), on real packed rows of ~300-token documents, as the context grows.

The step is the loss gradient of the tiny world model (width 128 x 4 layers, 4 heads, 2 kv
heads), `--tokens_per_step` tokens in rows of each length; both attentions are timed in turns
in the same run. The defaults (1K and 2K rows, 4K tokens a step) fit `make bench`'s budget
on 2 cores: plain attention's [heads, L, L] logits make its step at least twice as slow per
token for each doubling of L (at 4K one plain step takes ~20 s here; `--lengths 1024,4096`
checks the 4K number quoted in configs/world_model.py, in ~3.5 minutes).

  .venv/bin/python benchmarks/world_model_step.py [--lengths 1024,2048] [--repeats 5]
"""

from __future__ import annotations

from typing import Any, Callable

import grain
import harness
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidlang_jax import sharding
from vidlang_jax.data import sequences
from vidlang_jax.models.world_model import WorldModel, world_model_objective

VOCAB = sequences.Vocabulary(text_size=1000, num_codes=1000)
SIZES = dict(width=128, depth=4, heads=4, kv_heads=2, mlp=384)
SMOKE = dict(width=32, depth=1, heads=2, kv_heads=1, mlp=64)
SMOKE_ARGS = dict(lengths='512', tokens_per_step=1024, block_size=128)


def packed_rows(length: int, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Rows packed from clip documents (4 frames of 8x8 codes, ~15-token captions)."""
  rng = np.random.default_rng(seed)

  def documents():
    while True:
      tokens = rng.integers(0, VOCAB.num_codes, (4, 8, 8))
      text = np.concatenate([[2], rng.integers(4, 300, rng.integers(8, 20)), [3]])
      yield sequences.clip_document(VOCAB, tokens, text, sequences.ORDERS[rng.integers(2)])

  docs = grain.MapDataset.source([d for d, _ in zip(documents(), range(rows * length // 250))])
  packed = sequences.packed_dataset(docs.to_iter_dataset(), length, num_bins=rows, seed=0)
  out = list(packed)[:rows]
  return {k: np.stack([r[k] for r in out]) for k in out[0]}


def step_call(attention: str, batch: dict[str, np.ndarray], block_size: int,
              s: dict[str, int]) -> Callable[[], Any]:
  """A blocking call of the compiled loss gradient with `attention` on one device."""
  model = WorldModel(vocab_size=VOCAB.size + len(sequences.SPECIALS), width=s['width'],
                     depth=s['depth'], num_heads=s['heads'], num_kv_heads=s['kv_heads'],
                     mlp_dim=s['mlp'], attention=attention, block_size=block_size, scan=False)
  objective = world_model_objective(model, ml_collections.ConfigDict(
      dict(sequence_layout='contiguous')))
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1, sequence=1), jax.devices()[:1])
  with sharding.use_mesh(mesh):
    params = jax.tree.map(
        lambda x: x.unbox(apply_constraint=False) if hasattr(x, 'unbox') else x,
        jax.jit(lambda: objective.init(jax.random.key(0), batch))(),
        is_leaf=lambda x: hasattr(x, 'unbox'))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    grad = jax.jit(jax.grad(lambda p, b: objective.loss(p, b, None)[0]))
    compiled = grad.lower(params, batch).compile()
  return lambda: jax.block_until_ready(compiled(params, batch))


def main() -> None:
  p = harness.parser(__doc__.splitlines()[0])
  p.add_argument('--lengths', default='1024,2048')
  p.add_argument('--tokens_per_step', type=int, default=4096)
  p.add_argument('--block_size', type=int, default=128)
  args = p.parse_args()
  s = SMOKE if args.smoke else SIZES
  if args.smoke:
    vars(args).update(SMOKE_ARGS)
  repeats = 1 if args.smoke else args.repeats
  rows, figures, times = [], [], {}
  print(f'{"length":>7s} {"plain s/step":>13s} {"ring s/step":>12s} {"ring / plain":>13s}')
  for length in (int(n) for n in args.lengths.split(',')):
    batch = packed_rows(length, max(1, args.tokens_per_step // length))
    times[length] = harness.time_interleaved(
        {'ring': step_call('ring', batch, args.block_size, s),
         'plain': step_call('dot_product', batch, args.block_size, s)}, repeats=repeats)
    ring, plain = (harness.median(times[length][k]) for k in ('ring', 'plain'))
    rows.append(dict(length=length, rows=len(batch['inputs']), plain_seconds=plain,
                     ring_seconds=ring, speedup=plain / ring))
    print(f'{length:7d} {plain:13.3f} {ring:12.3f} {ring / plain:13.3f}', flush=True)
    figures.append(harness.figure(
        f'World-model step (loss gradient), blockwise ring / plain attention, one device, '
        f'packed rows of {length}', ring, plain, goal='<= 0.5', unit='s/step',
        note=f'{len(batch["inputs"])} rows x {length} tokens, block {args.block_size}; goal: the '
             "2x that makes 'ring' the world model's default attention on one device"))
  harness.write(args, 'world_model_step', figures, sizes=s, tokens_per_step=args.tokens_per_step,
                block_size=args.block_size, rows=rows,
                times={str(k): v for k, v in times.items()})


if __name__ == '__main__':
  main()
