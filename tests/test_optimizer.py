"""Weight decay only where the regex says; frozen params never move; warmup + cosine."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vidlang_jax.optimizer import make_optimizer


def opt_config(**kw):
  base = dict(learning_rate=0.1, warmup_steps=2, end_lr_fraction=0.0, b1=0.9, b2=0.95,
              eps=1e-8, weight_decay=0.5, grad_clip=1.0,
              weight_decay_rules=r'.*kernel', freeze='')
  return ml_collections.ConfigDict(dict(base, **kw))


PARAMS = {'dense': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones((2,))},
          'pos_embedding': jnp.ones((3,))}


def test_weight_decay_mask_and_freeze():
  tx, _ = make_optimizer(opt_config(freeze='pos_.*'), total_steps=10)
  state = tx.init(PARAMS)
  zero_grads = jax.tree.map(jnp.zeros_like, PARAMS)
  params = PARAMS
  for _ in range(3):
    updates, state = tx.update(zero_grads, state, params)
    params = optax.apply_updates(params, updates)
  assert (params['dense']['kernel'] < 1).all()  # decayed with zero gradient
  np.testing.assert_array_equal(params['dense']['bias'], 1)  # not decayed
  ones = jax.tree.map(jnp.ones_like, PARAMS)
  updates, state = tx.update(ones, state, params)
  np.testing.assert_array_equal(updates['pos_embedding'], 0)  # frozen
  assert (updates['dense']['bias'] != 0).all()


def test_schedule_warmup_then_cosine_to_zero():
  _, schedule = make_optimizer(opt_config(), total_steps=10)
  values = [float(schedule(i)) for i in range(11)]
  assert values[0] == 0 and abs(values[2] - 0.1) < 1e-7
  assert all(a >= b for a, b in zip(values[2:], values[3:])) and values[10] < 1e-6


def test_schedule_matches_warmup_cosine_formula():
  """Linear warmup to the peak, then cosine from the peak to `end_lr_fraction` x peak."""
  peak, warmup, total, end = 0.1, 3, 11, 0.1 * 0.1
  _, schedule = make_optimizer(opt_config(warmup_steps=warmup, end_lr_fraction=0.1),
                               total_steps=total)
  for step in (0, 1, 2, 3, 5, 7, 11):
    if step < warmup:
      expected = peak * step / warmup
    else:
      expected = end + (peak - end) * 0.5 * (1 + np.cos(np.pi * (step - warmup) / (total - warmup)))
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-9,
                               err_msg=f'step {step}')


def test_gradient_clipping_by_global_norm():
  """Updates equal AdamW's on gradients scaled down to global norm `grad_clip` (a large
  gradient, then a small one: Adam alone is scale-free on one step, not across two)."""
  config = opt_config(weight_decay=0.0, grad_clip=1.0)
  tx, schedule = make_optimizer(config, total_steps=10)
  reference = optax.adamw(schedule, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0)
  big = {'dense': {'kernel': jnp.full((2, 2), 5.0), 'bias': jnp.array([-5.0, 1.0])},
         'pos_embedding': jnp.array([2.0, 0.0, -1.0])}
  state, ref_state = tx.init(PARAMS), reference.init(PARAMS)
  for grads in (big, jax.tree.map(lambda g: 0.01 * g[::-1], big)):
    scale = min(1.0, 1.0 / float(optax.global_norm(grads)))
    updates, state = tx.update(grads, state, PARAMS)
    expected, ref_state = reference.update(jax.tree.map(lambda g, s=scale: g * s, grads), ref_state,
                                           PARAMS)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-9)
