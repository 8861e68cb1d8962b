"""Token masks for masked video modeling (VideoMAE, VideoMAE V2, text-guided masking).

Tokens are the tubelets of a `(t, h, w)` grid, flattened t-major: index = ti*h*w + hi*w + wi,
as `einops.rearrange(x, 'b t h w d -> b (t h w) d')` does. Every generator masks the same
number of tokens in every sample, fixed in Python from the grid and the ratio, so all shapes
are static and the functions work under `jit`, `vmap` and with batch-sharded inputs.

Every generator returns a `Mask`; `keep_indices` and `masked_indices` are sorted ascending and
`restore_indices` undoes the shuffle `concat(keep_indices, masked_indices)`, so
`restore_tokens(gather_tokens(x, keep_indices), mask_token, restore_indices)` puts the visible
tokens back in place and `mask_token` everywhere else (the MAE decoder input).

Counts use Python's `round` (half to even): `round(2.5) == 2`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vidlang_jax import registry

Grid = tuple[int, int, int]  # (t, h, w) tubelets.


class Mask(NamedTuple):
  keep_indices: jax.Array  # int32 [batch, num_visible], ascending.
  masked_indices: jax.Array  # int32 [batch, num_masked], ascending.
  restore_indices: jax.Array  # int32 [batch, num_tokens], argsort of concat(keep, masked).
  mask: jax.Array  # bool [batch, num_tokens]; True = hidden from the encoder.


def _num_tokens(grid: Grid) -> int:
  if len(grid) != 3 or any(int(g) < 1 for g in grid):
    raise ValueError(f'grid must be three positive sizes (t, h, w), got {grid}.')
  t, h, w = (int(g) for g in grid)
  return t * h * w


def _check_ratio(ratio: float) -> None:
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f'Mask ratio must be in [0, 1), got {ratio}.')


def _ranks(x: jax.Array) -> jax.Array:
  """Position of each entry in an ascending sort of the last axis (ties: lower index first),
  so `ranks < k` picks exactly k entries per row whatever the values."""
  return jnp.argsort(jnp.argsort(x, axis=-1, stable=True), axis=-1, stable=True)


def from_boolean(mask: jax.Array, num_visible: int) -> Mask:
  """A `Mask` from a `[batch, N]` boolean mask with exactly `N - num_visible` True per row.

  The count is the caller's promise (it cannot be checked under `jit`); a wrong one gives
  index arrays that mix kept and masked tokens.
  """
  mask = jnp.asarray(mask, bool)
  # Stable sort of 0 (kept) before 1 (masked): kept indices ascending, then masked ascending.
  order = jnp.argsort(mask.astype(jnp.int32), axis=-1, stable=True).astype(jnp.int32)
  restore = jnp.argsort(order, axis=-1).astype(jnp.int32)
  return Mask(
      keep_indices=order[:, :num_visible],
      masked_indices=order[:, num_visible:],
      restore_indices=restore,
      mask=mask,
  )


def random_mask(rng: jax.Array, batch: int, grid: Grid, ratio: float) -> Mask:
  """Uniform random masking, independent per sample (MAE): round(ratio * N) tokens masked."""
  _check_ratio(ratio)
  n = _num_tokens(grid)
  num_masked = round(ratio * n)
  if num_masked == n:
    raise ValueError(f'ratio {ratio} masks all {n} tokens of grid {grid}.')
  noise = jax.random.uniform(rng, (batch, n))  # [batch, N]
  # The num_masked tokens with the largest noise are hidden.
  mask = _ranks(noise) >= n - num_masked
  return from_boolean(mask, n - num_masked)


def tube_mask(rng: jax.Array, batch: int, grid: Grid, ratio: float) -> Mask:
  """VideoMAE tube masking: one random spatial mask per sample, the same in every frame,
  so a masked patch cannot be copied from its neighbour in time.

  Each frame masks round(ratio * h * w) patches, so t * round(ratio * h * w) tokens are
  masked in all (which can differ from round(ratio * t * h * w)).
  """
  _check_ratio(ratio)
  t, h, w = grid
  n = _num_tokens(grid)
  per_frame = round(ratio * h * w)
  if per_frame == h * w:
    raise ValueError(f'ratio {ratio} masks all {h * w} patches of an {h}x{w} frame.')
  noise = jax.random.uniform(rng, (batch, h * w))  # [batch, h*w]
  spatial = _ranks(noise) >= h * w - per_frame  # [batch, h*w]
  mask = jnp.broadcast_to(spatial[:, None, :], (batch, t, h * w)).reshape(batch, n)
  return from_boolean(mask, t * (h * w - per_frame))


def running_cell_mask(
    batch: int, grid: Grid, ratio: float, offset: int | jax.Array = 0,
    rng: jax.Array | None = None,
) -> Mask:
  """VideoMAE V2 running-cell masking (used for the decoder): cheap, and over a few frames
  every spatial position is seen.

  The frame is tiled by 2x2 cells; position p = 2 * (hi % 2) + (wi % 2) inside its cell.
  With m = round(4 * ratio) masked positions per cell (1 <= m <= 3), token (ti, hi, wi) is
  masked iff (p + ti + offset + 1) % 4 < m: a queue of m ones and 4 - m zeros that rotates by
  one position per frame. This is exactly `RunningCellMaskingGenerator.all_mask_maps[offset]`
  of the V2 code (its `run_cell` advances the pointer before the first frame, hence + 1);
  V2 draws `offset` uniformly from 0..3 per sample, as here when `rng` is given; otherwise it
  is an int or an int `[batch]` array. Every cell position is kept in some frame once t >= 4.
  Masked tokens: N * m / 4.
  """
  t, h, w = grid
  n = _num_tokens(grid)
  if h % 2 or w % 2:
    raise ValueError(f'running_cell_mask needs even h and w, got h={h}, w={w}.')
  per_cell = round(4 * ratio)
  if not 1 <= per_cell <= 3:
    raise ValueError(f'ratio {ratio} masks {per_cell} of 4 cell positions; need 1 to 3.')
  if rng is not None:
    offset = jax.random.randint(rng, (batch,), 0, 4)
  offset = jnp.broadcast_to(jnp.asarray(offset, jnp.int32), (batch,))  # [batch]
  ti = jnp.arange(t, dtype=jnp.int32)[:, None, None]  # [t, 1, 1]
  cell = (2 * (jnp.arange(h, dtype=jnp.int32)[:, None] % 2)
          + jnp.arange(w, dtype=jnp.int32)[None, :] % 2)  # [h, w]
  phase = (cell[None] + ti)[None] + offset[:, None, None, None] + 1  # [batch, t, h, w]
  mask = (phase % 4 < per_cell).reshape(batch, n)
  return from_boolean(mask, n - n * per_cell // 4)


def text_guided_mask(
    patch_features: jax.Array,
    text_embedding: jax.Array,
    ratio: float,
    *,
    rng: jax.Array | None = None,
    random_fraction: float = 0.0,
) -> Mask:
  """Text-guided masking (Fan et al., Text-Guided Video Masked Autoencoder): hide the patches
  most similar to the caption, which are the ones the text explains, so reconstruction
  cannot lean on the easy ones.

  Args:
    patch_features: `[batch, N, dim]` from a frozen or EMA video tower (no gradient flows).
    text_embedding: `[batch, dim]` in the same space.
    ratio: k = round(ratio * N) patches are masked.
    rng: needed when random_fraction > 0.
    random_fraction: r = round(random_fraction * k) of the k are swapped: the k - r most
      caption-similar patches are masked plus r drawn uniformly from the N - k patches
      outside the top k, so exactly r masked patches are not among the top k.

  Ties in similarity go to the lower token index. Cosine similarity, so feature norms do
  not matter.
  """
  _check_ratio(ratio)
  batch, n, _ = patch_features.shape
  k = round(ratio * n)
  if k == n:
    raise ValueError(f'ratio {ratio} masks all {n} tokens.')
  if not 0.0 <= random_fraction <= 1.0:
    raise ValueError(f'random_fraction must be in [0, 1], got {random_fraction}.')
  num_random = round(random_fraction * k)
  if num_random > n - k:
    raise ValueError(f'random_fraction {random_fraction} swaps {num_random} of {k} masked '
                     f'patches but only {n - k} others exist.')
  if num_random and rng is None:
    raise ValueError('text_guided_mask needs rng when random_fraction > 0.')

  feats = jax.lax.stop_gradient(patch_features).astype(jnp.float32)
  text = jax.lax.stop_gradient(text_embedding).astype(jnp.float32)
  feats = feats * jax.lax.rsqrt(jnp.sum(feats * feats, -1, keepdims=True) + 1e-12)
  text = text * jax.lax.rsqrt(jnp.sum(text * text, -1, keepdims=True) + 1e-12)
  sim = jnp.einsum('bnd,bd->bn', feats, text)  # [batch, N]
  sim_rank = _ranks(-sim)  # 0 = most similar.
  if num_random:
    noise = jax.random.uniform(rng, (batch, n))  # [0, 1)
    # Priority: the top k - r first (2), then the non-top-k by noise, the dropped ones last.
    priority = jnp.where(sim_rank < k - num_random, 2.0,
                         jnp.where(sim_rank >= k, noise, -1.0))
    mask = _ranks(-priority) < k
  else:
    mask = sim_rank < k
  return from_boolean(jax.lax.stop_gradient(mask), n - k)


def gather_tokens(x: jax.Array, indices: jax.Array) -> jax.Array:
  """`[batch, N, d]`, `[batch, n]` -> `[batch, n, d]` (e.g. the visible tokens)."""
  return jnp.take_along_axis(x, indices[..., None].astype(jnp.int32), axis=1)


def restore_tokens(
    visible: jax.Array, mask_token: jax.Array, restore_indices: jax.Array
) -> jax.Array:
  """`[batch, n_visible, d]` + mask_token `[d]` -> `[batch, N, d]` in the original order,
  with `mask_token` at the masked positions (MAE decoder input)."""
  batch, num_visible, d = visible.shape
  n = restore_indices.shape[1]
  fill = jnp.broadcast_to(jnp.asarray(mask_token, visible.dtype).reshape(1, 1, d),
                          (batch, n - num_visible, d))
  shuffled = jnp.concatenate([visible, fill], axis=1)  # [batch, N, d]
  return gather_tokens(shuffled, restore_indices)


registry.register('mask.random')(random_mask)
registry.register('mask.tube')(tube_mask)
registry.register('mask.running_cell')(running_cell_mask)
registry.register('mask.text_guided')(text_guided_mask)
