"""Video ViT: 3D tubelet patches, factorised space + time position embeddings, joint or divided
space-time attention. Shared by the two-tower model and masked video modeling."""

from __future__ import annotations

from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vidlang_jax.models import layers


def patchify(video: jax.Array, tubelet: tuple[int, int, int]) -> jax.Array:
  """`[batch, time, height, width, channels]` -> `[batch, t, h, w, pt*ph*pw*channels]`."""
  pt, ph, pw = tubelet
  _, time, height, width, _ = video.shape
  if time % pt or height % ph or width % pw:
    raise ValueError(f'video of {time}x{height}x{width} (time x height x width) is not divisible '
                     f'by the tubelet {pt}x{ph}x{pw}.')
  return einops.rearrange(video, 'b (t pt) (h ph) (w pw) c -> b t h w (pt ph pw c)',
                          pt=pt, ph=ph, pw=pw)


def sincos_table(length: int, width: int) -> np.ndarray:
  """VideoMAE's fixed positions `[length, width]`: position p, channel j gets sin (even j) or
  cos (odd j) of p / 10000^(2 (j // 2) / width)."""
  angles = np.arange(length)[:, None] / np.power(10_000, 2 * (np.arange(width) // 2) / width)
  return np.where(np.arange(width) % 2 == 0, np.sin(angles), np.cos(angles)).astype(np.float32)


def _resize_embedding(emb: jax.Array, length: int) -> jax.Array:
  """Linear interpolation of `[n, width]` position embeddings to `[length, width]`."""
  if emb.shape[0] == length:
    return emb
  return jax.image.resize(emb, (length, emb.shape[1]), method='linear')


class VideoViT(nn.Module):
  """Encodes `[batch, time, height, width, channels]` videos.

  `num_frames`, `image_size` size the position embeddings; other frame counts at apply time
  interpolate the time embedding (so a model trained on 8 frames evaluates on 16).

  Options that checkpoints from other code need (vidlang_jax/convert/): `posemb='sincos'`,
  VideoMAE's fixed table over the t-major token index instead of learned time + space
  embeddings; `pool='cls'`, CLIP's class token (joint attention only); `norm_pre`, CLIP's
  LayerNorm before the blocks; `final_norm=False` for VideoMAE's mean-pooling encoders; the
  MLP's `act` and the LayerNorms' `norm_eps`.
  """

  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int | None = None
  tubelet: tuple[int, int, int] = (2, 16, 16)
  num_frames: int = 16
  image_size: int = 224
  attention: str = 'joint'   # 'joint' | 'divided'
  pool: str = 'gap'          # 'gap' | 'map' (attention pooling, as in SigLIP) | 'cls'
  posemb: str = 'learned'    # 'learned' (time + space) | 'sincos' (fixed, VideoMAE)
  norm_pre: bool = False
  final_norm: bool = True
  act: str = 'gelu_tanh'
  norm_eps: float = 1e-6
  dropout: float = 0.0
  scan: bool = True
  remat: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    pt, ph, pw = self.tubelet
    self.grid = (self.num_frames // pt, self.image_size // ph, self.image_size // pw)
    for key, value, allowed in (('pool', self.pool, ('gap', 'map', 'cls')),
                                ('posemb', self.posemb, ('learned', 'sincos'))):
      if value not in allowed:
        raise ValueError(f'video tower {key}={value!r} is not one of {allowed}.')
    if self.pool == 'cls' and self.attention != 'joint':
      raise ValueError("video tower pool='cls' needs attention='joint' (a class token has no "
                       'place in a time x space grid).')
    init = nn.initializers.normal(0.02)
    mlp_dim = self.mlp_dim or 4 * self.width
    self.patch_embed = nn.Dense(self.width, dtype=self.dtype, name='patch_embed',
                                kernel_init=layers.partitioned(nn.initializers.lecun_normal(),
                                                               None, 'embed'),
                                bias_init=layers.partitioned(nn.initializers.zeros, 'embed'))
    if self.posemb == 'learned':
      self.pos_time = self.param('pos_time', layers.partitioned(init, None, 'embed'),
                                 (self.grid[0], self.width))
      self.pos_space = self.param('pos_space', layers.partitioned(init, None, 'embed'),
                                  (self.grid[1] * self.grid[2], self.width))
    if self.pool == 'cls':  # the class token with its position embedding folded in
      self.cls = self.param('cls', layers.partitioned(init, 'embed'), (self.width,))
    if self.norm_pre:
      self.norm_pre_layer = layers.layer_norm('norm_pre', self.dtype, self.norm_eps)
    self.encoder = layers.Encoder(
        self.depth, self.num_heads, mlp_dim, attention=self.attention, dropout=self.dropout,
        scan=self.scan, remat=self.remat, act=self.act, norm_eps=self.norm_eps,
        final_norm=self.final_norm, dtype=self.dtype, name='encoder')
    if self.pool == 'map':  # big_vision's MAPHead: attention from a learned query, then an MLP
      self.pool_query = self.param('pool_query', layers.partitioned(init, None, None, 'embed'),
                                   (1, 1, self.width))
      self.pool_attention = nn.MultiHeadDotProductAttention(self.num_heads, dtype=self.dtype,
                                                            name='pool_attention')
      self.pool_norm = layers.layer_norm('pool_norm', self.dtype, self.norm_eps)
      self.pool_mlp = layers.Mlp(mlp_dim, self.dtype, self.act, name='pool_mlp')

  def embed(self, video: jax.Array, keep_indices: jax.Array | None = None) -> jax.Array:
    """Tubelet tokens with position embeddings.

    Returns `[batch, t, h*w, width]`, or with `keep_indices` (`[batch, n]` into the t-major
    flattened grid, see `vidlang_jax.masking`) only those tokens, `[batch, n, width]`: the
    patches are gathered before the embedding, so masked tokens cost nothing.
    """
    patches = patchify(video, self.tubelet)
    _, t, h, w, _ = patches.shape
    if (h, w) != self.grid[1:]:
      raise ValueError(f'frames give a {h}x{w} patch grid but the model was built for '
                       f'{self.grid[1]}x{self.grid[2]} (image_size={self.image_size}).')
    # [t * h * w, width], t-major like the patches.
    if self.posemb == 'sincos':
      pos = jnp.asarray(sincos_table(t * h * w, self.width))
    else:
      pos = (_resize_embedding(self.pos_time, t)[:, None] + self.pos_space[None]).reshape(
          t * h * w, self.width)
    patches = einops.rearrange(patches, 'b t h w p -> b (t h w) p')
    if keep_indices is not None:
      patches = jnp.take_along_axis(patches, keep_indices[..., None], axis=1)
      pos = pos[keep_indices]  # [batch, n, width]
    tokens = self.patch_embed(patches.astype(self.dtype)) + pos.astype(self.dtype)
    if keep_indices is not None:
      return layers.constrain(tokens, 'batch', None, 'embed')
    tokens = einops.rearrange(tokens, 'b (t s) d -> b t s d', t=t)
    return layers.constrain(tokens, 'batch', None, None, 'embed')

  def encode_tokens(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
    """Runs the transformer on `[batch, t, s, width]` (divided) or `[batch, n, width]` tokens;
    with `pool='cls'` the output has the class token first, `[batch, 1 + n, width]`."""
    if self.attention == 'joint' and tokens.ndim == 4:
      tokens = einops.rearrange(tokens, 'b t s d -> b (t s) d')
    if self.pool == 'cls':
      cls = jnp.broadcast_to(self.cls.astype(tokens.dtype), (tokens.shape[0], 1, self.width))
      tokens = jnp.concatenate([cls, tokens], axis=1)
    if self.norm_pre:
      tokens = self.norm_pre_layer(tokens)
    out = self.encoder(tokens, train=train)
    return einops.rearrange(out, 'b t s d -> b (t s) d') if out.ndim == 4 else out

  def pool_tokens(self, tokens: jax.Array) -> jax.Array:
    """`encode_tokens`' output -> `[batch, width]`."""
    if self.pool == 'gap':
      return tokens.mean(axis=1)
    if self.pool == 'cls':
      return tokens[:, 0]
    query = jnp.broadcast_to(self.pool_query, (tokens.shape[0], 1, self.width))
    pooled = self.pool_attention(query, tokens)
    return (pooled + self.pool_mlp(self.pool_norm(pooled)))[:, 0]

  def __call__(self, video: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Returns (pooled `[batch, width]`, tubelet tokens `[batch, n, width]`)."""
    tokens = self.encode_tokens(self.embed(video), train=train)
    return self.pool_tokens(tokens), tokens[:, 1:] if self.pool == 'cls' else tokens
