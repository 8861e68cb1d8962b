"""Reference dot-product attention: the numerics every other kernel must match."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    q_offset: jax.Array | int = 0,
) -> jax.Array:
  """Softmax attention with fp32 logits and accumulation.

  Args:
    q: `[batch, q_len, heads, head_dim]`.
    k, v: `[batch, kv_len, kv_heads, head_dim]`; kv_heads divides heads (grouped-query attention).
    causal: query i sees keys j <= i (positions aligned at the start).
    segment_ids: `[batch, q_len]` int; tokens attend only within the same segment and
      segment 0 is padding (attends to nothing, is attended by nothing).
    kv_segment_ids: `[batch, kv_len]`; defaults to `segment_ids` (self-attention).
    q_offset: with `causal`, query i sits at key position `q_offset + i` (decoding with a KV
      cache, where the queries are the newest tokens); may be traced.

  Returns:
    `[batch, q_len, heads, head_dim]` in q's dtype. Fully masked rows return zeros.
  """
  batch, q_len, heads, head_dim = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  if heads % kv_heads:
    raise ValueError(f'heads={heads} is not a multiple of kv_heads={kv_heads}.')
  groups = heads // kv_heads
  if groups > 1:  # Each kv head serves `groups` query heads, without copying k and v.
    q = q.reshape(batch, q_len, kv_heads, groups, head_dim)
    logits = jnp.einsum('bqhgd,bkhd->bhgqk', q, k, preferred_element_type=jnp.float32)
  else:  # [batch, heads, 1, q_len, kv_len]; the plain 4D contraction is faster on CPU.
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)[:, :, None]
  logits = logits / jnp.sqrt(jnp.float32(head_dim))

  if not causal and segment_ids is None:  # Nothing to mask: a plain softmax.
    weights = jax.nn.softmax(logits, axis=-1)
  else:
    mask = jnp.ones((batch, 1, 1, q_len, kv_len), dtype=bool)
    if causal:
      mask &= (jnp.arange(kv_len)[None, :] <= jnp.arange(q_len)[:, None] + q_offset)[None, None,
                                                                                    None]
    if segment_ids is not None:
      kv_segment_ids = segment_ids if kv_segment_ids is None else kv_segment_ids
      same = segment_ids[:, :, None] == kv_segment_ids[:, None, :]
      valid = (segment_ids[:, :, None] != 0) & (kv_segment_ids[:, None, :] != 0)
      mask &= (same & valid)[:, None, None]
    logits = jnp.where(mask, logits, -jnp.inf)
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    weights = jnp.exp(logits - row_max)
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    weights = weights / jnp.where(denom == 0, 1.0, denom)
  if groups > 1:
    out = jnp.einsum('bhgqk,bkhd->bqhgd', weights.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
  else:
    out = jnp.einsum('bhqk,bkhd->bqhd', weights[:, :, 0].astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
  return out.reshape(batch, q_len, heads, head_dim).astype(q.dtype)
