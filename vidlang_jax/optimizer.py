"""optax optimizer from config: AdamW, warmup + cosine, clipping, regex weight decay, freezing,
layer-wise learning-rate decay."""

from __future__ import annotations

import re
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from vidlang_jax.sharding import tree_paths

# A path component naming a block of a `layers.stack_blocks` stack: unrolled, or scanned.
_BLOCK = re.compile(r'block_(\d+)|blocks')
# What a tower holds before its blocks (layer id 0); `norm_pre` is CLIP's `ln_pre`.
EMBEDDINGS = (r'(.*/)?(patch_embed|embed|token_embedding|pos_[^/]*|cls[^/]*|mask_token|norm_pre)'
              r'(/.*)?')


def regex_mask(pattern: str):
  """A mask function: True for params whose path ('video/encoder/.../kernel') fully matches."""
  rule = re.compile(pattern)
  return lambda params: jax.tree.map(lambda path: bool(rule.fullmatch(path)), tree_paths(params))


def _block(path: str) -> tuple[str, int | None] | None:
  """(tower, block index; None if scanned) of a param inside a block stack, else None."""
  parts = path.split('/')
  for k, part in enumerate(parts):
    if match := _BLOCK.fullmatch(part):
      owner = parts[:k - 1] if k and parts[k - 1] == 'encoder' else parts[:k]
      return '/'.join(owner), None if match.group(1) is None else int(match.group(1))
  return None


def layer_scales(params: Any, decay: float, towers: str = '.*',
                 embeddings: str = EMBEDDINGS) -> Any:
  """Per-leaf update scales `decay ** (L + 1 - layer_id)`, as in BEiT / VideoMAE fine-tuning.

  Only paths and shapes are read, so `params` may be abstract, boxed or the updates. A tower
  owns a block stack: it is the path before the `block_<i>` / `blocks` component, less the
  `encoder` holding them ('video' for 'video/encoder/block_3/...'; '' for the world model's
  top-level 'blocks'). In each tower whose name fully matches `towers`, with L blocks: block i
  has id i + 1; the tower's other params that fully match `embeddings` id 0; the rest (final
  norm, pooling) id L + 1, like everything outside those towers (projections, heads,
  temperature), which thus trains at the full rate. A scanned stack gets an `[L, 1, ...]`
  array (block i at index i of the leading `layers` axis), every other leaf a float.
  """
  paths, treedef = jax.tree.flatten(tree_paths(params))
  shapes = [tuple(x.shape) for x in jax.tree.leaves(params)]
  where = [_block(path) for path in paths]
  depths: dict[str, int] = {}
  for found, shape in zip(where, shapes):
    if found:
      tower, i = found
      depths[tower] = max(depths.get(tower, 0), shape[0] if i is None else i + 1)
  depths = {tower: depth for tower, depth in depths.items() if re.fullmatch(towers, tower)}
  if not depths:
    raise ValueError(f'optimizer.layer_decay_towers={towers!r} matches no tower with blocks '
                     f'(block_<i> or blocks); towers: {sorted({f[0] for f in where if f})}.')

  def scale(path, shape, found):
    if found and found[0] in depths:
      depth, i = depths[found[0]], found[1]
      if i is not None:
        return decay ** (depth - i)
      if shape[0] != depth:
        raise ValueError(f'{path}: a scanned stack of {shape[0]} blocks in a tower of {depth}.')
      return (decay ** (depth - np.arange(depth))).reshape((depth,) + (1,) * (len(shape) - 1))
    inside = [t for t in depths if t == '' or path.startswith(t + '/')]
    if not found and inside and re.fullmatch(embeddings, path):
      return decay ** (depths[max(inside, key=len)] + 1)
    return 1.0

  return jax.tree.unflatten(treedef, list(map(scale, paths, shapes, where)))


def scale_by_layer_decay(decay: float, towers: str,
                         embeddings: str) -> optax.GradientTransformation:
  """Multiplies each update by its `layer_scales` entry. After AdamW this scales the decoupled
  weight decay too, like torch AdamW with `lr * scale` per param group. The scales come from
  the (static) paths and shapes at trace time, since the trainer builds the optimizer before
  any params exist; `init` only checks them, so a bad tower regex fails before training."""

  def init(params):
    layer_scales(params, decay, towers, embeddings)
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    scale = lambda u, s: (u * np.asarray(s, np.float32)).astype(u.dtype)
    return jax.tree.map(scale, updates, layer_scales(updates, decay, towers, embeddings)), state

  return optax.GradientTransformation(init, update)


def make_optimizer(config: ml_collections.ConfigDict,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, learning-rate schedule).

  `config.weight_decay_rules` is a regex of the params that decay (default: kernels and
  embeddings, never biases, norms, position embeddings or the temperature).
  `config.freeze` is a regex of params that are never updated (empty: none).
  `config.layer_decay` in (0, 1] (1.0: off; VideoMAE fine-tunes ViT-B with 0.75) multiplies
  the update (weight decay included) of layer id i by `layer_decay ** (L + 1 - i)` in each
  tower of L blocks that the regex `config.layer_decay_towers` fully matches ('.*': all), the
  params matching `config.layer_decay_embeddings` being id 0; see `layer_scales`.
  """
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate,
      warmup_steps=min(config.warmup_steps, max(total_steps - 1, 1)),
      decay_steps=max(total_steps, 2), end_value=config.learning_rate * config.end_lr_fraction)
  parts: list[Any] = []
  if config.grad_clip:
    parts.append(optax.clip_by_global_norm(config.grad_clip))
  parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay,
                           mask=regex_mask(config.weight_decay_rules)))
  decay = config.get('layer_decay', 1.0)
  if not isinstance(decay, (int, float)) or not 0 < decay <= 1:
    raise ValueError(f'optimizer.layer_decay must be in (0, 1] (1.0: off), got {decay!r}.')
  towers = config.get('layer_decay_towers', '.*')
  embeddings = config.get('layer_decay_embeddings', EMBEDDINGS)
  for key, pattern in (('layer_decay_towers', towers), ('layer_decay_embeddings', embeddings)):
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      raise ValueError(f'optimizer.{key}={pattern!r} is not a regex: {e}.') from None
  if decay < 1:
    parts.append(scale_by_layer_decay(decay, towers, embeddings))
  if config.freeze:
    parts.append(optax.masked(optax.set_to_zero(), regex_mask(config.freeze)))
  return optax.chain(*parts), schedule
