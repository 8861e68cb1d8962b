"""Fitting a checkpoint's params to a model of another size when loading (`init_from`): position
embeddings resampled to another frame count or resolution, and a 2D patch embedding inflated to
a 3D tubelet (an image model starting a video tower, as ViViT). Each is the identity when the
shapes already match.
"""

from __future__ import annotations

import math

import jax
import numpy as np

# How `init_from.resample` names them: (regex on the target path, kind).
KINDS = ('linear', 'grid', 'inflate_central', 'inflate_average')


def resample_linear(table: np.ndarray, length: int) -> np.ndarray:
  """`[n, width]` -> `[length, width]` by linear interpolation (time position embeddings)."""
  if table.shape[0] == length:
    return table
  return np.asarray(jax.image.resize(table, (length, table.shape[1]), method='linear'))


def resample_grid(table: np.ndarray, length: int) -> np.ndarray:
  """`[h*w, width]` over a square grid -> `[length, width]` over another square grid, bilinear
  (big_vision's `resample_posemb`)."""
  if table.shape[0] == length:
    return table
  old, new = math.isqrt(table.shape[0]), math.isqrt(length)
  if old * old != table.shape[0] or new * new != length:
    raise ValueError(f'grid resampling needs square grids: {table.shape[0]} -> {length} '
                     'positions.')
  grid = table.reshape(old, old, -1)
  grid = jax.image.resize(grid, (new, new, grid.shape[-1]), method='bilinear')
  return np.asarray(grid).reshape(length, -1)


def inflate_patch_kernel(kernel: np.ndarray, rows: int, how: str = 'central') -> np.ndarray:
  """A patch embedding `[ph*pw*c, width]` -> a tubelet one `[pt*ph*pw*c, width]` (rows ordered
  `(pt ph pw c)`, as `video_vit.patchify`): `central` puts the image kernel on the middle frame
  (the tubelet starts as the image model on that frame), `average` spreads it evenly over the
  pt frames (the same output on a static clip)."""
  if kernel.shape[0] == rows:
    return kernel
  frames, remainder = divmod(rows, kernel.shape[0])
  if remainder:
    raise ValueError(f'cannot inflate a patch kernel of {kernel.shape[0]} rows to {rows}: not a '
                     'whole number of frames.')
  if how == 'average':
    return np.tile(kernel / frames, (frames, 1))
  if how != 'central':
    raise ValueError(f"inflation must be 'central' or 'average', got {how!r}.")
  inflated = np.zeros((frames,) + kernel.shape, kernel.dtype)
  inflated[frames // 2] = kernel
  return inflated.reshape(rows, kernel.shape[1])


def fit(kind: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """`value` resampled by `kind` (one of `KINDS`) to `shape`."""
  if kind == 'linear':
    out = resample_linear(value, shape[0])
  elif kind == 'grid':
    out = resample_grid(value, shape[0])
  elif kind.startswith('inflate_'):
    out = inflate_patch_kernel(value, shape[0], kind.removeprefix('inflate_'))
  else:
    raise ValueError(f'init_from.resample kind {kind!r}; expected one of {KINDS}.')
  if out.shape != tuple(shape):
    raise ValueError(f'{kind} resampling gives {out.shape}, not {tuple(shape)}.')
  return out
