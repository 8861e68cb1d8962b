"""Video ViT (joint / divided attention, pooling, frame-count interpolation) and the towers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidlang_jax.models.two_tower import TwoTower
from vidlang_jax.models.video_vit import VideoViT, patchify

VIT = dict(width=32, depth=2, num_heads=2, mlp_dim=64, tubelet=(2, 8, 8), num_frames=4,
           image_size=16, scan=False)


def test_patchify_is_tubelet_layout():
  video = jnp.arange(1 * 4 * 16 * 16 * 3, dtype=jnp.float32).reshape(1, 4, 16, 16, 3)
  patches = patchify(video, (2, 8, 8))
  assert patches.shape == (1, 2, 2, 2, 2 * 8 * 8 * 3)
  # Patch (t=1, h=0, w=1) starts at frame 2, row 0, column 8.
  np.testing.assert_array_equal(patches[0, 1, 0, 1, :3], video[0, 2, 0, 8])
  with pytest.raises(ValueError, match='not divisible by the tubelet'):
    patchify(jnp.zeros((1, 3, 16, 16, 3)), (2, 8, 8))


@pytest.mark.parametrize('attention,pool,scan', [('joint', 'gap', False), ('divided', 'map', True),
                                                 ('divided', 'gap', False)])
def test_video_vit_shapes_and_grads(attention, pool, scan):
  model = VideoViT(**dict(VIT, attention=attention, pool=pool, scan=scan))
  video = jax.random.normal(jax.random.key(0), (2, 4, 16, 16, 3))
  params = model.init(jax.random.key(1), video)['params']
  pooled, tokens = model.apply({'params': params}, video)
  assert pooled.shape == (2, 32) and tokens.shape == (2, 2 * 2 * 2, 32)
  grads = jax.grad(lambda p: model.apply({'params': p}, video)[0].sum())(params)
  assert all(np.isfinite(g).all() and np.abs(g).sum() > 0 for g in jax.tree.leaves(grads))


def test_divided_attention_groups_time_and_space():
  """In a divided block, time attention mixes a location across frames and space attention
  mixes a frame across locations: silencing one half cuts exactly those paths."""
  video = jax.random.normal(jax.random.key(0), (1, 4, 16, 16, 3))
  model = VideoViT(**dict(VIT, depth=1, attention='divided'))
  params = model.init(jax.random.key(1), video)['params']

  def dependence(silenced):  # |d token(t=1, s=3) / d patch| per input patch (t, s)
    p = jax.tree.map(lambda x: x, params)
    p['encoder']['block_0'][silenced]['out'] = jax.tree.map(
        jnp.zeros_like, p['encoder']['block_0'][silenced]['out'])
    jac = jax.jacobian(lambda v: model.apply({'params': p}, v)[1][0, 7])(video)
    jac = np.abs(np.asarray(jac)).sum(axis=0)[0]  # [4, 16, 16, 3]
    return np.array([[jac[2 * t:2 * t + 2, 8 * h:8 * h + 8, 8 * w:8 * w + 8].sum()
                      for h in range(2) for w in range(2)] for t in range(2)])  # [t, s]

  time_only = dependence('attn_space')
  assert time_only[0, 3] > 0 and time_only[1, 3] > 0  # same location, both frames
  assert time_only[0, :3].sum() == 0 and time_only[1, :3].sum() == 0
  space_only = dependence('attn_time')
  assert (space_only[1] > 0).all()  # same frame, every location
  assert space_only[0].sum() == 0


def test_time_embedding_interpolates_to_other_frame_counts():
  model = VideoViT(**VIT)
  params = model.init(jax.random.key(1), jnp.zeros((1, 4, 16, 16, 3)))['params']
  pooled, tokens = model.apply({'params': params}, jnp.ones((1, 8, 16, 16, 3)))
  assert tokens.shape == (1, 4 * 4, 32) and np.isfinite(pooled).all()
  with pytest.raises(ValueError, match='patch grid'):
    model.apply({'params': params}, jnp.ones((1, 4, 24, 24, 3)))


def test_two_tower_embeddings_are_normalised_and_padding_is_ignored():
  model = TwoTower(video=VIT, text=dict(vocab_size=50, width=32, depth=1, num_heads=2,
                                        max_len=8, scan=False), embed_dim=16)
  video = jnp.ones((2, 4, 16, 16, 3))
  text = jnp.array([[2, 7, 9, 3, 0, 0, 0, 0], [2, 7, 9, 3, 0, 0, 0, 0]])
  params = model.init(jax.random.key(0), video, text)['params']
  v, t, scale, bias = model.apply({'params': params}, video, text)
  np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(t, axis=-1), 1, atol=1e-5)
  assert float(jnp.exp(scale)) == pytest.approx(10.0) and float(bias) == pytest.approx(-10.0)
  # Padding does not change the text embedding: fewer pad positions give the same result.
  shorter = jnp.array([[2, 7, 9, 3, 0, 0], [2, 7, 9, 3, 0, 0]])
  np.testing.assert_allclose(model.apply({'params': params}, shorter,
                                         method=model.encode_text), t, atol=1e-5)


def test_scan_and_remat_match_the_unrolled_stack():
  """The base config's `scan=True, remat=True` computes what the plain loop computes."""
  video = jax.random.normal(jax.random.key(0), (2, 4, 16, 16, 3))
  plain = VideoViT(**VIT)
  params = nn.meta.unbox(plain.init(jax.random.key(1), video)['params'])
  blocks = [params['encoder'][f'block_{i}'] for i in range(VIT['depth'])]
  scanned_params = dict(params, encoder={
      'blocks': jax.tree.map(lambda *xs: jnp.stack(xs), *blocks),
      'norm_out': params['encoder']['norm_out']})
  scanned = VideoViT(**dict(VIT, scan=True, remat=True))
  weights = jax.random.normal(jax.random.key(2), (2, VIT['width']))  # LN outputs sum to ~0
  loss = lambda model, p: (model.apply({'params': p}, video, train=True)[0] * weights).sum()
  np.testing.assert_allclose(loss(scanned, scanned_params), loss(plain, params), rtol=1e-5)
  g_plain = jax.grad(lambda p: loss(plain, p))(params)
  g_scan = jax.grad(lambda p: loss(scanned, p))(scanned_params)
  np.testing.assert_allclose(g_scan['encoder']['blocks']['mlp']['Dense_0']['kernel'][1],
                             g_plain['encoder']['block_1']['mlp']['Dense_0']['kernel'], atol=1e-5)
