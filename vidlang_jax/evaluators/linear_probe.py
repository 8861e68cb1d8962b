"""Linear probe on frozen video features: how linearly the encoder separates the dataset's labels.

Like big_vision's few-shot evaluator, the classifier is closed-form ridge regression onto
one-hot targets, so a probe costs one feature pass and no training loop. The L2 strength is
picked on a held-out fifth of the probe's training examples, then refit on all of them.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np

from vidlang_jax import inputs, registry, sharding
from vidlang_jax.evaluators import common

L2_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def _fit(x: np.ndarray, onehot: np.ndarray, l2: float) -> np.ndarray:
  """Ridge regression weights `[dim + 1, classes]` (last row: bias, not regularised)."""
  x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  reg = l2 * np.eye(x.shape[1])
  reg[-1, -1] = 0.0
  return np.linalg.solve(x.T @ x + reg, x.T @ onehot)


def _predict(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
  return np.argmax(np.concatenate([x, np.ones((len(x), 1))], axis=1) @ weights, axis=1)


def ridge_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                test_y: np.ndarray, num_classes: int,
                l2_grid: Sequence[float] = L2_GRID) -> tuple[float, float]:
  """Test accuracy of a ridge-regression classifier, and the L2 strength it chose.

  Features are standardised with the training statistics (float64 throughout).
  """
  train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
  onehot = np.eye(num_classes)[train_y]
  split = len(train_x) * 4 // 5
  val_acc = [np.mean(_predict(train_x[split:], _fit(train_x[:split], onehot[:split], l2))
                     == train_y[split:]) for l2 in l2_grid]
  l2 = l2_grid[int(np.argmax(val_acc))]
  weights = _fit(train_x, onehot, l2)
  return float(np.mean(_predict(test_x, weights) == test_y)), float(l2)


@registry.register('evaluator.linear_probe')
class LinearProbeEvaluator(common.Evaluator):
  """Probes `model.video_features` (the video tower's pooled output) for `labels`.

  eval_config: `train_split`, `train_examples` (the first that many), `test_split`, `labels`
  (names `x` of the dataset's `x_label` ClassLabel features, which give the class counts),
  `subset` ({field: value}: fit and score on the matching examples only, e.g. moving_shapes'
  `num_objects=1`, since its labels describe the first-named object, which the video alone
  cannot single out when there are several; the all-examples accuracy is reported beside it
  as `_acc_all_clips`), `random_init_baseline` (also probe the model at its initialisation,
  the same seed as training).
  """

  split_keys = ('train_split', 'test_split')

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.classes = self.label_classes(self.eval_config.labels)
    model, config = self.model, self.config
    self.features = jax.jit(
        lambda params, batch: model.apply({'params': params}, batch['video'],
                                          method=model.video_features),
        out_shardings=sharding.batch_sharding(self.mesh, 2))
    self.baseline_params, self.baseline = None, None
    if self.eval_config.get('random_init_baseline'):
      objective = registry.lookup(config.objective, kind='objective')(model, config)
      spec = inputs.lookup(config.data).batch_spec(config.data, self.batch_size, self.mesh)
      init_rng, _ = jax.random.split(jax.random.key(config.seed))  # as the trainer does
      self.baseline_params = jax.jit(lambda rng: nn.meta.unbox(objective.init(rng, spec)))(
          init_rng)

  def _extract(self, params: Any, split: str, max_examples: int | None):
    keys = tuple(f'{label}_label' for label in self.eval_config.labels) + self.subset_fields
    feats, fields = [], {k: [] for k in keys}
    for out, batch, mask in self.outputs(lambda p, b, _: self.features(p, b), params, split,
                                         keys=keys, max_examples=max_examples):
      feats.append(out[mask])
      for k in keys:
        fields[k].append(batch[k][mask])
    return np.concatenate(feats), {k: np.concatenate(v) for k, v in fields.items()}

  def _probe(self, params: Any, prefix: str) -> dict[str, float]:
    train_x, train = self._extract(params, self.eval_config.train_split,
                                   self.eval_config.train_examples)
    test_x, test = self._extract(params, self.eval_config.test_split, None)
    fit, score = self.subset(train), self.subset(test)
    results = {}
    for label, names in self.classes.items():
      key, num_classes = f'{label}_label', len(names)
      if self.subset_fields:
        acc_all, _ = ridge_probe(train_x, train[key], test_x, test[key], num_classes)
        results[f'{prefix}_{label}_acc_all_clips'] = acc_all
      acc, l2 = ridge_probe(train_x[fit], train[key][fit], test_x[score], test[key][score],
                            num_classes)
      results[f'{prefix}_{label}_acc'] = acc
      results[f'{prefix}_{label}_l2'] = l2
    results[f'{prefix}_num_test'] = int(score.sum())
    return results

  def run(self, params: Any, *, step: int, workdir: str) -> dict[str, float]:
    del step, workdir
    results = self._probe(params, 'probe')
    if self.baseline_params is not None:
      if self.baseline is None:  # The initialisation does not change: probe it once.
        baseline = self._probe(self.baseline_params, 'probe_random_init')
        self.baseline = {k: v for k, v in baseline.items() if k.endswith('_acc')}
      results.update(self.baseline)
    return results
