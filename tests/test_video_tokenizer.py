"""FSQ video tokenizer: codes <-> ids round trip, exact level counts, straight-through
gradients, token grid shapes."""

import jax
import jax.numpy as jnp
import numpy as np

from vidlang_jax.models.video_tokenizer import FSQ, VideoTokenizer


def test_fsq_ids_round_trip_and_cover_the_vocabulary():
  fsq = FSQ((8, 5, 5, 5))
  ids = jnp.arange(fsq.num_codes)
  codes = fsq.indices_to_codes(ids)
  np.testing.assert_array_equal(fsq.codes_to_indices(codes), ids)
  # Quantising a grid point returns it (codes are fixed points), whatever the input scale.
  z = jax.random.normal(jax.random.key(0), (4096, 4)) * 3
  quantized = fsq.quantize(z)
  for dim, levels in enumerate((8, 5, 5, 5)):
    assert len(np.unique(np.asarray(quantized[:, dim]))) == levels
  assert int(fsq.codes_to_indices(quantized).max()) < fsq.num_codes


def test_fsq_gradient_passes_straight_through():
  """Only the rounding is skipped backward: the gradient is the bounding tanh's,
  half * (1 - tanh^2(z + shift)) / (levels // 2) per dimension, times the upstream gradient."""
  levels = np.array([8.0, 5.0])
  fsq = FSQ(levels.astype(int))
  z = jnp.array([[0.1, -0.3], [1.7, 0.9], [-2.5, 0.0]])
  upstream = jnp.array([1.0, -2.0])
  grad = jax.grad(lambda z: jnp.sum(fsq.quantize(z) * upstream))(z)
  half = (levels - 1) * (1 + 1e-3) / 2
  shift = np.arctanh(np.where(levels % 2 == 0, 0.5, 0.0) / half)
  want = np.asarray(upstream) * half * (1 - np.tanh(np.asarray(z) + shift) ** 2) / (levels // 2)
  np.testing.assert_allclose(grad, want, rtol=1e-5)


def test_tokenizer_shapes_and_detokenize():
  model = VideoTokenizer(channels=(8, 16), levels=(5, 5, 5))
  video = jax.random.normal(jax.random.key(0), (2, 3, 32, 32, 3))
  params = model.init(jax.random.key(1), video)
  recon, tokens = model.apply(params, video)
  assert recon.shape == video.shape
  assert tokens.shape == (2, 3, 8, 8) and tokens.dtype == jnp.int32
  assert int(tokens.max()) < 125
  np.testing.assert_allclose(model.apply(params, tokens, method=model.detokenize), recon,
                             atol=1e-5)



def test_foreground_weight_makes_object_errors_cost_more():
  """The same error costs more on the object than on the plain background with the weight,
  and the same without it."""
  from vidlang_jax.models.video_tokenizer import reconstruction_loss
  from vidlang_jax.pixels import MEAN_RGB, STD_RGB

  pixels = np.zeros((1, 1, 8, 8, 3), np.float32)
  pixels[:, :, 2:4, 2:4] = 1.0  # a white 2x2 object on black
  video = jnp.asarray((pixels - np.asarray(MEAN_RGB)) / np.asarray(STD_RGB))
  on_object, on_background = np.zeros_like(pixels), np.zeros_like(pixels)
  on_object[:, :, 2:4, 2:4] = 0.5
  on_background[:, :, 5:7, 5:7] = 0.5
  plain = [float(reconstruction_loss(video + e, video)) for e in (on_object, on_background)]
  assert plain[0] == plain[1] > 0
  weighted = [float(reconstruction_loss(video + e, video, 10.0))
              for e in (on_object, on_background)]
  assert weighted[0] > 4 * weighted[1]
