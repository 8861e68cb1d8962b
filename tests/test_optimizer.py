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
