"""Mask generators: exact counts, index bookkeeping, known patterns, jit / vmap / sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidlang_jax import masking, registry, sharding

GRID = (4, 4, 4)  # (t, h, w) -> N = 64.
N = 64


def _text_case(seed=0, batch=2, n=N, dim=16):
  """Random features and captions, for the generic checks."""
  rng = np.random.default_rng(seed)
  feats = rng.normal(size=(batch, n, dim)).astype(np.float32)
  text = rng.normal(size=(batch, dim)).astype(np.float32)
  return feats, text


def _all_kinds(batch=3):
  """(name, Mask, expected number masked per sample) for every generator."""
  feats, text = _text_case(batch=batch)
  key = jax.random.key(0)
  return [
      ('random', masking.random_mask(key, batch, GRID, 0.75), 48),
      ('tube', masking.tube_mask(key, batch, GRID, 0.9), 4 * round(0.9 * 16)),
      ('running_cell', masking.running_cell_mask(batch, GRID, 0.75), 48),
      ('running_cell_offsets', masking.running_cell_mask(batch, GRID, 0.5, jnp.arange(3)), 32),
      ('text_guided', masking.text_guided_mask(feats, text, 0.5), 32),
      ('text_guided_random', masking.text_guided_mask(
          feats, text, 0.5, rng=key, random_fraction=0.25), 32),
  ]


def _check_consistent(m, num_masked):
  keep, masked = np.asarray(m.keep_indices), np.asarray(m.masked_indices)
  restore, mask = np.asarray(m.restore_indices), np.asarray(m.mask)
  batch, n = mask.shape
  assert mask.dtype == bool
  assert keep.dtype == masked.dtype == restore.dtype == np.int32
  assert keep.shape == (batch, n - num_masked) and masked.shape == (batch, num_masked)
  np.testing.assert_array_equal(mask.sum(1), num_masked)
  for b in range(batch):
    assert np.all(np.diff(keep[b]) > 0) and np.all(np.diff(masked[b]) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([keep[b], masked[b]])), np.arange(n))
    assert not mask[b, keep[b]].any() and mask[b, masked[b]].all()
    np.testing.assert_array_equal(np.concatenate([keep[b], masked[b]])[restore[b]], np.arange(n))


@pytest.mark.parametrize('index', range(6))
def test_counts_indices_and_restore(index):
  name, m, num_masked = _all_kinds()[index]
  _check_consistent(m, num_masked)
  # Visible tokens + mask tokens, restored, equal the input with masked positions replaced.
  x = jnp.asarray(np.random.default_rng(1).normal(size=(3, N, 5)), jnp.float32)
  token = jnp.full((5,), -7.0)
  visible = masking.gather_tokens(x, m.keep_indices)
  assert visible.shape == (3, N - num_masked, 5), name
  restored = masking.restore_tokens(visible, token, m.restore_indices)
  expected = jnp.where(m.mask[..., None], token, x)
  np.testing.assert_array_equal(restored, expected)


def test_random_masks_differ_per_sample_and_key():
  m = masking.random_mask(jax.random.key(0), 4, GRID, 0.75)
  other = masking.random_mask(jax.random.key(1), 4, GRID, 0.75)
  assert len({tuple(np.asarray(row)) for row in m.keep_indices}) == 4
  assert not np.array_equal(m.mask, other.mask)


def test_tube_mask_constant_over_time():
  t, h, w = 8, 6, 4
  m = masking.tube_mask(jax.random.key(3), 5, (t, h, w), 0.9)
  per_frame = round(0.9 * h * w)
  grid_mask = np.asarray(m.mask).reshape(5, t, h, w)
  np.testing.assert_array_equal(grid_mask, np.broadcast_to(grid_mask[:, :1], grid_mask.shape))
  np.testing.assert_array_equal(grid_mask[:, 0].sum((1, 2)), per_frame)
  _check_consistent(m, t * per_frame)
  # t * round(0.9 * 24) = 8 * 22 = 176, not round(0.9 * 192) = 173.
  assert m.keep_indices.shape == (5, 16)


def test_running_cell_matches_hand_written_pattern():
  # Masked (1) positions of the 2x2 cell in frames 0..3 for ratio 0.5, offset 0 (VideoMAE V2:
  # queue [1, 1, 0, 0] read from pointer ti + 1).
  cells = [[[1, 0], [0, 1]], [[0, 0], [1, 1]], [[0, 1], [1, 0]], [[1, 1], [0, 0]]]
  expected = np.stack([np.tile(np.array(c, bool), (2, 2)) for c in cells])  # [t, h, w]
  np.testing.assert_array_equal(
      expected[0], [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]])
  m = masking.running_cell_mask(2, (4, 4, 4), 0.5)
  got = np.asarray(m.mask).reshape(2, 4, 4, 4)
  np.testing.assert_array_equal(got[0], expected)
  np.testing.assert_array_equal(got[1], expected)
  assert not got.all(axis=1).any()  # Every spatial position is kept in some frame.
  _check_consistent(m, 32)
  # An offset of 1 starts one frame later in the same cycle.
  shifted = np.asarray(masking.running_cell_mask(1, (4, 4, 4), 0.5, offset=1).mask)
  np.testing.assert_array_equal(shifted.reshape(4, 4, 4)[:3], expected[1:])


@pytest.mark.parametrize('ratio, per_cell', [(0.25, 1), (0.75, 3)])
def test_running_cell_other_ratios(ratio, per_cell):
  m = masking.running_cell_mask(2, (5, 2, 6), ratio, offset=jnp.array([0, 2]))
  got = np.asarray(m.mask).reshape(2, 5, 2, 6)
  # Per frame, per 2x2 cell: exactly per_cell masked. [batch, t, cell_h, 2, cell_w, 2].
  per_cells = got.reshape(2, 5, 1, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 5, 3, 4)
  np.testing.assert_array_equal(per_cells.sum(-1), per_cell)
  assert not got[:, :4].all(axis=1).any()
  _check_consistent(m, 60 * per_cell // 4)


def test_running_cell_rejects_odd_grid_and_bad_ratio():
  with pytest.raises(ValueError, match='h=3, w=4'):
    masking.running_cell_mask(1, (2, 3, 4), 0.5)
  with pytest.raises(ValueError, match='need 1 to 3'):
    masking.running_cell_mask(1, (2, 4, 4), 0.9)


def _hand_built(dim=8, n=32):
  """Text = e0. Patches at `top` equal the text (scaled, cosine 1); a high-norm distractor
  has cosine 0.3; the rest are orthogonal to the text."""
  text = np.zeros(dim, np.float32)
  text[0] = 1.0
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(n, dim)).astype(np.float32)
  feats[:, 0] = 0.0
  top = [3, 9, 17, 30]
  feats[top] = text * np.array([[0.5], [2.0], [1.0], [0.1]], np.float32)
  feats[20] = 100.0 * (0.3 * text + np.sqrt(1 - 0.09) * np.eye(dim, dtype=np.float32)[1])
  return feats, text, top


def test_text_guided_masks_most_caption_similar_patches():
  feats, text, top = _hand_built()
  m = masking.text_guided_mask(feats[None], text[None], 4 / 32)
  np.testing.assert_array_equal(m.masked_indices[0], top)
  m = masking.text_guided_mask(feats[None], text[None], 5 / 32)
  np.testing.assert_array_equal(m.masked_indices[0], sorted(top + [20]))
  _check_consistent(m, 5)


def test_text_guided_random_fraction_swaps_exact_number():
  # Graded cosines: the 8 most similar are the top; r = round(0.5 * 8) = 4 of them swapped.
  dim, n, k = 8, 32, 8
  text = np.eye(dim, dtype=np.float32)[0]
  cos = np.linspace(-0.9, 0.9, n)[np.random.default_rng(2).permutation(n)]
  feats = (cos[:, None] * text + np.sqrt(1 - cos[:, None] ** 2) * np.eye(dim)[1]).astype(
      np.float32)
  order = np.argsort(-cos)
  top_k, top_kept = set(order[:k]), set(order[:k - 4])
  picks = set()
  for seed in range(6):
    m = masking.text_guided_mask(feats[None], text[None], k / n, rng=jax.random.key(seed),
                                 random_fraction=0.5)
    masked = set(np.asarray(m.masked_indices[0]).tolist())
    _check_consistent(m, k)
    assert top_kept <= masked
    assert len(masked - top_k) == 4 and len(masked & top_k) == 4
    picks |= masked - top_k
  assert len(picks) > 4  # The random ones change with the key.
  with pytest.raises(ValueError, match='needs rng'):
    masking.text_guided_mask(feats[None], text[None], k / n, random_fraction=0.5)


def test_text_guided_blocks_gradient_through_selection():
  feats, text, _ = _hand_built()

  def loss(f):
    m = masking.text_guided_mask(f[None], text[None], 4 / 32)
    return masking.gather_tokens(f[None], m.keep_indices).sum()

  grad = jax.grad(loss)(jnp.asarray(feats))
  expected = np.ones_like(feats)
  expected[[3, 9, 17, 30]] = 0.0
  np.testing.assert_array_equal(grad, expected)


def test_jit_and_vmap_over_rngs():
  keys = jax.random.split(jax.random.key(5), 3)
  for fn in (masking.random_mask, masking.tube_mask):
    batched = jax.jit(jax.vmap(lambda k, fn=fn: fn(k, 2, GRID, 0.75)))(keys)
    assert batched.keep_indices.shape[:2] == (3, 2)
    for i in range(3):
      single = fn(keys[i], 2, GRID, 0.75)
      for got, want in zip(batched, single):
        np.testing.assert_array_equal(got[i], want)
  feats, text = _text_case(batch=2)
  tg = jax.jit(jax.vmap(lambda k: masking.text_guided_mask(
      feats, text, 0.5, rng=k, random_fraction=0.25)))(keys)
  for i in range(3):
    want = masking.text_guided_mask(feats, text, 0.5, rng=keys[i], random_fraction=0.25)
    np.testing.assert_array_equal(tg.mask[i], want.mask)
  rc = jax.jit(lambda o: masking.running_cell_mask(4, GRID, 0.5, o))(jnp.arange(4))
  np.testing.assert_array_equal(rc.mask, np.stack(
      [masking.running_cell_mask(1, GRID, 0.5, i).mask[0] for i in range(4)]))


def test_sharded_inputs_match_unsharded():
  mesh = sharding.make_mesh(dict(data=8))
  feats, text = _text_case(batch=8, dim=16)
  key = jax.random.key(7)
  fn = jax.jit(lambda f, t, k: masking.text_guided_mask(f, t, 0.5, rng=k, random_fraction=0.5))
  want = fn(feats, text, key)
  with jax.set_mesh(mesh):
    f_sh = jax.device_put(feats, sharding.batch_sharding(mesh, 3))
    t_sh = jax.device_put(text, sharding.batch_sharding(mesh, 2))
    got = fn(f_sh, t_sh, key)
    m_rand = jax.jit(lambda k: masking.random_mask(k, 8, GRID, 0.75),
                     out_shardings=sharding.batch_sharding(mesh, 2))(key)
    visible = jax.jit(masking.gather_tokens)(f_sh, m_rand.keep_indices)
    restored = jax.jit(masking.restore_tokens)(visible, jnp.zeros(16), m_rand.restore_indices)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
  np.testing.assert_array_equal(m_rand.mask, masking.random_mask(key, 8, GRID, 0.75).mask)
  assert len(m_rand.keep_indices.sharding.device_set) == 8
  np.testing.assert_array_equal(restored, np.where(np.asarray(m_rand.mask)[..., None], 0, feats))


def test_registry_entries():
  assert registry.lookup('mask.random') is masking.random_mask
  m = registry.lookup('running_cell(ratio=0.5)', kind='mask')(2, GRID)
  np.testing.assert_array_equal(m.mask, masking.running_cell_mask(2, GRID, 0.5).mask)
  for name in ('mask.tube', 'mask.text_guided'):
    assert callable(registry.lookup(name))
