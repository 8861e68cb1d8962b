"""Model FLOPs of one training step, counted analytically per family (the MFU numerator that
maxtext and nanoGPT use), to set beside XLA's count of the compiled step.

Every matmul is 2·m·n·k FLOPs forward and twice that backward (6·N per token for a weight
applied to every token; 4·N for the patch embedding, whose input needs no gradient), plus
attention's two `[length, length]` products (4·L²·width forward, 12 with backward; halved
when causal, as maxtext counts the work a causal kernel needs). Elementwise work is left out.
XLA's count differs where the program does other work: a causal reference attention computes
the whole square, a blockwise kernel its diagonal tiles and the backward's recomputation, and
XLA counts a loop's body once (train.step_flops_per_device unrolls scanned layers; the ring's
tile loops it cannot).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from vidlang_jax import registry


def encoder_forward(tokens: int, width: int, mlp_dim: int, depth: int) -> float:
  """One example through a pre-LN transformer stack: qkv + out (4·w²), the MLP, attention."""
  return depth * (2 * tokens * (4 * width**2 + 2 * width * mlp_dim) + 4 * tokens**2 * width)


def video_tokens(video: ml_collections.ConfigDict) -> tuple[int, int]:
  """(tubelets per clip, values per tubelet)."""
  pt, ph, pw = video.tubelet
  return (video.num_frames // pt) * (video.image_size // ph) * (video.image_size // pw), (
      pt * ph * pw * 3)


@registry.register('flops.two_tower')
def two_tower(c: ml_collections.ConfigDict) -> float:
  v, t = c.model.video, c.model.text
  tokens, patch_dim = video_tokens(v)
  forward = (encoder_forward(tokens, v.width, v.mlp_dim, v.depth)
             + encoder_forward(t.max_len, t.width, t.mlp_dim, t.depth)
             + 2 * (v.width + t.width) * c.model.embed_dim)
  patch_embed = 2 * tokens * patch_dim * v.width
  logits = 2 * c.batch_size**2 * c.model.embed_dim  # every video against every caption
  return c.batch_size * (3 * forward + 2 * patch_embed) + 3 * logits


@registry.register('flops.masked_video')
def masked_video(c: ml_collections.ConfigDict) -> float:
  """The encoder sees only the visible tubelets (counted from the config's mask); the decoder
  sees all of them. The joint model's text tower is not counted."""
  from vidlang_jax.models import masked_video as model_lib  # the mask's visible count
  v, d = c.model.video, c.model.decoder
  tokens, patch_dim = video_tokens(v)
  video = jax.ShapeDtypeStruct((1, v.num_frames, v.image_size, v.image_size, 3), jnp.float32)
  mask = jax.eval_shape(
      lambda video: model_lib.mask_fn(c)(None, {'video': video}, jax.random.key(0)), video)
  visible = mask.keep_indices.shape[1]
  per_example = (4 * visible * patch_dim * v.width
                 + 3 * encoder_forward(visible, v.width, v.mlp_dim, v.depth)
                 + 6 * visible * v.width * d.width
                 + 3 * encoder_forward(tokens, d.width, d.mlp_dim, d.depth)
                 + 6 * tokens * d.width * patch_dim)
  return c.batch_size * per_example


@registry.register('flops.world_model')
def world_model(c: ml_collections.ConfigDict, causal_half: bool = True) -> float:
  """Grouped-query attention (queries and output on all heads, keys and values on the kv
  heads), SwiGLU, the LM head. `causal_half=False` counts the whole causal square, as the
  reference attention computes it."""
  m, length = c.model, c.data.sequence_length
  head_dim = m.width // m.num_heads
  kv_heads = m.num_kv_heads or m.num_heads
  per_token = m.depth * (2 * m.width * head_dim * (2 * m.num_heads + 2 * kv_heads)
                         + 6 * m.width * m.mlp_dim) + 2 * m.width * m.vocab_size
  attention = m.depth * 4 * length**2 * m.num_heads * head_dim / (2 if causal_half else 1)
  return c.batch_size * 3 * (length * per_token + attention)


def model_flops(config: ml_collections.ConfigDict) -> float | None:
  """Analytic FLOPs of one global training step of `config`'s family, or None for a family
  without a count."""
  if f'flops.{config.model.name}' not in registry.names('flops'):
    return None
  count: Callable[[ml_collections.ConfigDict], float] = registry.lookup(config.model.name,
                                                                        kind='flops')
  return float(count(config))
