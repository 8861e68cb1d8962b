"""Pixel normalisation shared by the input pipeline, the models and the evaluators.

A leaf module (numpy and jax.numpy only), so that a model can map its inputs back to pixels
without importing the data pipeline (grain, TFDS, PyAV).
"""

from __future__ import annotations

import einops
import jax.numpy as jnp
import numpy as np

# ImageNet-style per-channel statistics on [0, 1] pixels.
MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32)
STD_RGB = np.array([0.229, 0.224, 0.225], np.float32)


def normalize(pixels: np.ndarray) -> np.ndarray:
  """[0, 1] pixels `[..., 3]` -> the models' input normalisation (float32, numpy)."""
  return ((pixels - MEAN_RGB) / STD_RGB).astype(np.float32)


def pixels_01(video):
  """Undoes `normalize`: pixels back in [0, 1] (jax or numpy arrays `[..., 3]`)."""
  return video * jnp.asarray(STD_RGB) + jnp.asarray(MEAN_RGB)


def psnr(mse):
  """Peak signal-to-noise ratio in dB of a mean squared error of pixels in [0, 1]."""
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


def psnr_01(reconstruction, video):
  """Per-clip PSNR of `[batch, time, height, width, 3]` clips in the models' normalisation,
  both mapped back to [0, 1] and clipped there."""
  err = jnp.square(jnp.clip(pixels_01(reconstruction), 0, 1) - jnp.clip(pixels_01(video), 0, 1))
  return psnr(jnp.mean(err, axis=(1, 2, 3, 4)))


def image_grid(*rows: np.ndarray) -> np.ndarray:
  """Clips `[examples, time, height, width, 3]` in [0, 1] -> one uint8 image: per example one
  row per argument (e.g. original / what the encoder saw / reconstruction), one column per
  frame, 1-pixel gaps."""
  grid = np.stack(rows, axis=1)  # [examples, rows, time, height, width, 3]
  grid = np.pad(grid, ((0, 0), (0, 0), (0, 0), (0, 1), (0, 1), (0, 0)), constant_values=1.0)
  grid = einops.rearrange(grid, 'e r t h w c -> (e r h) (t w) c')
  return (np.clip(grid, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
