"""Ring attention equals the reference attention (values and gradients) on 8 fake devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidlang_jax import sharding
from vidlang_jax.ops.attention import dot_product_attention
from vidlang_jax.ops.ring_attention import (
  causal_tiles_per_device,
  layout_permutation,
  ring_attention,
)


def packed_segments(batch, length, rng):
  """Each row: a few documents of random lengths, then padding (segment 0)."""
  rows = []
  for _ in range(batch):
    cuts = np.sort(rng.choice(np.arange(1, length), size=3, replace=False))
    row = np.searchsorted(cuts, np.arange(length), side='right') + 1
    row[cuts[-1]:] = 0  # the tail is padding
    rows.append(row)
  return jnp.asarray(np.stack(rows), jnp.int32)


def compare(mesh, *, length, causal, layout, heads=4, kv_heads=2, head_dim=16, batch=2,
            block_size=16, packed=True, dtype=jnp.float32):
  shards = mesh.shape['sequence']
  keys = jax.random.split(jax.random.key(length), 4)
  q = jax.random.normal(keys[0], (batch, length, heads, head_dim), dtype)
  k = jax.random.normal(keys[1], (batch, length, kv_heads, head_dim), dtype)
  v = jax.random.normal(keys[2], (batch, length, kv_heads, head_dim), dtype)
  segments = packed_segments(batch, length, np.random.default_rng(length)) if packed else None
  perm = layout_permutation(length, shards, layout)
  inverse = np.argsort(perm)
  weights = jax.random.normal(keys[3], q.shape, jnp.float32)

  def ring(q, k, v):
    out = ring_attention(q[:, perm], k[:, perm], v[:, perm], mesh=mesh, causal=causal,
                         segment_ids=None if segments is None else segments[:, perm],
                         positions=jnp.broadcast_to(jnp.asarray(perm), (batch, length)),
                         block_size=block_size)
    return out[:, inverse]

  def reference(q, k, v):
    return dot_product_attention(q, k, v, causal=causal, segment_ids=segments)

  loss = lambda fn: lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * weights)
  with jax.set_mesh(mesh):
    out, grads = jax.jit(lambda *a: (ring(*a), jax.grad(loss(ring), (0, 1, 2))(*a)))(q, k, v)
  ref_out, ref_grads = reference(q, k, v), jax.grad(loss(reference), (0, 1, 2))(q, k, v)
  return out, grads, ref_out, ref_grads


def assert_matches_reference(out, grads, ref_out, ref_grads, atol=2e-5):
  """The ring's output and its gradients w.r.t. q, k and v equal the reference's."""
  np.testing.assert_allclose(out, ref_out, atol=atol)
  for grad, ref in zip(grads, ref_grads):
    np.testing.assert_allclose(grad, ref, atol=atol)


@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('layout', ['contiguous', 'zigzag'])
def test_ring_equals_reference(causal, layout):
  mesh = sharding.make_mesh(dict(data=1, sequence=8))
  results = compare(mesh, length=512, causal=causal, layout=layout)
  assert_matches_reference(*results)


def test_ring_with_batch_sharding_and_unpacked():
  mesh = sharding.make_mesh(dict(data=2, sequence=4))
  results = compare(mesh, length=256, causal=True, layout='zigzag',
                    heads=2, kv_heads=2, packed=False, block_size=32)
  assert_matches_reference(*results)


def test_ring_bf16_accumulates_in_fp32():
  mesh = sharding.make_mesh(dict(data=1, sequence=8))
  out, _, ref_out, _ = compare(mesh, length=256, causal=True, layout='zigzag',
                               dtype=jnp.bfloat16)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), ref_out.astype(jnp.float32), atol=3e-2)


@pytest.mark.slow
@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('layout', ['contiguous', 'zigzag'])
def test_ring_equals_reference_8k(causal, layout):
  mesh = sharding.make_mesh(dict(data=1, sequence=8))
  results = compare(mesh, length=8192, causal=causal, layout=layout,
                    heads=2, kv_heads=1, batch=1, block_size=256)
  assert_matches_reference(*results)


def test_zigzag_balances_causal_work():
  contiguous = causal_tiles_per_device(32768, 8, 512, 'contiguous')
  zigzag = causal_tiles_per_device(32768, 8, 512, 'zigzag')
  assert zigzag.max() / zigzag.mean() <= 1.05
  assert contiguous.max() / contiguous.mean() > 1.8
  # Both compute the same tiles in all: of the 64 x 64 aligned 512-token tiles, those on or
  # below the diagonal.
  assert zigzag.sum() == contiguous.sum() == 64 * 65 // 2
  assert np.array_equal(np.sort(layout_permutation(64, 4, 'zigzag')), np.arange(64))


def test_errors_name_the_problem():
  mesh = sharding.make_mesh(dict(data=1, sequence=8))
  x = jnp.zeros((1, 100, 2, 8))
  with pytest.raises(ValueError, match='not divisible'):
    ring_attention(x, x, x, mesh=mesh)
  with pytest.raises(ValueError, match='zigzag'):
    layout_permutation(24, 8, 'zigzag')
