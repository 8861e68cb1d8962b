"""Our train steps as a user runs them, built from a config: the one trainer's jitted step
(loss, gradients, clipping, AdamW, the non-finite guard; the state donated) on a synthetic
batch of the config's shapes, on one device (or the devices given)."""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import numpy as np

from vidlang_jax import config as config_lib
from vidlang_jax import flops, sharding, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(spec: str, overrides: dict[str, Any], sequence: int = 1) -> Any:
  """`configs/<spec>` with `overrides` ({'model.width': 512, ...}) on one device, or with the
  sequence over `sequence` devices."""
  return config_lib.load(os.path.join(ROOT, 'configs', spec), dict(overrides, **{
      'mesh.data': 1, 'mesh.fsdp': 1, 'mesh.tensor': 1, 'mesh.sequence': sequence}))


def synthetic_batch(batch_spec: dict[str, jax.ShapeDtypeStruct], vocab: int,
                    seed: int = 0) -> dict[str, jax.Array]:
  """Random data of the batch's shapes: ids below `vocab`, pixels in [0, 1), LM rows of one
  document each (positions 0.., segment 1, every token weighted)."""
  rng = np.random.default_rng(seed)
  batch = {}
  for key, spec in batch_spec.items():
    if key == 'positions':
      value = np.broadcast_to(np.arange(spec.shape[1]), spec.shape)
    elif key in ('segment_ids', 'weights'):
      value = np.ones(spec.shape)
    elif key == 'modality':
      value = np.zeros(spec.shape)
    elif np.issubdtype(spec.dtype, np.integer):
      value = rng.integers(4, vocab, spec.shape)
    else:
      value = rng.random(spec.shape)
    batch[key] = jax.device_put(np.asarray(value, spec.dtype), spec.sharding)
  return batch


class Step:
  """`step()` runs one train step and blocks; `flops` is XLA's count of it, `model_flops` the
  analytic one (vidlang_jax/flops.py), `params` the number of parameters."""

  def __init__(self, config: Any, vocab: int, devices: list[jax.Device] | None = None):
    self.config = config
    self.model_flops = flops.model_flops(config)
    self.mesh = sharding.make_mesh(config.mesh, devices or jax.devices()[:1])
    self._context = sharding.use_mesh(self.mesh, sharding.logical_rules(config))
    with self._context:
      setup = train.build(config, self.mesh)
      self.state = jax.jit(setup.init, out_shardings=setup.shardings)(jax.random.key(0))
      self.batch = synthetic_batch(setup.batch_spec, vocab)
      train_step = train.make_train_step(setup.objective, setup.tx, setup.schedule,
                                         setup.shardings)
      self.rng = jax.random.key(1)
      self.compiled = train_step.lower(setup.abstract_state, setup.batch_spec,
                                       self.rng).compile()
      self.flops = train.step_flops_per_device(config, self.compiled, self.mesh,
                                               setup.batch_spec)
    self.params = sum(x.size for x in jax.tree.leaves(self.state['params']))
    self.last_metrics: dict[str, Any] = {}

  def step(self) -> None:
    self.state, self.last_metrics = self.compiled(self.state, self.batch, self.rng)
    jax.block_until_ready(self.last_metrics['loss'])

  def as_callable(self) -> Callable[[], None]:
    return self.step


def matmul_params(params: Any) -> int:
  """Parameters used in a matmul on every token: the kernels (not an embedding lookup)."""
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  return sum(int(np.prod(x.shape)) for path, x in paths
             if jax.tree_util.keystr(path).endswith("['kernel']"))
