"""Ring attention equals the reference attention (values and gradients) on 8 fake devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidlang_jax import sharding
from vidlang_jax.ops.attention import dot_product_attention
from vidlang_jax.ops.ring_attention import (
  causal_tiles_per_device,
  computed_tiles,
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


def bf16_ulps(x, reference):
  """|x - reference| in units in the last place of bf16 at the reference (8 significant bits),
  with a floor of 2^-11 of the largest value so that near-zero entries do not dominate."""
  reference = np.asarray(reference, np.float32)
  ulp = 2.0 ** (np.floor(np.log2(np.abs(reference) + 1e-30)) - 7)
  ulp = np.maximum(ulp, 2.0**-11 * np.abs(reference).max())
  return np.abs(np.asarray(x, np.float32) - reference) / ulp


def test_ring_bf16_accumulates_in_fp32():
  """bf16 in, bf16 out, within a fraction of a bf16 ulp of fp32 attention on the same inputs on
  average. 128 key tiles per row (block 8) make bf16 accumulators (o, l, or dq, dk, dv) show:
  they give 0.3-0.5 ulp on average here, fp32 ones 0.05-0.16."""
  mesh = sharding.make_mesh(dict(data=1, sequence=4), jax.devices()[:4])
  keys = jax.random.split(jax.random.key(0), 4)
  shape = (1, 1024, 2, 64)
  q, k = (0.3 * jax.random.normal(key, shape) for key in keys[:2])  # soft attention: many keys
  q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, jax.random.normal(keys[2], shape)))
  weights = jax.random.normal(keys[3], shape)
  ring = lambda q, k, v: ring_attention(q, k, v, mesh=mesh, causal=True, block_size=8)
  reference = lambda q, k, v: dot_product_attention(q, k, v, causal=True)
  loss = lambda fn: lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * weights)
  with jax.set_mesh(mesh):
    out, grads = jax.jit(lambda *a: (ring(*a), jax.grad(loss(ring), (0, 1, 2))(*a)))(q, k, v)
  exact = [x.astype(jnp.float32) for x in (q, k, v)]
  ref_out, ref_grads = reference(*exact), jax.grad(loss(reference), (0, 1, 2))(*exact)
  assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
  ulps = bf16_ulps(out, ref_out)
  assert ulps.mean() < 0.2 and ulps.max() < 3, (ulps.mean(), ulps.max())
  for name, grad, ref, bound in zip('qkv', grads, ref_grads, (0.3, 0.2, 0.2)):
    mean_ulps = bf16_ulps(grad, ref).mean()
    assert mean_ulps < bound, (f'd{name}', mean_ulps)


@pytest.mark.parametrize('layout', ['contiguous', 'zigzag'])
def test_kernel_skips_future_tiles(layout):
  """The kernel's own count of computed tiles equals the accounting of which tiles causal
  attention needs (so the balance below is the kernel's); without causality it computes all."""
  mesh = sharding.make_mesh(dict(data=1, sequence=8))
  length, block = 512, 16
  x = jnp.ones((2, length, 2, 8))
  positions = jnp.broadcast_to(jnp.asarray(layout_permutation(length, 8, layout)), (2, length))
  with jax.set_mesh(mesh):
    count = lambda causal: np.asarray(jax.jit(lambda x: computed_tiles(
        x, x, x, mesh=mesh, causal=causal, positions=positions, block_size=block))(x))
    np.testing.assert_array_equal(count(True),
                                  causal_tiles_per_device(length, 8, block, layout))
    np.testing.assert_array_equal(count(False), [(length // block) ** 2 // 8] * 8)


def test_skipped_tiles_are_not_computed_forward_or_backward():
  """NaN values in the last key tile reach every output row whose tile computes it (0 x NaN),
  so finite rows before it show that the forward and backward passes skipped those tiles (the
  reference, which masks instead of skipping, is NaN everywhere). Packed documents too: a NaN
  document leaves the tiles of the others alone."""
  mesh = sharding.make_mesh(dict(data=1, sequence=4), jax.devices()[:4])
  length, block = 256, 16
  keys = jax.random.split(jax.random.key(1), 3)
  q, k, v = (jax.random.normal(key, (1, length, 2, 16)) for key in keys)
  poisoned = v.at[:, -block:].set(jnp.nan)
  segments = jnp.asarray(np.repeat([1, 2], [length - 4 * block, 4 * block])[None], jnp.int32)

  def out_and_dq(q, causal, segment_ids, fn=ring_attention):
    extra = {'mesh': mesh, 'block_size': block} if fn is ring_attention else {}
    attend = lambda q: fn(q, k, poisoned, causal=causal, segment_ids=segment_ids, **extra)
    out, pullback = jax.vjp(attend, q)
    return out, pullback(jnp.ones_like(out))[0]

  with jax.set_mesh(mesh):
    for causal, segment_ids, clean_rows in [(True, None, length - block),
                                            (False, segments, length - 4 * block)]:
      results = jax.jit(out_and_dq, static_argnums=1)(q, causal, segment_ids)
      for x in map(np.asarray, results):
        assert np.isfinite(x[:, :clean_rows]).all(), (causal, clean_rows)
        assert np.isnan(x[:, -block:]).all()
  for x in map(np.asarray, out_and_dq(q, True, None, dot_product_attention)):
    assert np.isnan(x[:, :length - block]).all()


@pytest.mark.slow
@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('layout', ['contiguous', 'zigzag'])
def test_ring_equals_reference_8k(causal, layout):
  mesh = sharding.make_mesh(dict(data=1, sequence=8))
  results = compare(mesh, length=8192, causal=causal, layout=layout,
                    heads=2, kv_heads=1, batch=1, block_size=256)
  assert_matches_reference(*results)


def test_zigzag_balances_causal_work():
  """At the scale of a real run, by the accounting the kernel's count was checked against."""
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
