"""Video classification: the video tower (`video`, as in the two-tower and masked video models,
so their checkpoints load by the default rules) + a linear head per label, for fine-tuning."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vidlang_jax import registry
from vidlang_jax.models import Objective, layers
from vidlang_jax.models.two_tower import _check_same
from vidlang_jax.models.video_vit import VideoViT


@registry.register('model.video_classifier')
class VideoClassifier(nn.Module):
  """`num_classes` maps a label name (`shape` reads the data's `shape_label`) to its classes.

  As in VideoMAE fine-tuning, the pooled tokens go through a LayerNorm before the heads, and
  the heads start at zero so the first steps do not wreck the pretrained encoder.
  """

  video: dict[str, Any]
  num_classes: dict[str, int]
  head_dropout: float = 0.0

  def setup(self):
    self.video_tower = VideoViT(**self.video, name='video')
    self.head_norm = layers.layer_norm('head_norm')
    self.heads = {label: nn.Dense(n, name=f'head_{label}', kernel_init=layers.partitioned(
        nn.initializers.zeros, 'embed', None)) for label, n in self.num_classes.items()}
    self.dropout = nn.Dropout(self.head_dropout)

  def video_features(self, video: jax.Array) -> jax.Array:
    return self.video_tower(video)[0]

  def __call__(self, video: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    """`[batch, time, height, width, 3]` -> {label: logits `[batch, classes]`}."""
    pooled, _ = self.video_tower(video, train=train)
    pooled = self.dropout(self.head_norm(pooled), deterministic=not train)
    return {label: head(pooled).astype(jnp.float32) for label, head in self.heads.items()}


def label_key(label: str) -> str:
  return f'{label}_label'


@registry.register('objective.classification')
def classification_objective(model: nn.Module, config: ml_collections.ConfigDict) -> Objective:
  """Softmax cross-entropy, averaged over the labels; accuracy per label as metrics."""
  _check_same(config, ('data.image_size', 'model.video.image_size'))
  labels = list(config.model.num_classes.keys())
  missing = [label_key(x) for x in labels if label_key(x) not in config.data.label_keys]
  if missing:
    raise ValueError(f'model.num_classes has labels {labels} but data.label_keys lacks '
                     f'{missing}: add them so the input pipeline keeps those fields.')
  smoothing = config.loss.get('label_smoothing', 0.0)

  def init(rng, batch):
    return model.init(rng, jnp.zeros((1,) + tuple(batch['video'].shape[1:])))['params']

  def loss(params, batch, rng, train=True):
    logits = model.apply({'params': params}, batch['video'], train=train,
                         rngs={'dropout': rng})
    total, metrics = 0.0, {}
    for label, out in logits.items():
      targets = optax.smooth_labels(jax.nn.one_hot(batch[label_key(label)], out.shape[-1]),
                                    smoothing)
      ce = jnp.mean(optax.softmax_cross_entropy(out, targets))
      total += ce / len(logits)
      metrics[f'{label}_loss'] = ce
      metrics[f'{label}_acc'] = jnp.mean(jnp.argmax(out, -1) == batch[label_key(label)])
    return total, metrics

  return Objective(init=init, loss=loss)
