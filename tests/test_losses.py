"""Sharded contrastive losses equal their dense references (values, metrics, gradients)."""

import os

_FLAGS = os.environ.get('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in _FLAGS:  # Standalone runs; conftest sets it.
  os.environ['XLA_FLAGS'] = f'{_FLAGS} --xla_force_host_platform_device_count=8'.strip()

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vidlang_jax import registry
from vidlang_jax.losses import contrastive

AXES = ('data', 'fsdp', 'tensor', 'sequence')
BATCH_AXES = ('data', 'fsdp')
LOSSES = {
    'sigmoid': (contrastive.sigmoid_loss, contrastive.sigmoid_loss_dense),
    'softmax': (contrastive.softmax_loss, contrastive.softmax_loss_dense),
}


def make_mesh(shape):
  if len(jax.devices()) < math.prod(shape):
    pytest.skip(f'needs {math.prod(shape)} devices')
  return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def embeddings(batch, dim, seed=0, noise=0.8):
  """Raw (not normalised) correlated pairs, so the accuracies are neither 0 nor 1."""
  kv, kt = jax.random.split(jax.random.key(seed))
  v = 3.0 * jax.random.normal(kv, (batch, dim))
  return v, v + noise * 3.0 * jax.random.normal(kt, (batch, dim))


def l2norm(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Dense references against naive loops.


def naive_sigmoid(v, t, logit_scale, logit_bias):
  b, s = len(v), math.exp(logit_scale)
  total = 0.0
  for i in range(b):
    for j in range(b):
      z = 1.0 if i == j else -1.0
      total += math.log1p(math.exp(-z * (s * float(v[i] @ t[j]) + logit_bias)))  # -log_sigmoid
  return total / b


def naive_softmax(v, t, logit_scale):
  b, s = len(v), math.exp(logit_scale)
  logits = [[s * float(v[i] @ t[j]) for j in range(b)] for i in range(b)]
  v2t = sum(math.log(sum(math.exp(x) for x in logits[i])) - logits[i][i] for i in range(b))
  t2v = sum(math.log(sum(math.exp(logits[i][j]) for i in range(b))) - logits[j][j]
            for j in range(b))
  return (v2t + t2v) / (2 * b)


def test_dense_references_match_naive_loops():
  v, t = (np.asarray(l2norm(x), np.float64) for x in embeddings(5, 7))
  loss, metrics = contrastive.sigmoid_loss_dense(v, t, math.log(10.0), -3.0)
  np.testing.assert_allclose(loss, naive_sigmoid(v, t, math.log(10.0), -3.0), rtol=1e-5)
  assert float(metrics['temperature']) == pytest.approx(10.0) and float(metrics['bias']) == -3.0
  loss, _ = contrastive.softmax_loss_dense(v, t, math.log(10.0))
  np.testing.assert_allclose(loss, naive_softmax(v, t, math.log(10.0)), rtol=1e-5)


def test_dense_accuracy_counts_ties_against_the_model():
  v = jnp.eye(4)
  for loss_fn in (contrastive.sigmoid_loss_dense, contrastive.softmax_loss_dense):
    assert float(loss_fn(v, v, 0.0, 0.0)[1]['v2t_acc']) == 1.0
    _, metrics = loss_fn(v, jnp.roll(v, 1, axis=0), 0.0, 0.0)  # Positives 0, one negative 1.
    assert float(metrics['v2t_acc']) == 0.0 and float(metrics['t2v_acc']) == 0.0
    _, metrics = loss_fn(jnp.ones((4, 3)), jnp.ones((4, 3)), 0.0, 0.0)  # All tied.
    assert float(metrics['v2t_acc']) == 0.0 and float(metrics['t2v_acc']) == 0.0


# ---------------------------------------------------------------------------------------------
# Sharded == dense.


@pytest.mark.parametrize('mesh_shape', [(8, 1, 1, 1), (4, 2, 1, 1), (2, 2, 2, 1)])
@pytest.mark.parametrize('name', ['sigmoid', 'softmax'])
def test_sharded_equals_dense_values_and_grads(name, mesh_shape):
  mesh = make_mesh(mesh_shape)
  sharded_fn, dense_fn = LOSSES[name]
  v, t = embeddings(32, 16)
  scale, bias = jnp.float32(math.log(10.0)), jnp.float32(-5.0)

  def wrap(fn, **kw):
    def loss(v, t, scale, bias):  # Normalises inside, so gradients also flow through the norm.
      return fn(l2norm(v), l2norm(t), scale, bias, **kw)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))

  data = NamedSharding(mesh, P(BATCH_AXES))
  (loss_s, metrics_s), grads_s = wrap(sharded_fn, mesh=mesh)(
      jax.device_put(v, data), jax.device_put(t, data), scale, bias)
  (loss_d, metrics_d), grads_d = wrap(dense_fn)(v, t, scale, bias)
  np.testing.assert_allclose(loss_s, loss_d, rtol=1e-5, atol=1e-5)
  assert set(metrics_s) == set(metrics_d)
  for k in metrics_d:
    np.testing.assert_allclose(metrics_s[k], metrics_d[k], rtol=1e-5, atol=1e-5, err_msg=k)
  assert 0.0 < float(metrics_d['v2t_acc']) < 1.0  # Otherwise the accuracy check proves little.
  for what, gs, gd in zip(('video', 'text', 'scale', 'bias'), grads_s, grads_d):
    np.testing.assert_allclose(gs, gd, rtol=1e-5, atol=1e-5, err_msg=what)
  if name == 'sigmoid':
    assert abs(float(grads_d[3])) > 1e-3 and abs(float(grads_d[2])) > 1e-3  # Non-trivial grads.


@pytest.mark.parametrize('name', ['sigmoid', 'softmax'])
def test_ambient_mesh_and_dense_fallbacks(name):
  sharded_fn, dense_fn = LOSSES[name]
  v, t = (l2norm(x) for x in embeddings(16, 8, seed=1))
  want = float(dense_fn(v, t, 2.0, -1.0)[0])
  assert float(sharded_fn(v, t, 2.0, -1.0)[0]) == want  # No mesh: exactly the dense path.
  mesh = make_mesh((1, 1, 8, 1))  # Batch axes of size 1: dense path too.
  assert float(sharded_fn(v, t, 2.0, -1.0, mesh=mesh)[0]) == want
  mesh = make_mesh((4, 2, 1, 1))
  with jax.set_mesh(mesh):
    data = NamedSharding(mesh, P(BATCH_AXES))
    vs, ts = jax.device_put(v, data), jax.device_put(t, data)
    np.testing.assert_allclose(jax.jit(sharded_fn)(vs, ts, 2.0, -1.0)[0], want, rtol=1e-5)
    np.testing.assert_allclose(sharded_fn(vs, ts, 2.0, -1.0)[0], want, rtol=1e-5)  # Eager.
    with pytest.raises(ValueError, match='not divisible'):
      sharded_fn(v[:12], t[:12], 2.0, -1.0)
  with pytest.raises(ValueError, match='not in the mesh'):
    sharded_fn(v, t, 2.0, -1.0, mesh=mesh, batch_axes=('batch',))


def test_sigmoid_ring_never_holds_a_global_row_of_logits():
  """Per device, neither forward nor backward may hold [B/N, B] logits, let alone [B, B]."""
  batch, dim, n = 512, 16, 8
  mesh = make_mesh((n, 1, 1, 1))
  x = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=NamedSharding(mesh, P(BATCH_AXES)))
  s = jax.ShapeDtypeStruct((), jnp.float32)
  has_batch_dim = re.compile(rf'f32\[(\d+,)*{batch}(,\d+)*\]')

  def compiled(fn):
    loss = lambda *a: fn(*a)[0]
    fns = (loss, jax.grad(loss, argnums=(0, 1, 2, 3)))
    return [jax.jit(f).lower(x, x, s, s).compile() for f in fns]

  row_block_bytes = batch // n * batch * 4
  for c in compiled(lambda *a: contrastive.sigmoid_loss(*a, mesh=mesh)):
    assert not has_batch_dim.search(c.as_text())
    assert c.memory_analysis().temp_size_in_bytes < row_block_bytes
  # The check can fail: the dense version, partitioned by XLA, holds [B/N, B] rows.
  for c in compiled(contrastive.sigmoid_loss_dense):
    assert has_batch_dim.search(c.as_text())
    assert c.memory_analysis().temp_size_in_bytes >= row_block_bytes


def test_registered():
  assert registry._REGISTRY['loss.sigmoid'] is contrastive.sigmoid_loss
  assert registry._REGISTRY['loss.softmax'] is contrastive.softmax_loss
