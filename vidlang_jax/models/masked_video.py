"""Masked video modeling (VideoMAE) and its joint form with video-text contrastive learning
(Text-Guided Video Masked Autoencoder, TGM).

The encoder is the same `VideoViT` as the two-tower model, under the same name (`video`), and
the optional text tower and projections keep the two-tower names too, so checkpoints load
into `model.two_tower` and back with the default `init_from` rules. The encoder only sees the
visible tokens (gathered before the patch embedding), so its compute shrinks with the mask
ratio; a light decoder puts mask tokens back and predicts every tubelet's pixels.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any, Callable

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vidlang_jax import masking, registry
from vidlang_jax.models import Objective, layers
from vidlang_jax.models.two_tower import TwoTower, _check_same, _l2_normalize, setup_text_and_head
from vidlang_jax.models.video_vit import VideoViT, _resize_embedding, patchify, sincos_table
from vidlang_jax.pixels import pixels_01

Grid = tuple[int, int, int]


def token_grid(video_shape: tuple[int, ...], tubelet: tuple[int, int, int]) -> Grid:
  """`(t, h, w)` tubelets of a `[batch, time, height, width, channels]` video."""
  _, time, height, width, _ = video_shape
  pt, ph, pw = tubelet
  return time // pt, height // ph, width // pw


def tubelet_targets(video: jax.Array, tubelet: tuple[int, int, int], normalize: bool = True,
                    var_eps: float = 1e-6) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Reconstruction targets `[batch, tokens, pt*ph*pw*3]` and each tubelet's per-channel
  mean and std `[batch, tokens, 1, 3]` (to map predictions back to pixels).

  With `normalize`, as in VideoMAE, each tubelet is normalised per channel by its own mean and
  std over its pixels (in [0, 1]), sqrt(var + var_eps), which makes the task about structure,
  not brightness. On near-flat tubelets a tiny `var_eps` blows codec noise up to unit variance;
  synthetic clips with flat backgrounds want a floor such as 1e-2.
  """
  patches = patchify(pixels_01(video.astype(jnp.float32)), tubelet)
  patches = einops.rearrange(patches, 'b t h w (p c) -> b (t h w) p c', c=video.shape[-1])
  if normalize:
    mean = patches.mean(axis=2, keepdims=True)
    std = jnp.sqrt(patches.var(axis=2, keepdims=True, ddof=1) + var_eps)
  else:
    mean, std = jnp.zeros_like(patches[:, :, :1]), jnp.ones_like(patches[:, :, :1])
  target = einops.rearrange((patches - mean) / std, 'b n p c -> b n (p c)')
  return target, mean, std


def prediction_pixels(pred: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  """Predicted targets `[batch, tokens, p*c]` -> pixels in [0, 1] `[batch, tokens, p, c]`
  (un-normalised with the true tubelet statistics, as VideoMAE visualises)."""
  pred = einops.rearrange(pred, 'b n (p c) -> b n p c', c=mean.shape[-1])
  return jnp.clip(pred * std + mean, 0.0, 1.0)


def unpatchify(tokens: jax.Array, grid: Grid, tubelet: tuple[int, int, int]) -> jax.Array:
  """Tubelets `[batch, t*h*w, pt*ph*pw, c]` -> `[batch, time, height, width, c]`."""
  t, h, w = grid
  pt, ph, pw = tubelet
  return einops.rearrange(tokens, 'b (t h w) (pt ph pw) c -> b (t pt) (h ph) (w pw) c',
                          t=t, h=h, w=w, pt=pt, ph=ph, pw=pw)


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean squared error over the masked tokens only (`mask` True = hidden from the encoder);
  visible tokens get exactly zero gradient."""
  per_token = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)  # [b, tokens]
  weights = mask.astype(jnp.float32)
  return jnp.sum(per_token * weights) / jnp.maximum(jnp.sum(weights), 1.0)


class MaeDecoder(nn.Module):
  """Visible tokens + a learned mask token at every hidden position -> per-tubelet pixels.

  `posemb='sincos'`, `act`, `norm_eps` and `final_norm_eps` are VideoMAE's decoder options
  (vidlang_jax/convert/hf_videomae.py).
  """

  grid: Grid
  patch_dim: int
  width: int = 384
  depth: int = 4
  num_heads: int = 6
  mlp_dim: int | None = None
  posemb: str = 'learned'
  act: str = 'gelu_tanh'
  norm_eps: float = 1e-6
  final_norm_eps: float | None = None
  scan: bool = False
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, visible: jax.Array, restore_indices: jax.Array, *,
               train: bool = False) -> jax.Array:
    """`[batch, visible, encoder width]` -> `[batch, t*h*w, patch_dim]`."""
    t, h, w = self.grid
    init = nn.initializers.normal(0.02)
    x = nn.Dense(self.width, dtype=self.dtype, name='embed',
                 kernel_init=layers.partitioned(nn.initializers.lecun_normal(), 'embed', 'mlp'),
                 bias_init=layers.partitioned(nn.initializers.zeros, 'mlp'))(visible)
    mask_token = self.param('mask_token', layers.partitioned(init, 'mlp'), (self.width,))
    x = masking.restore_tokens(x, mask_token, restore_indices)  # [batch, N, width]
    num_time = x.shape[1] // (h * w)
    if self.posemb == 'sincos':
      pos = jnp.asarray(sincos_table(num_time * h * w, self.width))
    else:
      pos_time = self.param('pos_time', layers.partitioned(init, None, 'mlp'), (t, self.width))
      pos_space = self.param('pos_space', layers.partitioned(init, None, 'mlp'),
                             (h * w, self.width))
      pos = _resize_embedding(pos_time, num_time)[:, None] + pos_space[None]
    x = x + pos.reshape(num_time * h * w, self.width).astype(self.dtype)
    x = layers.Encoder(self.depth, self.num_heads, self.mlp_dim or 4 * self.width,
                       scan=self.scan, remat=self.remat, act=self.act, norm_eps=self.norm_eps,
                       final_norm_eps=self.final_norm_eps, dtype=self.dtype, name='encoder')(
                           x, train=train)
    return nn.Dense(self.patch_dim, dtype=self.dtype, name='pred',
                    kernel_init=layers.partitioned(nn.initializers.lecun_normal(), 'mlp', None),
                    bias_init=nn.initializers.zeros)(x)


@registry.register('model.masked_video')
class MaskedVideoModel(nn.Module):
  """VideoMAE encoder (`video`) + decoder, with an optional text tower for the joint objective.

  `text=None` gives plain masked video modeling; with a text tower the pooled visible tokens
  are also trained against captions (embed_dim, temperature and bias as in `TwoTower`).
  """

  video: dict[str, Any]
  decoder: dict[str, Any]
  text: dict[str, Any] | None = None
  embed_dim: int = 512
  temperature_init: float = 10.0
  bias_init: float | None = -10.0

  def setup(self):
    if self.video.get('attention', 'joint') != 'joint':
      raise ValueError("model.video.attention must be 'joint' for masked video modeling: the "
                       'encoder sees an irregular set of visible tokens.')
    if self.video.get('pool') == 'cls':
      raise ValueError("model.video.pool='cls' is not supported for masked video modeling: the "
                       "decoder reads the tubelet tokens; use 'gap' or 'map'.")
    self.video_tower = VideoViT(**self.video, name='video')
    tubelet = tuple(self.video['tubelet'])
    grid = token_grid((1, self.video['num_frames'], self.video['image_size'],
                       self.video['image_size'], 3), tubelet)
    self.mae_decoder = MaeDecoder(grid, math.prod(tubelet) * 3, **self.decoder, name='decoder')
    if self.text is not None:
      setup_text_and_head(self)

  def encode_visible(self, video: jax.Array, keep_indices: jax.Array, *,
                     train: bool = False) -> jax.Array:
    """`[batch, time, height, width, 3]` -> encoded visible tokens `[batch, visible, width]`."""
    tokens = self.video_tower.embed(video, keep_indices)
    return self.video_tower.encode_tokens(tokens, train=train)

  def __call__(self, video: jax.Array, mask: masking.Mask, text: jax.Array | None = None, *,
               train: bool = False) -> dict[str, jax.Array]:
    """Returns `pred` `[batch, tokens, patch_dim]` and, given `text`, the contrastive inputs
    `video_emb` (from the pooled visible tokens), `text_emb`, `logit_scale`, `logit_bias`."""
    visible = self.encode_visible(video, mask.keep_indices, train=train)
    out = {'pred': self.mae_decoder(visible, mask.restore_indices, train=train)}
    if text is not None:
      if self.text is None:
        raise ValueError('text given to a masked video model without a text tower (model.text).')
      pooled = self.video_tower.pool_tokens(visible)
      out['video_emb'] = _l2_normalize(self.video_proj(pooled).astype(jnp.float32))
      out['text_emb'] = self.encode_text(text, train=train)
      out['logit_scale'] = self.logit_scale
      out['logit_bias'] = self.logit_bias if self.bias_init is not None else None
    return out

  def video_features(self, video: jax.Array) -> jax.Array:
    """Pooled encoder output on the whole (unmasked) video `[batch, width]` (linear probes)."""
    return self.video_tower(video)[0]

  def encode_video(self, video: jax.Array, *, train: bool = False) -> jax.Array:
    """Normalised `[batch, embed_dim]` from the whole video (retrieval; needs a text tower)."""
    pooled, _ = self.video_tower(video, train=train)
    return _l2_normalize(self.video_proj(pooled).astype(jnp.float32))

  def encode_text(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
    pooled, _ = self.text_tower(tokens, train=train)
    return _l2_normalize(self.text_proj(pooled).astype(jnp.float32))


def build_guide(config: ml_collections.ConfigDict) -> TwoTower | None:
  """The frozen two-tower model whose patch-caption similarity drives text-guided masking
  (`masking.guide_model`), or None."""
  guide = config.masking.get('guide_model')
  if guide is None:
    return None
  return TwoTower(**{k: v for k, v in guide.to_dict().items() if k != 'name'})


MaskFn = Callable[[Any, dict[str, jax.Array], jax.Array], masking.Mask]
# What a registered mask may ask for by parameter name, besides the guide's features.
_MASK_INPUTS = ('rng', 'batch', 'grid', 'ratio', 'random_fraction')


def mask_fn(config: ml_collections.ConfigDict) -> MaskFn:
  """`(params, batch, rng) -> Mask` for `config.masking`: the registered `mask.<kind>` gets
  what its signature names among `_MASK_INPUTS`, and `patch_features` / `text_embedding`
  from the frozen guide (`params['guide']`) when it names them (text-guided masking)."""
  spec = config.masking
  tubelet = tuple(config.model.video.tubelet)
  make = registry.lookup(spec.kind, kind='mask')
  wants = set(inspect.signature(make).parameters)
  guide = build_guide(config)
  if 'patch_features' in wants and guide is None:
    raise ValueError(f'masking.kind={spec.kind!r} ranks patches by a guide model: set '
                     'masking.guide_model (the config argument `masking=text_guided` does).')

  def make_mask(params, batch, rng):
    video = batch['video']
    offered = dict(rng=rng, batch=video.shape[0], grid=token_grid(video.shape, tubelet),
                   ratio=spec.ratio, random_fraction=spec.get('random_fraction', 0.0))
    kwargs = {k: v for k, v in offered.items() if k in wants}
    if 'patch_features' in wants:
      variables = {'params': params['guide']}
      kwargs['patch_features'] = guide.apply(variables, video,
                                             method=guide.video_patch_embeddings)
      kwargs['text_embedding'] = guide.apply(variables, batch['text'], method=guide.encode_text)
    return make(**kwargs)

  return make_mask


def split_guide(params: dict[str, Any]) -> tuple[dict[str, Any], Any]:
  """(the model's own params, the frozen guide's params or None)."""
  own = {k: v for k, v in params.items() if k != 'guide'}
  return own, params.get('guide')


@registry.register('objective.masked_video')
def masked_video_objective(model: nn.Module, config: ml_collections.ConfigDict) -> Objective:
  """MAE reconstruction of the masked tubelets, plus (when `loss.contrastive_weight > 0`) the
  video-text contrastive loss on the pooled visible tokens, in one forward pass."""
  kinds = registry.names('mask')
  if f'mask.{config.masking.kind}' not in kinds:
    raise ValueError(f'masking.kind={config.masking.kind!r}; expected one of {kinds}.')
  joint = config.loss.contrastive_weight > 0
  if joint:
    if config.model.text is None:
      raise ValueError('loss.contrastive_weight > 0 needs a text tower: set model.text (the '
                       'config argument `joint` does).')
    if config.loss.kind == 'sigmoid' and config.model.bias_init is None:
      raise ValueError("loss.kind='sigmoid' needs model.bias_init (SigLIP: -10).")
    _check_same(config, ('data.vocab_size', 'model.text.vocab_size'),
                ('data.max_text_len', 'model.text.max_len'))
    pairwise = registry.lookup(config.loss.kind, kind='loss')
  _check_same(config, ('data.image_size', 'model.video.image_size'))
  guide = build_guide(config)
  if guide is not None:
    if not config.init_from.path:
      raise ValueError("masking.kind='text_guided' needs a trained two-tower run as its guide: "
                       'pass guide=PATH in the config argument (it sets init_from.path).')
    if not re.fullmatch(config.optimizer.freeze or '$^', 'guide/video/patch_embed/kernel'):
      raise ValueError("masking.kind='text_guided' keeps a frozen guide model under 'guide/': "
                       "set optimizer.freeze to a regex matching 'guide/.*' (the config "
                       'argument `masking=text_guided` does).')
  make_mask = mask_fn(config)
  tubelet = tuple(config.model.video.tubelet)

  def init(rng, batch):
    one = lambda x: jnp.zeros((1,) + tuple(x.shape[1:]), x.dtype)
    video = one(batch['video'])
    # Param shapes do not depend on which tokens are visible.
    mask = masking.random_mask(rng, 1, token_grid(video.shape, tubelet), 0.5)
    text = one(batch['text']) if joint else None
    params = model.init(rng, video, mask, text)['params']
    if guide is not None:
      params = dict(params, guide=guide.init(rng, video, one(batch['text']))['params'])
    return params

  def loss(params, batch, rng, train=True):
    mask_rng, dropout_rng = jax.random.split(rng)
    own, _ = split_guide(params)
    mask = make_mask(params, batch, mask_rng)
    out = model.apply({'params': own}, batch['video'], mask, batch['text'] if joint else None,
                      train=train, rngs={'dropout': dropout_rng})
    target, _, _ = tubelet_targets(batch['video'], tubelet, config.loss.normalize_target,
                                   config.loss.target_var_eps)
    recon = masked_mse(out['pred'], target, mask.mask)
    total = config.loss.recon_weight * recon
    metrics = {'recon_loss': recon}
    if joint:
      contrastive, contrastive_metrics = pairwise(out['video_emb'], out['text_emb'],
                                                  out['logit_scale'], out['logit_bias'])
      total = total + config.loss.contrastive_weight * contrastive
      metrics.update(contrastive_metrics, contrastive_loss=contrastive)
    return total, metrics

  return Objective(init=init, loss=loss)
