"""Video tokenizer for the world model: a small convolutional autoencoder per frame with finite
scalar quantisation (FSQ; Mentzer et al., 2023), so every frame becomes a grid of discrete
tokens. FSQ needs no codebook, commitment loss or EMA updates, and uses its codes evenly, which
VQ-VAEs at this size struggle with.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vidlang_jax import registry
from vidlang_jax.models import Objective
from vidlang_jax.pixels import pixels_01, psnr_01


def _round_ste(x: jax.Array) -> jax.Array:
  """Round forward, identity backward (straight-through)."""
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


class FSQ:
  """Finite scalar quantiser over `levels` (e.g. (8, 5, 5, 5): a 1,000-code vocabulary)."""

  def __init__(self, levels: Sequence[int]):
    self.levels = jnp.asarray(levels, jnp.int32)
    self.num_codes = math.prod(levels)
    self.basis = jnp.asarray([math.prod(levels[:i]) for i in range(len(levels))], jnp.int32)

  def quantize(self, z: jax.Array) -> jax.Array:
    """`[..., len(levels)]` -> the nearest grid point, scaled to [-1, 1] (straight-through)."""
    levels = self.levels.astype(jnp.float32)
    half = (levels - 1) * (1 + 1e-3) / 2
    offset = jnp.where(self.levels % 2 == 0, 0.5, 0.0)
    shift = jnp.arctanh(offset / half)
    bounded = jnp.tanh(z + shift) * half - offset
    return _round_ste(bounded) / (self.levels // 2).astype(jnp.float32)

  def codes_to_indices(self, codes: jax.Array) -> jax.Array:
    """Quantised `[..., len(levels)]` -> token ids `[...]` in [0, num_codes)."""
    half_width = self.levels // 2
    digits = jnp.round(codes * half_width).astype(jnp.int32) + half_width
    return jnp.sum(digits * self.basis, axis=-1)

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    half_width = self.levels // 2
    digits = (indices[..., None] // self.basis) % self.levels
    return (digits - half_width).astype(jnp.float32) / half_width.astype(jnp.float32)


@registry.register('model.video_tokenizer')
class VideoTokenizer(nn.Module):
  """`[batch, time, height, width, 3]` frames <-> `[batch, time, height / f, width / f]` token
  ids, with f = 2 ** len(channels); every frame is coded on its own."""

  channels: tuple[int, ...] = (64, 128)
  levels: tuple[int, ...] = (8, 5, 5, 5)
  dtype: Any = jnp.float32

  def setup(self):
    self.fsq = FSQ(self.levels)
    self.down = [nn.Conv(c, (4, 4), strides=(2, 2), padding='SAME', dtype=self.dtype,
                         name=f'down_{i}') for i, c in enumerate(self.channels)]
    self.down_mix = nn.Conv(self.channels[-1], (3, 3), dtype=self.dtype, name='down_mix')
    self.to_code = nn.Conv(len(self.levels), (1, 1), dtype=self.dtype, name='to_code')
    self.from_code = nn.Conv(self.channels[-1], (3, 3), dtype=self.dtype, name='from_code')
    self.up = [nn.ConvTranspose(c, (4, 4), strides=(2, 2), padding='SAME', dtype=self.dtype,
                                name=f'up_{i}')
               for i, c in enumerate(reversed(self.channels))]
    self.to_pixels = nn.Conv(3, (3, 3), dtype=self.dtype, name='to_pixels')

  def encode(self, video: jax.Array) -> jax.Array:
    """Frames -> quantised codes `[batch, time, h, w, len(levels)]`."""
    batch = video.shape[0]
    x = einops.rearrange(video, 'b t h w c -> (b t) h w c').astype(self.dtype)
    for conv in self.down:
      x = nn.gelu(conv(x))
    x = self.to_code(nn.gelu(self.down_mix(x)))
    return einops.rearrange(self.fsq.quantize(x.astype(jnp.float32)), '(b t) h w d -> b t h w d',
                            b=batch)

  def decode(self, codes: jax.Array) -> jax.Array:
    """Codes -> frames in the input's normalisation `[batch, time, height, width, 3]`."""
    batch = codes.shape[0]
    x = nn.gelu(self.from_code(einops.rearrange(codes, 'b t h w d -> (b t) h w d')))
    for conv in self.up:
      x = nn.gelu(conv(x))
    return einops.rearrange(self.to_pixels(x).astype(jnp.float32), '(b t) h w c -> b t h w c',
                            b=batch)

  def tokenize(self, video: jax.Array) -> jax.Array:
    return self.fsq.codes_to_indices(self.encode(video))

  def detokenize(self, tokens: jax.Array) -> jax.Array:
    return self.decode(self.fsq.indices_to_codes(tokens))

  def __call__(self, video: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (reconstruction, token ids)."""
    codes = self.encode(video)
    return self.decode(codes), self.fsq.codes_to_indices(codes)


def reconstruction_loss(recon: jax.Array, video: jax.Array,
                        foreground_weight: float = 0.0) -> jax.Array:
  """Weighted mean squared error over `[batch, time, height, width, 3]` (see the objective)."""
  err = jnp.mean(jnp.square(recon - video), axis=-1)  # [batch, time, height, width]
  pixels = pixels_01(video)
  distance = jnp.max(jnp.abs(pixels - jnp.mean(pixels, axis=(2, 3), keepdims=True)), axis=-1)
  weight = 1.0 + foreground_weight * jnp.clip(distance, 0.0, 1.0)
  return jnp.sum(weight * err) / jnp.sum(weight)


@registry.register('objective.video_tokenizer')
def video_tokenizer_objective(model: nn.Module, config: ml_collections.ConfigDict) -> Objective:
  """Pixel MSE of the reconstruction, optionally foreground-weighted; code usage as a metric.

  `loss.foreground_weight` (default 0): each pixel's squared error weighs
  1 + foreground_weight x its distance from its frame's mean colour (in [0, 1]). Small objects
  on a plain background are a few percent of the pixels, so plain MSE is content to code them
  as blurred blobs of roughly the right colour; the weight makes their pixels count.
  """
  foreground_weight = config.get('loss', {}).get('foreground_weight', 0.0)

  def init(rng, batch):
    return model.init(rng, jnp.zeros((1,) + tuple(batch['video'].shape[1:])))['params']

  def loss(params, batch, rng, train=True):
    del rng, train
    video = batch['video']
    recon, tokens = model.apply({'params': params}, video)
    mse = reconstruction_loss(recon, video, foreground_weight)
    counts = jnp.zeros(math.prod(model.levels)).at[tokens.reshape(-1)].add(1.0)
    used = jnp.sum(counts > 0) / counts.shape[0]
    return mse, {'psnr': jnp.mean(psnr_01(recon, video)), 'code_usage': used}

  return Objective(init=init, loss=loss)
