"""optax optimizer from config: AdamW, warmup + cosine, clipping, regex weight decay, freezing."""

from __future__ import annotations

import re
from typing import Any

import jax
import ml_collections
import optax

from vidlang_jax.sharding import tree_paths


def regex_mask(pattern: str):
  """A mask function: True for params whose path ('video/encoder/.../kernel') fully matches."""
  rule = re.compile(pattern)
  return lambda params: jax.tree.map(lambda path: bool(rule.fullmatch(path)), tree_paths(params))


def make_optimizer(config: ml_collections.ConfigDict,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, learning-rate schedule).

  `config.weight_decay_rules` is a regex of the params that decay (default: kernels and
  embeddings, never biases, norms, position embeddings or the temperature).
  `config.freeze` is a regex of params that are never updated (empty: none).
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
  if config.freeze:
    parts.append(optax.masked(optax.set_to_zero(), regex_mask(config.freeze)))
  return optax.chain(*parts), schedule
