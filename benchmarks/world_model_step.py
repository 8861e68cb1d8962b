"""World-model train step time on one device: plain attention vs blockwise ring attention
(sequence=1: online softmax over tiles, skipping future tiles and, in packed rows, tiles whose
documents differ), on real packed rows of ~300-token documents, as the context grows.

  .venv/bin/python benchmarks/world_model_step.py [--lengths 1024,4096,8192] [--repeats 3]

Prints step time per token for both and their ratio, measured in the same run; writes
benchmarks/results/world_model_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidlang_jax import sharding
from vidlang_jax.data import sequences
from vidlang_jax.models.world_model import WorldModel, world_model_objective

VOCAB = sequences.Vocabulary(text_size=1000, num_codes=1000)


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


def step_seconds(attention: str, batch: dict[str, np.ndarray], repeats: int,
                 block_size: int) -> float:
  model = WorldModel(vocab_size=VOCAB.size + len(sequences.SPECIALS), width=128, depth=4,
                     num_heads=4, num_kv_heads=2, mlp_dim=384, attention=attention,
                     block_size=block_size, scan=False)
  objective = world_model_objective(model, ml_collections.ConfigDict(
      dict(sequence_layout='contiguous')))
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1, sequence=1), jax.devices()[:1])
  with sharding.use_mesh(mesh):
    params = jax.tree.map(
        lambda x: x.unbox(apply_constraint=False) if hasattr(x, 'unbox') else x,
        jax.jit(lambda: objective.init(jax.random.key(0), batch))(),
        is_leaf=lambda x: hasattr(x, 'unbox'))
    grad = jax.jit(jax.grad(lambda p, b: objective.loss(p, b, None)[0]))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    jax.block_until_ready(grad(params, batch))  # compile
    start = time.perf_counter()
    for _ in range(repeats):
      out = grad(params, batch)
    jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--lengths', default='1024,4096,8192')
  parser.add_argument('--tokens_per_step', type=int, default=8192)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--block_size', type=int, default=128)
  args = parser.parse_args()
  results = []
  print(f'{"length":>7s} {"plain s/step":>13s} {"ring s/step":>12s} {"plain / ring":>13s}')
  for length in (int(n) for n in args.lengths.split(',')):
    batch = packed_rows(length, max(1, args.tokens_per_step // length))
    plain = step_seconds('dot_product', batch, args.repeats, args.block_size)
    ring = step_seconds('ring', batch, args.repeats, args.block_size)
    results.append(dict(length=length, rows=len(batch['inputs']), plain_seconds=plain,
                        ring_seconds=ring, speedup=plain / ring))
    print(f'{length:7d} {plain:13.3f} {ring:12.3f} {plain / ring:13.2f}')
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results',
                     'world_model_step.json')
  with open(out, 'w', encoding='utf-8') as f:
    json.dump(dict(device=str(jax.devices()[0]), tokens_per_step=args.tokens_per_step,
                   block_size=args.block_size,
                   results=results), f, indent=2)
  print(f'Wrote {out}.')


if __name__ == '__main__':
  main()
