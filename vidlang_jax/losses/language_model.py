"""Next-token loss with per-token weights (modality weights, masked conditions and padding)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

MODALITIES = ('text', 'video')  # index = the `modality` value in a batch


def weighted_next_token_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                             modality: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted mean cross-entropy over `[batch, length]` targets, and per-modality metrics.

  Returns (loss, metrics): `<modality>_loss` is the unweighted mean NLL over that modality's
  trained tokens (weight > 0), so runs with different weights stay comparable; `accuracy` is
  the weighted top-1 accuracy.
  """
  nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  weights = weights.astype(jnp.float32)
  loss = jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1e-8)
  # Top-1 as argmax (the first largest logit) without argmax: XLA:CPU's argmax over a large
  # vocabulary (a variadic reduce) took ~1 % of a world-model step, these reductions a quarter.
  best = jnp.max(logits, axis=-1, keepdims=True)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)
  earlier_best = jnp.any((logits == best) & (jnp.arange(logits.shape[-1]) < targets[..., None]),
                         axis=-1)
  correct = ((target_logit == best)[..., 0] & ~earlier_best).astype(jnp.float32)
  metrics = {'accuracy': jnp.sum(correct * weights) / jnp.maximum(jnp.sum(weights), 1e-8),
             'trained_tokens': jnp.sum(weights > 0)}
  for index, name in enumerate(MODALITIES):
    counted = ((modality == index) & (weights > 0)).astype(jnp.float32)
    metrics[f'{name}_loss'] = jnp.sum(nll * counted) / jnp.maximum(jnp.sum(counted), 1.0)
  return loss, metrics
