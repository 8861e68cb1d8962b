"""Two-tower video-text model (CLIP / SigLIP style) and its contrastive objective."""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vidlang_jax import registry
from vidlang_jax.models import Objective, layers
from vidlang_jax.models.text_transformer import TextTransformer
from vidlang_jax.models.video_vit import VideoViT


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x / jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-12)


def setup_text_and_head(module: nn.Module) -> None:
  """Called from a `setup`: the text tower, both projections, temperature and bias, under the
  names every video-text model shares (so their checkpoints load into one another)."""
  module.text_tower = TextTransformer(**module.text, name='text')
  proj = lambda name: nn.Dense(
      module.embed_dim, use_bias=getattr(module, 'proj_bias', False), name=name,
      kernel_init=layers.partitioned(nn.initializers.lecun_normal(), 'embed', None),
      bias_init=layers.partitioned(nn.initializers.zeros, None))
  module.video_proj, module.text_proj = proj('video_proj'), proj('text_proj')
  module.logit_scale = module.param('logit_scale', nn.initializers.constant(
      math.log(module.temperature_init)), ())
  if module.bias_init is not None:
    module.logit_bias = module.param('logit_bias', nn.initializers.constant(module.bias_init), ())


@registry.register('model.two_tower')
class TwoTower(nn.Module):
  """`video` tower (VideoViT) + `text` tower, projected to a shared `embed_dim` and normalised.

  `temperature_init` and `bias_init` follow SigLIP (t' = log 10, b = -10) by default; CLIP uses
  temperature_init = 1 / 0.07 and no bias. `proj_bias` gives the projections biases (SigLIP's
  text head has one).
  """

  video: dict[str, Any]
  text: dict[str, Any]
  embed_dim: int = 512
  temperature_init: float = 10.0
  bias_init: float | None = -10.0
  proj_bias: bool = False

  def setup(self):
    self.video_tower = VideoViT(**self.video, name='video')
    setup_text_and_head(self)

  def encode_video(self, video: jax.Array, *, train: bool = False) -> jax.Array:
    """`[batch, time, height, width, 3]` -> normalised `[batch, embed_dim]`."""
    pooled, _ = self.video_tower(video, train=train)
    return _l2_normalize(self.video_proj(pooled).astype(jnp.float32))

  def video_features(self, video: jax.Array) -> jax.Array:
    """The video tower's pooled output `[batch, width]`, before projection (linear probes)."""
    return self.video_tower(video)[0]

  def video_patch_embeddings(self, video: jax.Array) -> jax.Array:
    """Every tubelet token projected into the joint space, `[batch, tokens, embed_dim]`.

    With `gap` pooling the video embedding is their mean (before normalisation), so their
    cosine similarity to a caption says which patches the caption explains (text-guided
    masking, as MaskCLIP reads CLIP's patch tokens).
    """
    _, tokens = self.video_tower(video)
    return self.video_proj(tokens).astype(jnp.float32)

  def encode_text(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
    """`[batch, length]` -> normalised `[batch, embed_dim]`."""
    pooled, _ = self.text_tower(tokens, train=train)
    return _l2_normalize(self.text_proj(pooled).astype(jnp.float32))

  def __call__(self, video: jax.Array, tokens: jax.Array, *, train: bool = False):
    """Returns (video_emb, text_emb, logit_scale, logit_bias or None)."""
    bias = self.logit_bias if self.bias_init is not None else None
    return (self.encode_video(video, train=train), self.encode_text(tokens, train=train),
            self.logit_scale, bias)


def _check_same(config: ml_collections.ConfigDict, *pairs: tuple[str, str]) -> None:
  """Data and model keys that must agree (e.g. tokenizer vocabulary and embedding table)."""
  get = lambda dotted: functools.reduce(lambda node, key: node[key], dotted.split('.'), config)
  for a, b in pairs:
    if get(a) != get(b):
      raise ValueError(f'{a}={get(a)} but {b}={get(b)}: set both to the same value.')


@registry.register('objective.contrastive')
def contrastive_objective(model: nn.Module, config: ml_collections.ConfigDict) -> Objective:
  """Video-text contrastive training; `config.loss.kind` is 'sigmoid' (SigLIP) or 'softmax'
  (CLIP)."""
  if config.loss.kind == 'sigmoid' and config.model.bias_init is None:
    raise ValueError("loss.kind='sigmoid' needs a learnable bias: set model.bias_init (SigLIP: "
                     "-10), or pick the loss with the config argument, e.g. two_tower.py:tiny,"
                     "loss=sigmoid.")
  _check_same(config, ('data.vocab_size', 'model.text.vocab_size'),
              ('data.max_text_len', 'model.text.max_len'),
              ('data.image_size', 'model.video.image_size'))
  pairwise = registry.lookup(config.loss.kind, kind='loss')

  def init(rng, batch):
    one = lambda x: jnp.zeros((1,) + tuple(x.shape[1:]), x.dtype)
    return model.init(rng, one(batch['video']), one(batch['text']))['params']

  def loss(params, batch, rng, train=True):
    video_emb, text_emb, scale, bias = model.apply(
        {'params': params}, batch['video'], batch['text'], train=train, rngs={'dropout': rng})
    return pairwise(video_emb, text_emb, scale, bias)

  return Objective(init=init, loss=loss)
