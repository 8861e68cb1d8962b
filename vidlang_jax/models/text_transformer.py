"""Text tower: token + position embeddings, a bidirectional transformer, masked mean pooling."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vidlang_jax.models import layers

PAD_ID = 0


class TextTransformer(nn.Module):
  """Encodes `[batch, length]` token ids (0 = padding)."""

  vocab_size: int = 32_000
  width: int = 512
  depth: int = 12
  num_heads: int = 8
  mlp_dim: int | None = None
  max_len: int = 64
  dropout: float = 0.0
  scan: bool = True
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Returns (pooled `[batch, width]`, token features `[batch, length, width]`)."""
    length = tokens.shape[1]
    if length > self.max_len:
      raise ValueError(f'text of {length} tokens is longer than max_len={self.max_len}.')
    init = nn.initializers.normal(0.02)
    embedding = self.param('token_embedding', layers.partitioned(init, 'vocab', 'embed'),
                           (self.vocab_size, self.width))
    pos = self.param('pos_embedding', layers.partitioned(init, None, 'embed'),
                     (self.max_len, self.width))
    x = jnp.take(embedding, tokens, axis=0).astype(self.dtype) + pos[None, :length]
    x = layers.constrain(x, 'batch', 'length', 'embed')
    valid = tokens != PAD_ID
    x = layers.Encoder(self.depth, self.num_heads, self.mlp_dim or 4 * self.width,
                       dropout=self.dropout, scan=self.scan, remat=self.remat, dtype=self.dtype,
                       name='encoder')(x, valid.astype(jnp.int32), train=train)
    weights = valid.astype(x.dtype)[..., None]
    pooled = (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)
    return pooled, x
