"""Top-1 accuracy of a classifier (`model.video_classifier`) on a held-out split."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from vidlang_jax import registry, sharding
from vidlang_jax.evaluators import common


@registry.register('evaluator.classification')
class ClassificationEvaluator(common.Evaluator):
  """Reports `<label>_acc` for every head and `<label>_acc_per_class` (accuracy per class
  name); with `subset` ({field: value}) also `<label>_acc_<subset_name>` on the matching
  examples (moving_shapes: `num_objects=1`, named `single_object`, since its labels describe
  the first-named object, which the video alone cannot single out when there are several)."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.classes = self.label_classes(list(self.config.model.num_classes.keys()))
    model = self.model
    self.predict = jax.jit(
        lambda params, batch: {k: v.argmax(-1) for k, v in
                               model.apply({'params': params}, batch['video']).items()},
        out_shardings=sharding.batch_sharding(self.mesh, 1))

  def run(self, params: Any, *, step: int, workdir: str) -> dict[str, Any]:
    del step, workdir
    keys = tuple(f'{label}_label' for label in self.classes) + self.subset_fields
    predicted, truth = {label: [] for label in self.classes}, {k: [] for k in keys}
    for out, batch, mask in self.outputs(lambda p, b, _: self.predict(p, b), params,
                                         self.eval_config.split, keys=keys):
      for label in self.classes:
        predicted[label].append(out[label][mask])
      for k in keys:
        truth[k].append(batch[k][mask])
    truth = {k: np.concatenate(v) for k, v in truth.items()}
    chosen = self.subset(truth)
    results = {}
    for label, names in self.classes.items():
      labels = truth[f'{label}_label']
      correct = np.concatenate(predicted[label]) == labels
      results[f'{label}_acc'] = float(correct.mean())
      results[f'{label}_acc_per_class'] = {
          name: float(correct[labels == i].mean()) for i, name in enumerate(names)
          if np.any(labels == i)}
      if self.subset_fields:
        subset_name = self.eval_config.get('subset_name', 'subset')
        results[f'{label}_acc_{subset_name}'] = float(correct[chosen].mean())
    return results
