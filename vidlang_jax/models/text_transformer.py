"""Text tower: token + position embeddings, a transformer, pooled by masked mean (ours), the
EOS token (CLIP) or the last position (SigLIP)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vidlang_jax.models import layers

PAD_ID = 0
POOLS = ('mean', 'eos', 'last')


class TextTransformer(nn.Module):
  """Encodes `[batch, length]` token ids.

  `pad_id` tokens are masked out of attention and of the mean (None: nothing is masked, as
  SigLIP was trained on rows padded to full length). `pool='eos'` takes the first `eos_id`
  token (the last token where a row has none); with `causal` attention (CLIP) it has read the
  whole caption and nothing after it. `act` and `norm_eps` are for converted checkpoints.
  """

  vocab_size: int = 32_000
  width: int = 512
  depth: int = 12
  num_heads: int = 8
  mlp_dim: int | None = None
  max_len: int = 64
  causal: bool = False
  pool: str = 'mean'
  pad_id: int | None = PAD_ID
  eos_id: int | None = None
  act: str = 'gelu_tanh'
  norm_eps: float = 1e-6
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
    if self.pool not in POOLS or (self.pool == 'eos' and self.eos_id is None):
      raise ValueError(f'text tower pool={self.pool!r} must be one of {POOLS}; eos needs '
                       f'eos_id (got {self.eos_id}).')
    init = nn.initializers.normal(0.02)
    embedding = self.param('token_embedding', layers.partitioned(init, 'vocab', 'embed'),
                           (self.vocab_size, self.width))
    pos = self.param('pos_embedding', layers.partitioned(init, None, 'embed'),
                     (self.max_len, self.width))
    x = jnp.take(embedding, tokens, axis=0).astype(self.dtype) + pos[None, :length]
    x = layers.constrain(x, 'batch', 'length', 'embed')
    valid = tokens != self.pad_id if self.pad_id is not None else jnp.ones_like(tokens, bool)
    x = layers.Encoder(self.depth, self.num_heads, self.mlp_dim or 4 * self.width,
                       causal=self.causal, dropout=self.dropout, scan=self.scan,
                       remat=self.remat, act=self.act, norm_eps=self.norm_eps, dtype=self.dtype,
                       name='encoder')(x, valid.astype(jnp.int32) if self.pad_id is not None
                                       else None, train=train)
    if self.pool == 'mean':
      weights = valid.astype(x.dtype)[..., None]
      pooled = (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)
    else:
      if self.pool == 'eos':
        is_eos = tokens == self.eos_id
        index = jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1), length - 1)
      else:
        index = jnp.full(tokens.shape[:1], length - 1)
      pooled = jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]
    return pooled, x
