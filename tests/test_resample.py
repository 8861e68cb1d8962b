"""Fitting checkpoint params to another model size: identity on equal shapes, position
embeddings over time and a square grid, a 2D patch kernel inflated to a tubelet."""

import einops
import numpy as np
import pytest

from vidlang_jax.ops import resample


def test_identity_when_shapes_match():
  table = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
  for kind in resample.KINDS:
    assert resample.fit(kind, table, table.shape) is table


def test_linear_and_grid_keep_a_linear_ramp():
  ramp = np.linspace(0, 1, 4)[:, None] * np.ones((1, 3))
  np.testing.assert_allclose(resample.resample_linear(ramp, 7)[[0, -1]], ramp[[0, -1]])
  # A grid whose embedding is x + 10 y stays one (away from the clamped border) at 8x8.
  y, x = np.meshgrid(np.arange(4.0), np.arange(4.0), indexing='ij')
  table = (x + 10 * y).reshape(16, 1)
  grid = resample.resample_grid(table, 64).reshape(8, 8)
  np.testing.assert_allclose(np.diff(grid[3, 1:-1]), 0.5, atol=1e-5)
  np.testing.assert_allclose(np.diff(grid[1:-1, 3]), 5.0, atol=1e-5)
  with pytest.raises(ValueError, match='square grids'):
    resample.resample_grid(table, 32)


@pytest.mark.parametrize('how', ['central', 'average'])
def test_inflated_kernel_on_a_static_clip_equals_the_image_kernel(how):
  """Tubelets of a clip whose frames are all one image: `average` gives the image model's
  patch embedding; `central` too (the middle frame is that image)."""
  rng = np.random.default_rng(1)
  image_kernel = rng.normal(size=(4 * 4 * 3, 5))
  frame = rng.normal(size=(8, 8, 3))
  clip = np.stack([frame] * 2)  # [time, height, width, channels]
  patches = einops.rearrange(frame, '(h ph) (w pw) c -> (h w) (ph pw c)', ph=4, pw=4)
  tubelets = einops.rearrange(clip, '(t pt) (h ph) (w pw) c -> (t h w) (pt ph pw c)',
                              pt=2, ph=4, pw=4)
  kernel = resample.inflate_patch_kernel(image_kernel, 2 * 48, how)
  np.testing.assert_allclose(tubelets @ kernel, patches @ image_kernel, atol=1e-10)
  if how == 'central':  # all of it on one frame (frame 1 of 2), nothing on the other
    assert not kernel[:48].any() and np.array_equal(kernel[48:], image_kernel)
  with pytest.raises(ValueError, match='whole number of frames'):
    resample.inflate_patch_kernel(image_kernel, 50)
