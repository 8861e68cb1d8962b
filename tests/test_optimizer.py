"""Weight decay only where the regex says; frozen params never move; warmup + cosine; layer-wise
learning-rate decay."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vidlang_jax import config as config_lib
from vidlang_jax import sharding, train
from vidlang_jax.optimizer import EMBEDDINGS, layer_scales, make_optimizer
from vidlang_jax.sharding import tree_paths


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


# ------------------------------------------------------------------ layer-wise lr decay
D = 0.75
SHAPES = {  # an unrolled 3-block video tower, a scanned 4-block text tower, heads
    'video': {'patch_embed': {'kernel': (4, 2), 'bias': (2,)}, 'pos_time': (3, 2), 'cls': (2,),
              'norm_pre': {'scale': (2,)},
              'encoder': {**{f'block_{i}': {'mlp': {'kernel': (2, 2)}} for i in range(3)},
                          'norm_out': {'scale': (2,)}},
              'pool_query': (1, 2)},
    'text': {'token_embedding': (5, 2),
             'encoder': {'blocks': {'attn': {'kernel': (4, 2, 3)}, 'norm_attn': {'scale': (4, 2)}},
                         'norm_out': {'scale': (2,)}}},
    'video_proj': {'kernel': (2, 2)}, 'logit_scale': (), 'head': {'kernel': (2, 3), 'bias': (3,)}}
LD_PARAMS = jax.tree.map(jnp.ones, SHAPES, is_leaf=lambda x: isinstance(x, tuple))
SCANNED = [D ** 4, D ** 3, D ** 2, D]  # text blocks 0..3 (ids 1..4 of L=4)
EXPECTED = {  # decay ** (L + 1 - id)
    'video/patch_embed/kernel': D ** 4, 'video/patch_embed/bias': D ** 4,
    'video/pos_time': D ** 4, 'video/cls': D ** 4, 'video/norm_pre/scale': D ** 4,
    'video/encoder/block_0/mlp/kernel': D ** 3,
    'video/encoder/block_1/mlp/kernel': D ** 2, 'video/encoder/block_2/mlp/kernel': D,
    'video/encoder/norm_out/scale': 1, 'video/pool_query': 1,
    'text/token_embedding': D ** 5, 'text/encoder/blocks/attn/kernel': SCANNED,
    'text/encoder/blocks/norm_attn/scale': SCANNED, 'text/encoder/norm_out/scale': 1,
    'video_proj/kernel': 1, 'logit_scale': 1, 'head/kernel': 1, 'head/bias': 1}
HEADS = [path for path, scale in EXPECTED.items() if scale == 1]


def by_path(tree):
  return dict(zip(jax.tree.leaves(tree_paths(tree)), jax.tree.leaves(tree)))


def expected_update(path, shape, per_param):
  """`per_param` x the expected scale, the scanned one along the leading axis only."""
  scale = np.asarray(EXPECTED[path], np.float64)
  return np.broadcast_to(per_param * scale.reshape(scale.shape + (1,) * (len(shape) - scale.ndim)),
                         shape)


def ld_config(**kw):
  return opt_config(**dict(dict(warmup_steps=0, grad_clip=0.0, weight_decay=0.0,
                                layer_decay=D, layer_decay_towers='.*',
                                layer_decay_embeddings=EMBEDDINGS), **kw))


def test_layer_decay_scales_adam_first_step():
  """Adam's first step is lr x sign(grad) for every element, so each update is -lr x the
  layer's scale: embeddings decay**(L+1), block i decay**(L-i) (per slice of a scanned stack),
  final norm, pooling, projection, temperature and heads 1. Init takes abstract, boxed params."""
  tx, _ = make_optimizer(ld_config(), total_steps=10)
  boxed = dict(LD_PARAMS, text=dict(LD_PARAMS['text'], token_embedding=nn.Partitioned(
      LD_PARAMS['text']['token_embedding'], ('vocab', 'embed'))))
  jax.eval_shape(tx.init, boxed)
  grads = jax.tree.map(jnp.ones_like, LD_PARAMS)
  updates, _ = jax.jit(tx.update)(grads, tx.init(LD_PARAMS), LD_PARAMS)
  got = by_path(updates)
  assert set(got) == set(EXPECTED)
  for path, update in got.items():
    np.testing.assert_allclose(update, expected_update(path, update.shape, -0.1), rtol=1e-6,
                               err_msg=path)


def test_layer_decay_scales_decoupled_weight_decay():
  """After AdamW, the scale multiplies the weight decay too (torch: lr x scale per group): with
  zero gradients each update is -lr x wd x param x scale, and the heads' are bitwise AdamW's."""
  config = ld_config(weight_decay=0.5, weight_decay_rules='.*')
  tx, _ = make_optimizer(config, total_steps=10)
  plain, _ = make_optimizer(ld_config(weight_decay=0.5, weight_decay_rules='.*', layer_decay=1.0),
                            total_steps=10)
  zeros = jax.tree.map(jnp.zeros_like, LD_PARAMS)
  got = by_path(tx.update(zeros, tx.init(LD_PARAMS), LD_PARAMS)[0])
  ref = by_path(plain.update(zeros, plain.init(LD_PARAMS), LD_PARAMS)[0])
  for path, update in got.items():
    np.testing.assert_allclose(update, expected_update(path, update.shape, -0.05), rtol=1e-6,
                               err_msg=path)
  for path in HEADS:
    np.testing.assert_array_equal(got[path], ref[path], err_msg=path)


def test_layer_decay_root_tower_and_tower_regex():
  """Blocks at the top level (the world model) make the root '' a tower; `layer_decay_towers`
  picks towers, the others train at the full rate."""
  params = {'token_embedding': jnp.ones((6, 2)), 'blocks': {'mlp': {'kernel': jnp.ones((2, 2, 2))}},
            'norm_out': {'scale': jnp.ones(2)}, 'lm_head': {'kernel': jnp.ones((2, 6))}}
  scales = by_path(layer_scales(params, D))
  assert scales['token_embedding'] == D ** 3
  np.testing.assert_array_equal(scales['blocks/mlp/kernel'].ravel(), [D ** 2, D])
  assert scales['blocks/mlp/kernel'].shape == (2, 1, 1)
  assert scales['norm_out/scale'] == 1 and scales['lm_head/kernel'] == 1
  video_only = by_path(layer_scales(LD_PARAMS, D, towers='video'))
  for path, scale in video_only.items():
    assert scale == (1 if path.startswith('text/') else EXPECTED[path]), path


def test_layer_decay_scales_real_models():
  """The rule on the models' own param trees: a scanned classifier tower (4 blocks) and the
  world model's unrolled top-level blocks (4)."""
  for name, overrides, checks in [
      ('finetune_classification', {'model.video.scan': True},
       {'video/patch_embed/kernel': D ** 5, 'video/pos_space': D ** 5,
        'video/encoder/blocks/mlp/Dense_0/kernel': [D ** 4, D ** 3, D ** 2, D],
        'video/encoder/norm_out/scale': 1, 'head_norm/scale': 1, 'head_shape/kernel': 1}),
      ('world_model', {'model.scan': False},
       {'token_embedding': D ** 5, 'block_0/attn/query/kernel': D ** 4,
        'block_3/mlp/up/kernel': D, 'norm_out/scale': 1, 'lm_head/kernel': 1})]:
    config = config_lib.load(f'configs/{name}.py:tiny')
    config_lib.apply_overrides(config, dict(overrides, **{'optimizer.layer_decay': D}))
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    with sharding.use_mesh(mesh):
      params = train.build(config, mesh).abstract_state['params']  # runs tx.init, too
    scales = by_path(layer_scales(params, D))
    for path, expected in checks.items():
      np.testing.assert_array_equal(np.ravel(scales[path]), np.ravel(expected), err_msg=path)


def test_layer_decay_one_is_plain_adamw_bitwise():
  """`layer_decay=1.0` (the default) is exactly AdamW + clipping, over two steps."""
  tx, schedule = make_optimizer(ld_config(layer_decay=1.0, weight_decay=0.5, grad_clip=1.0,
                                          warmup_steps=1), total_steps=10)
  reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      schedule, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.5,
      mask=lambda p: jax.tree.map(lambda path: path.endswith('kernel'), tree_paths(p))))
  state, ref_state, params = tx.init(LD_PARAMS), reference.init(LD_PARAMS), LD_PARAMS
  rng = np.random.default_rng(0)
  for _ in range(2):
    grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    expected, ref_state = jax.jit(reference.update)(grads, ref_state, params)
    jax.tree.map(np.testing.assert_array_equal, updates, expected)
    params = optax.apply_updates(params, updates)


def test_freeze_wins_over_layer_decay():
  """Frozen params (an unrolled block, a whole scanned stack) get exactly zero updates."""
  tx, _ = make_optimizer(ld_config(freeze=r'video/encoder/block_1/.*|text/encoder/blocks/.*'),
                         total_steps=10)
  grads = jax.tree.map(jnp.ones_like, LD_PARAMS)
  got = by_path(tx.update(grads, tx.init(LD_PARAMS), LD_PARAMS)[0])
  for path, update in got.items():
    if 'block_1' in path or 'blocks' in path:
      np.testing.assert_array_equal(update, 0, err_msg=path)
    else:
      np.testing.assert_allclose(update, expected_update(path, update.shape, -0.1), rtol=1e-6)


def test_layer_decay_bad_config():
  """A decay outside (0, 1], a bad regex, or a tower regex matching no block stack fail with
  the key's name (the last at `tx.init`, where the param paths are first known)."""
  for bad in (0.0, -0.5, 1.5, '0.75'):
    with pytest.raises(ValueError, match='layer_decay must be in'):
      make_optimizer(ld_config(layer_decay=bad), total_steps=10)
  with pytest.raises(ValueError, match='layer_decay_towers.*not a regex'):
    make_optimizer(ld_config(layer_decay_towers='(video'), total_steps=10)
  tx, _ = make_optimizer(ld_config(layer_decay_towers='audio'), total_steps=10)
  with pytest.raises(ValueError, match=r"'audio' matches no tower.*\['text', 'video'\]"):
    tx.init(LD_PARAMS)
  tx, _ = make_optimizer(ld_config(), total_steps=10)
  with pytest.raises(ValueError, match=r"'\.\*' matches no tower with blocks"):
    tx.init(PARAMS)  # no blocks at all
