"""Top-1 accuracy of a classifier (`model.video_classifier`) on a held-out split."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from vidlang_jax import registry, sharding
from vidlang_jax.data import pipeline
from vidlang_jax.evaluators.retrieval import process_slice
from vidlang_jax.models.classifier import label_key


@registry.register('evaluator.classification')
class ClassificationEvaluator:
  """Reports `<label>_acc` for every head, and `<label>_acc_single_object` on the clips with
  one object (moving_shapes labels describe the first-named object, which the video alone
  cannot single out when there are several)."""

  def __init__(self, *, model, config: ml_collections.ConfigDict,
               eval_config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.config, self.eval_config, self.mesh = config, eval_config, mesh
    pipeline.tokenizer_path(config.data)
    pipeline.check_split(config.data, eval_config.split, 'evals.classification.split')
    self.batch_size = eval_config.get('batch_size', config.batch_size)
    self.labels = list(config.model.num_classes.keys())
    self.predict = jax.jit(
        lambda params, video: {k: v.argmax(-1) for k, v in
                               model.apply({'params': params}, video).items()},
        out_shardings=sharding.batch_sharding(mesh, 1))

  def run(self, params: Any, *, step: int, workdir: str) -> dict[str, float]:
    del step, workdir
    keys = tuple(label_key(x) for x in self.labels) + ('num_objects',)
    hits, single = {label: [] for label in self.labels}, []
    for batch in pipeline.eval_batches(self.config.data, self.eval_config.split,
                                       self.batch_size, keys=keys):
      mask = batch['mask']
      video = sharding.shard_batch(process_slice({'video': batch['video']}), self.mesh)['video']
      predicted = multihost_utils.process_allgather(self.predict(params, video), tiled=True)
      for label in self.labels:
        hits[label].append((predicted[label] == batch[label_key(label)])[mask])
      single.append(batch['num_objects'][mask] == 1)
    single = np.concatenate(single)
    results = {}
    for label in self.labels:
      correct = np.concatenate(hits[label])
      results[f'{label}_acc'] = float(correct.mean())
      results[f'{label}_acc_single_object'] = float(correct[single].mean())
    return results
