"""World-model decoder: ring attention over sequence=4 x data=2 equals the reference model on
one device (loss and gradients); RoPE is relative; scan equals unrolled."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vidlang_jax import sharding
from vidlang_jax.models.world_model import WorldModel, rope

from helpers import find_leaf

TINY = dict(vocab_size=97, width=32, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
            block_size=16, scan=False)


def packed_batch(batch=4, length=128, seed=0):
  """Two or three documents per row, positions restarting at each, padding at the end."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, 97, (batch, length))
  segments, positions = np.zeros((batch, length), int), np.zeros((batch, length), int)
  for row in range(batch):
    cuts = [0] + sorted(rng.choice(np.arange(8, length - 8), 2, replace=False)) + [length - 5]
    for doc, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
      segments[row, a:b], positions[row, a:b] = doc + 1, np.arange(b - a)
  return {k: jnp.asarray(v, jnp.int32) for k, v in
          dict(tokens=tokens, segment_ids=segments, positions=positions).items()}


def lm_loss(model, params, batch):
  logits = model.apply({'params': params}, batch['tokens'], batch['positions'],
                       batch['segment_ids'])
  # Next token within the same document; padding and document ends carry no loss.
  same = (batch['segment_ids'][:, 1:] == batch['segment_ids'][:, :-1]) & (
      batch['segment_ids'][:, 1:] != 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], batch['tokens'][:, 1:])
  return jnp.sum(ce * same) / jnp.sum(same)


def unboxed(tree):
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if hasattr(x, 'unbox') else x,
                      tree, is_leaf=lambda x: hasattr(x, 'unbox'))


def loss_and_grads(attention, mesh_shape, batch, devices=None):
  model = WorldModel(**TINY, attention=attention)
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1, sequence=1) | mesh_shape, devices)
  with sharding.use_mesh(mesh):
    params = unboxed(jax.jit(
        lambda: model.init(jax.random.key(0), batch['tokens'][:1])['params'])())
    placed = {k: jax.device_put(v, sharding.batch_sharding(mesh, 2)) for k, v in batch.items()}
    loss, grads = jax.jit(jax.value_and_grad(lambda p, b: lm_loss(model, p, b)))(params, placed)
  return float(loss), jax.device_get(grads)


@pytest.mark.parametrize('mesh_shape', [dict(data=2, sequence=4), dict(sequence=8)])
def test_ring_model_on_sequence_mesh_equals_one_device(mesh_shape):
  batch = packed_batch()
  ref_loss, ref_grads = loss_and_grads('dot_product', {}, batch, jax.devices()[:1])
  loss, grads = loss_and_grads('ring', mesh_shape, batch)
  assert abs(loss - ref_loss) < 1e-4, (loss, ref_loss)
  for pattern in ('token_embedding', 'block_0/attn/query/kernel', 'block_1/mlp/down/kernel'):
    np.testing.assert_allclose(find_leaf(grads, pattern), find_leaf(ref_grads, pattern),
                               atol=1e-5)


def test_rope_depends_only_on_relative_position():
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 16))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 16))
  score = lambda pq, pk: float(jnp.sum(rope(q, jnp.array([[pq]]), 1e4) *
                                       rope(k, jnp.array([[pk]]), 1e4)))
  assert score(7, 3) == pytest.approx(score(107, 103), rel=1e-4)
  assert score(7, 3) != pytest.approx(score(7, 4), rel=1e-3)


def test_scan_equals_unrolled():
  batch = packed_batch(batch=2, length=32)
  unrolled = WorldModel(**TINY)
  scanned = WorldModel(**(TINY | dict(scan=True, remat=True)))
  params = unboxed(unrolled.init(jax.random.key(0), batch['tokens'])['params'])
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), params['block_0'], params['block_1'])
  scanned_params = {k: v for k, v in params.items() if not k.startswith('block_')}
  scanned_params['blocks'] = stacked
  args = (batch['tokens'], batch['positions'], batch['segment_ids'])
  np.testing.assert_allclose(scanned.apply({'params': scanned_params}, *args),
                             unrolled.apply({'params': params}, *args), atol=1e-5)
