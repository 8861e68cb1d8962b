"""Ring attention (Liu et al.; the LWM kernel): exact attention with the sequence sharded over a
mesh axis.

Each device keeps its query shard and passes its key/value shard (with their positions and
segment ids) around the ring with `lax.ppermute`, N steps for N devices. Every step is a
blockwise online-softmax pass (fp32 max / sum / accumulator), so memory holds one
`[block_q, block_kv]` tile of logits at a time, never `[L, L]`. The backward pass is a second
ring (`jax.custom_vjp`): the key/value gradients travel with their shard and are home after N
steps, so activation memory stays O(L / N).

Causal masking uses each token's global position, so it works for any layout of the sequence
over devices; tiles that are entirely in the future are skipped. With the contiguous layout the
last device does N times the work of the first; `layout='zigzag'` (device i holds chunks i and
2N - 1 - i of 2N) gives every device the same work. Segment ids (0 = padding) keep packed
documents apart, as in `ops.attention.dot_product_attention`, which this must equal.
"""

from __future__ import annotations

import functools
import math

import einops
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

NEG_INF = -1e30  # Finite, so fully masked tiles give exp(NEG_INF - m) = 0, not NaN.


# ----------------------------------------------------------------------------- layouts


def layout_permutation(length: int, num_shards: int, layout: str) -> np.ndarray:
  """Token order that puts each device's share contiguous: `x[:, perm]` is laid out so that
  shard i of the sequence axis holds what `layout` gives device i."""
  if layout == 'contiguous':
    return np.arange(length)
  if layout != 'zigzag':
    raise ValueError(f"layout must be 'contiguous' or 'zigzag', got {layout!r}.")
  if length % (2 * num_shards):
    raise ValueError(f'zigzag layout needs length {length} divisible by 2 x {num_shards} shards.')
  chunks = np.arange(length).reshape(2 * num_shards, -1)
  return np.concatenate([np.concatenate([chunks[i], chunks[2 * num_shards - 1 - i]])
                         for i in range(num_shards)])


def causal_tiles_per_device(length: int, num_shards: int, block: int, layout: str) -> np.ndarray:
  """How many `[block, block]` tiles each device computes in causal ring attention (the rest
  are skipped): the load balance of a layout."""
  positions = layout_permutation(length, num_shards, layout).reshape(num_shards, -1, block)
  first, last = positions.min(-1), positions.max(-1)  # [device, tiles]
  counts = []
  for device in range(num_shards):
    # A query tile needs a key tile unless every key is after every query.
    needed = first[None, :, :] <= last[device][:, None, None]  # [q tiles, kv device, kv tiles]
    counts.append(int(needed.sum()))
  return np.array(counts)


# ----------------------------------------------------------------------------- one tile
#
# Inside the kernel every tensor is head-major: q and o `[b, kvh, g, L, d]`, k and v
# `[b, kvh, L, d]`, the softmax statistics `[b, kvh, g, L]`. Each tile's products are then
# plain batched matmuls over `(b, kvh)` with the g query heads of a kv head stacked as rows; in
# the token-major layout of the model XLA:CPU transposed every operand of every tile, which took
# more than half the kernel's time.


def _tile_mask(q_pos, kv_pos, q_seg, kv_seg, causal):
  """`[b, 1, 1, bq, bk]`: which queries of the tile see which keys."""
  mask = (q_seg[:, :, None] == kv_seg[:, None, :]) & (q_seg[:, :, None] != 0)
  if causal:
    mask &= q_pos[:, :, None] >= kv_pos[:, None, :]
  return mask[:, None, None]


# What a tile needs (`lax.switch` branches): nothing, its products without a mask, or masked.
SKIP, FULL, MASKED = 0, 1, 2


def _tile_kind(q_pos, kv_pos, q_seg, kv_seg, causal):
  """SKIP when the tile contributes nothing: in every row, the tile's queries and keys belong
  to different documents (packed segments; 0 is padding), or every key is in the future of
  every query (causal); off-diagonal tiles of packed rows are skipped like future ones. FULL
  when every query sees every key (one document, every key in the past): most tiles of a long
  document, which then need no mask. MASKED otherwise."""
  big = jnp.iinfo(q_seg.dtype).max
  lowest = lambda seg: jnp.min(jnp.where(seg > 0, seg, big), axis=-1)  # [b]
  disjoint = (jnp.max(q_seg, -1) < lowest(kv_seg)) | (jnp.max(kv_seg, -1) < lowest(q_seg))
  one_document = ((jnp.min(q_seg, -1) == jnp.max(kv_seg, -1))
                  & (jnp.max(q_seg, -1) == jnp.min(kv_seg, -1)) & (jnp.min(q_seg, -1) > 0))
  if causal:
    disjoint |= jnp.max(q_pos, -1) < jnp.min(kv_pos, -1)
    one_document &= jnp.min(q_pos, -1) >= jnp.max(kv_pos, -1)
  return jnp.where(jnp.all(disjoint), SKIP, jnp.where(jnp.all(one_document), FULL, MASKED))


def _split(x, block, axis):
  """Splits the length axis `axis` into tiles: `[..., L, ...]` -> `[L // block, ..., block,
  ...]`."""
  shape = x.shape
  x = x.reshape(shape[:axis] + (shape[axis] // block, block) + shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def _merge(x, axis):
  """Inverse of `_split`."""
  x = jnp.moveaxis(x, 0, axis)
  return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])


# Length axes: q, o, do `[b, kvh, g, L, d]`: 3; k, v `[b, kvh, L, d]`: 2; softmax statistics
# `[b, kvh, g, L]`: 3; positions and segments `[b, L]`: 1.
_Q, _KV, _STAT, _TOKEN = 3, 2, 3, 1


# ----------------------------------------------------------------------------- forward


def _forward_shard(acc, q, k, v, q_pos, kv_pos, q_seg, kv_seg, *, causal, block_q, block_kv):
  """Online-softmax update of `acc = (o, m, l)` for the local (scaled) queries against one kv
  shard. o `[b, kvh, g, Lq, d]`, m and l `[b, kvh, g, Lq]`, all fp32. Also returns how many
  tiles were computed (not skipped), the kernel's own count of its work.
  """
  kv_tiles = (_split(k, block_kv, _KV), _split(v, block_kv, _KV),
              _split(kv_pos, block_kv, _TOKEN), _split(kv_seg, block_kv, _TOKEN))

  def per_q_tile(args):
    o, m, l, q_t, qp, qs = args

    def per_kv_tile(carry, tile):
      k_t, v_t, kp, ks = tile

      def compute(carry, masked):
        o, m, l, computed = carry
        s = jnp.einsum('bhgqd,bhkd->bhgqk', q_t, k_t, preferred_element_type=jnp.float32)
        if masked:
          mask = _tile_mask(qp, kp, qs, ks, causal)
          s = jnp.where(mask, s, NEG_INF)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.exp(s - m_new[..., None])
        if masked:  # rows that saw nothing yet have m_new = NEG_INF: exp(0) is not their 0
          p = jnp.where(mask, p, 0.0)
        correction = jnp.exp(m - m_new)
        l = l * correction + p.sum(-1)
        pv = jnp.einsum('bhgqk,bhkd->bhgqd', p.astype(v_t.dtype), v_t,
                        preferred_element_type=jnp.float32)
        o = o * correction[..., None] + pv
        return o, m_new, l, computed + 1

      branches = (lambda c: c, functools.partial(compute, masked=False),
                  functools.partial(compute, masked=True))
      return lax.switch(_tile_kind(qp, kp, qs, ks, causal), branches, carry), None

    carry, _ = lax.scan(per_kv_tile, (o, m, l, jnp.zeros((), jnp.int32)), kv_tiles)
    return carry

  o, m, l = acc
  out = lax.map(per_q_tile, (_split(o, block_q, _Q), _split(m, block_q, _STAT),
                             _split(l, block_q, _STAT), _split(q, block_q, _Q),
                             _split(q_pos, block_q, _TOKEN), _split(q_seg, block_q, _TOKEN)))
  return (_merge(out[0], _Q), _merge(out[1], _STAT), _merge(out[2], _STAT)), out[3].sum()


def _ring_permute(x, axis_name, size):
  return lax.ppermute(x, axis_name, [(i, (i + 1) % size) for i in range(size)])


def _ring_forward(q, k, v, q_pos, q_seg, *, axis_name, size, causal, block_q, block_kv):
  """Per-device body: q `[b, kvh, g, Lq, d]`; returns (out, logsumexp `[b, kvh, g, Lq]`, tiles
  computed)."""
  b, kvh, g, lq, d = q.shape
  q_scaled = q * jnp.asarray(1.0 / math.sqrt(d), q.dtype)  # once, not on every tile's logits
  acc = (jnp.zeros((b, kvh, g, lq, d), jnp.float32),
         jnp.full((b, kvh, g, lq), NEG_INF, jnp.float32),
         jnp.zeros((b, kvh, g, lq), jnp.float32))

  def step(carry, _):
    acc, computed, k, v, kv_pos, kv_seg = carry
    acc, tiles = _forward_shard(acc, q_scaled, k, v, q_pos, kv_pos, q_seg, kv_seg,
                                causal=causal, block_q=block_q, block_kv=block_kv)
    k, v, kv_pos, kv_seg = (_ring_permute(x, axis_name, size) for x in (k, v, kv_pos, kv_seg))
    return (acc, computed + tiles, k, v, kv_pos, kv_seg), None

  (acc, computed, *_), _ = lax.scan(step, (acc, jnp.zeros((), jnp.int32), k, v, q_pos, q_seg),
                                    None, length=size)
  o, m, l = acc
  safe_l = jnp.where(l == 0, 1.0, l)  # rows that see nothing (padding) return zeros
  out = o / safe_l[..., None]
  lse = jnp.where(l == 0, jnp.inf, m + jnp.log(safe_l))
  return out.astype(q.dtype), lse, computed


# ----------------------------------------------------------------------------- backward


def _backward_shard(grads, q, k, v, do, lse, delta, q_pos, kv_pos, q_seg, kv_seg, *, causal,
                    block_q, block_kv):
  """Adds one kv shard's contribution to (dq, dk, dv), tile by tile; q is already scaled."""
  dq, dk, dv = grads
  kv_tiles = (_split(k, block_kv, _KV), _split(v, block_kv, _KV),
              _split(kv_pos, block_kv, _TOKEN), _split(kv_seg, block_kv, _TOKEN),
              _split(dk, block_kv, _KV), _split(dv, block_kv, _KV))

  def per_kv_tile(dq, tile):
    k_t, v_t, kp, ks, dk_t, dv_t = tile

    def per_q_tile(carry, args):
      dk_t, dv_t = carry
      q_t, do_t, lse_t, delta_t, qp, qs = args

      def compute(_, masked):
        # Transposed tiles `[b, kvh, g, bk, bq]`: dk and dv contract over the queries, which
        # are then the rows' last axis (no transposes of p and ds); only dq needs ds^T.
        g = q_t.shape[2]
        k_g, v_g = (jnp.broadcast_to(x[:, :, None], x.shape[:2] + (g,) + x.shape[2:])
                    for x in (k_t, v_t))
        st = jnp.einsum('bhgkd,bhgqd->bhgkq', k_g, q_t, preferred_element_type=jnp.float32)
        pt = jnp.exp(st - lse_t[..., None, :])
        if masked:
          mask = ks[:, :, None] == qs[:, None, :]
          mask &= qs[:, None, :] != 0
          if causal:
            mask &= kp[:, :, None] <= qp[:, None, :]
          pt = jnp.where(mask[:, None, None], pt, 0.0)  # mask [b, 1, 1, bk, bq]
        dv_c = jnp.einsum('bhgkq,bhgqd->bhgkd', pt, do_t.astype(jnp.float32)).sum(2)
        dpt = jnp.einsum('bhgkd,bhgqd->bhgkq', v_g, do_t, preferred_element_type=jnp.float32)
        dst = pt * (dpt - delta_t[..., None, :])
        dk_c = jnp.einsum('bhgkq,bhgqd->bhgkd', dst, q_t.astype(jnp.float32)).sum(2)
        dq_c = jnp.einsum('bhgkq,bhgkd->bhgqd', dst, k_g.astype(jnp.float32))
        return dq_c, dk_c, dv_c

      zeros = (jnp.zeros(q_t.shape, jnp.float32), jnp.zeros(dk_t.shape, jnp.float32),
               jnp.zeros(dv_t.shape, jnp.float32))
      branches = (lambda _: zeros, functools.partial(compute, masked=False),
                  functools.partial(compute, masked=True))
      dq_c, dk_c, dv_c = lax.switch(_tile_kind(qp, kp, qs, ks, causal), branches, None)
      return (dk_t + dk_c, dv_t + dv_c), dq_c

    (dk_t, dv_t), dq_tiles = lax.scan(
        per_q_tile, (dk_t, dv_t),
        (_split(q, block_q, _Q), _split(do, block_q, _Q), _split(lse, block_q, _STAT),
         _split(delta, block_q, _STAT), _split(q_pos, block_q, _TOKEN),
         _split(q_seg, block_q, _TOKEN)))
    return dq + _merge(dq_tiles, _Q), (dk_t, dv_t)

  dq, (dk_tiles, dv_tiles) = lax.scan(per_kv_tile, dq, kv_tiles)
  return dq, _merge(dk_tiles, _KV), _merge(dv_tiles, _KV)


def _ring_backward(q, k, v, q_pos, q_seg, out, lse, do, *, axis_name, size, causal, block_q,
                   block_kv):
  scale = 1.0 / math.sqrt(q.shape[-1])
  q_scaled = q * jnp.asarray(scale, q.dtype)
  # delta_i = sum_d do_i * o_i  [b, kvh, g, Lq]
  delta = jnp.einsum('bhgqd,bhgqd->bhgq', do.astype(jnp.float32), out.astype(jnp.float32))
  lse = jnp.where(jnp.isinf(lse), 0.0, lse)  # masked rows: p is zero anyway
  dq = jnp.zeros(q.shape, jnp.float32)
  dk, dv = jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)

  def step(carry, _):
    dq, k, v, kv_pos, kv_seg, dk, dv = carry
    dq, dk, dv = _backward_shard((dq, dk, dv), q_scaled, k, v, do, lse, delta, q_pos, kv_pos,
                                 q_seg, kv_seg, causal=causal, block_q=block_q,
                                 block_kv=block_kv)
    k, v, kv_pos, kv_seg, dk, dv = (_ring_permute(x, axis_name, size)
                                    for x in (k, v, kv_pos, kv_seg, dk, dv))
    return (dq, k, v, kv_pos, kv_seg, dk, dv), None

  # After `size` hops every kv shard, and the gradient travelling with it, is home again.
  (dq, _, _, _, _, dk, dv), _ = lax.scan(step, (dq, k, v, q_pos, q_seg, dk, dv), None,
                                         length=size)
  # The logits were (q * scale) . k: dq gets the scale here, dk got it from the scaled q.
  return (dq * scale).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _ring(q, k, v, q_pos, q_seg, axis_name, size, causal, block_q, block_kv):
  return _ring_forward(q, k, v, q_pos, q_seg, axis_name=axis_name, size=size, causal=causal,
                       block_q=block_q, block_kv=block_kv)[0]


def _ring_fwd(q, k, v, q_pos, q_seg, axis_name, size, causal, block_q, block_kv):
  out, lse, _ = _ring_forward(q, k, v, q_pos, q_seg, axis_name=axis_name, size=size,
                              causal=causal, block_q=block_q, block_kv=block_kv)
  return out, (q, k, v, q_pos, q_seg, out, lse)


def _ring_bwd(axis_name, size, causal, block_q, block_kv, residuals, do):
  q, k, v, q_pos, q_seg, out, lse = residuals
  dq, dk, dv = _ring_backward(q, k, v, q_pos, q_seg, out, lse, do, axis_name=axis_name,
                              size=size, causal=causal, block_q=block_q, block_kv=block_kv)
  return dq, dk, dv, None, None


_ring.defvjp(_ring_fwd, _ring_bwd)


# ----------------------------------------------------------------------------- public


def _sharded(kernel, q, k, v, *, mesh, segment_ids, positions, axis_name, batch_axes,
             block_size, out_specs):
  """Checks the shapes, fills in positions and segments, and runs `kernel(q, k, v, pos, seg,
  kv_heads, shards, block)` per device under `shard_map`."""
  batch, length, heads, _ = q.shape
  kv_heads = k.shape[2]
  if heads % kv_heads:
    raise ValueError(f'heads={heads} is not a multiple of kv_heads={kv_heads}.')
  if axis_name not in mesh.shape:
    raise ValueError(f'ring attention shards the sequence over mesh axis {axis_name!r}, which '
                     f'the mesh {dict(mesh.shape)} does not have (run under jax.set_mesh).')
  shards = mesh.shape[axis_name]
  if length % shards:
    raise ValueError(f'sequence length {length} is not divisible by the {shards} devices of '
                     f'mesh axis {axis_name!r}.')
  local = length // shards
  block = min(block_size, local)
  if local % block:
    raise ValueError(f'per-device length {local} is not divisible by block_size {block}.')
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  if segment_ids is None:
    segment_ids = jnp.ones((batch, length), jnp.int32)
  batch_axes = tuple(a for a in batch_axes if a in mesh.shape and mesh.shape[a] > 1
                     and batch % mesh.shape[a] == 0) or None
  qkv_spec = P(batch_axes, axis_name, None, None)
  token_spec = P(batch_axes, axis_name)

  def body(q, k, v, pos, seg):
    # Head-major inside the kernel: q [b, kvh, g, L, d], k and v [b, kvh, L, d].
    q = einops.rearrange(q, 'b l (h g) d -> b h g l d', h=kv_heads)
    k, v = (einops.rearrange(x, 'b l h d -> b h l d') for x in (k, v))
    return kernel(q, k, v, pos.astype(jnp.int32), seg.astype(jnp.int32), shards, block)

  out_specs = out_specs(qkv_spec, axis_name, batch_axes)
  return jax.shard_map(body, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, token_spec,
                                                  token_spec),
                       out_specs=out_specs, check_vma=False)(q, k, v, positions, segment_ids)


def ring_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh,
    causal: bool = False,
    segment_ids: jax.Array | None = None,
    positions: jax.Array | None = None,
    axis_name: str = 'sequence',
    batch_axes: tuple[str, ...] = ('data', 'fsdp'),
    block_size: int = 512,
) -> jax.Array:
  """Exact attention over a sequence sharded along `axis_name` of `mesh`.

  Args:
    q: `[batch, length, heads, head_dim]`; k, v: `[batch, length, kv_heads, head_dim]`
      (grouped-query attention when kv_heads < heads). bf16 inputs accumulate in fp32.
    causal: query at position i sees keys at positions <= i.
    segment_ids: `[batch, length]` int; attention stays within a segment, 0 is padding.
    positions: `[batch, length]` global positions of the tokens as laid out (default
      0..length-1, the contiguous layout). Pass the permuted positions for `zigzag`, see
      `layout_permutation`; causality follows them, not the storage order.
    block_size: query and key tile length inside a device (memory is O(block_size^2)).

  Returns `[batch, length, heads, head_dim]` in q's dtype, sharded like q.
  """

  def kernel(q, k, v, pos, seg, shards, block):
    out = _ring(q, k, v, pos, seg, axis_name, shards, causal, block, block)
    return einops.rearrange(out, 'b h g l d -> b l (h g) d')

  return _sharded(kernel, q, k, v, mesh=mesh, segment_ids=segment_ids, positions=positions,
                  axis_name=axis_name, batch_axes=batch_axes, block_size=block_size,
                  out_specs=lambda qkv_spec, *_: qkv_spec)


def computed_tiles(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh,
    causal: bool = False,
    segment_ids: jax.Array | None = None,
    positions: jax.Array | None = None,
    axis_name: str = 'sequence',
    batch_axes: tuple[str, ...] = ('data', 'fsdp'),
    block_size: int = 512,
) -> jax.Array:
  """`[num_shards]`: how many `[block, block]` tiles each device's forward pass computed for
  `ring_attention` with these arguments (the others it skipped), counted inside the kernel.
  With batch sharding the count is that of the first batch shard."""

  def kernel(q, k, v, pos, seg, shards, block):
    _, _, computed = _ring_forward(q, k, v, pos, seg, axis_name=axis_name, size=shards,
                                   causal=causal, block_q=block, block_kv=block)
    return computed[None]

  counts = _sharded(kernel, q, k, v, mesh=mesh, segment_ids=segment_ids, positions=positions,
                    axis_name=axis_name, batch_axes=batch_axes, block_size=block_size,
                    out_specs=lambda _, axis, batch_axes: P((*(batch_axes or ()), axis)))
  return counts.reshape(-1, mesh.shape[axis_name])[0]
