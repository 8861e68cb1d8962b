"""The same train step on 1 device and on 8 fake devices (fsdp=8, data x fsdp, tensor) agrees."""

import jax
import numpy as np
import pytest

from vidlang_jax import sharding, train

from helpers import find_leaf, synthetic_batch, tiny_config


def run_steps(config, devices, num_steps=2):
  """Returns (initial gradients, per-step losses, final params, state shardings)."""
  mesh = sharding.make_mesh(config.mesh, devices)
  with sharding.use_mesh(mesh):
    setup = train.build(config, mesh)
    objective, shardings = setup.objective, setup.shardings
    state = jax.jit(setup.init, out_shardings=shardings)(jax.random.key(0))
    batch = sharding.shard_batch(synthetic_batch(config, seed=0), mesh)
    grads = jax.jit(jax.grad(lambda p: objective.loss(p, batch, jax.random.key(1))[0]))(
        state['params'])
    step = train.make_train_step(objective, setup.tx, setup.schedule, shardings)
    losses = []
    for i in range(num_steps):
      batch = sharding.shard_batch(synthetic_batch(config, seed=i), mesh)
      state, metrics = step(state, batch, jax.random.key(1))
      losses.append(float(metrics['loss']))
    return jax.device_get(grads), losses, jax.device_get(state['params']), shardings


CASES = [('sigmoid', dict(data=1, fsdp=8)), ('sigmoid', dict(data=4, fsdp=2)),
         ('softmax', dict(data=2, fsdp=2, tensor=2))]
SLOW_CASES = [('softmax', dict(data=1, fsdp=8)), ('softmax', dict(data=4, fsdp=2)),
              ('sigmoid', dict(data=2, fsdp=2, tensor=2)),
              ('sigmoid', dict(data=1, fsdp=4, tensor=2))]


@pytest.mark.parametrize('loss,mesh', CASES + [pytest.param(*c, marks=pytest.mark.slow)
                                               for c in SLOW_CASES])
def test_one_device_equals_eight(loss, mesh):
  config = tiny_config()
  config.loss.kind = loss
  config.optimizer.warmup_steps = 1
  single = run_steps(config, jax.devices()[:1])
  config.mesh.update(dict(data=1, fsdp=1, tensor=1, sequence=1), **mesh)
  multi = run_steps(config, jax.devices())
  close = lambda tol: (lambda a, b: np.testing.assert_allclose(a, b, rtol=tol, atol=tol))
  jax.tree.map(close(1e-5), multi[0], single[0])  # gradients
  np.testing.assert_allclose(multi[1], single[1], rtol=1e-5, atol=1e-5)  # losses, 2 steps
  # Adam turns gradient rounding noise near zero into +-lr-sized steps, so params after two
  # updates are compared at a fraction of the learning rate (1e-3).
  jax.tree.map(close(1e-4), multi[2], single[2])
  kernel = find_leaf(multi[3]['params'], r'video/encoder/.*mlp/Dense_0/kernel')
  if mesh.get('fsdp', 1) > 1:
    assert 'fsdp' in str(kernel.spec)
  if mesh.get('tensor', 1) > 1:
    assert 'tensor' in str(kernel.spec)
