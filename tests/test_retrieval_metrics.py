"""Retrieval metrics on hand-built similarity matrices, and against a brute-force loop."""

import time

import numpy as np
import pytest

from vidlang_jax.evaluators.retrieval_metrics import retrieval_metrics


def brute_force_ranks(sim, t2v):
  """Loop version of the documented definition: ties count against the model."""
  t2v_ranks = [1 + sum(sim[i, j] >= sim[i, g] for j in range(sim.shape[1]) if j != g)
               for i, g in enumerate(t2v)]
  v2t_ranks = []
  for v in range(sim.shape[1]):
    own = [i for i in range(len(t2v)) if t2v[i] == v]
    best = max(sim[i, v] for i in own)
    v2t_ranks.append(1 + sum(sim[i, v] >= best for i in range(len(t2v)) if i not in own))
  return np.array(t2v_ranks), np.array(v2t_ranks)


def test_identity_is_perfect():
  m = retrieval_metrics(np.eye(20))
  for k in ('t2v_r1', 't2v_r5', 't2v_r10', 'v2t_r1', 'v2t_r5', 'v2t_r10'):
    assert m[k] == 1.0, k
  assert m['t2v_median_rank'] == m['v2t_median_rank'] == 1.0
  assert m['t2v_mean_rank'] == m['v2t_mean_rank'] == 1.0
  assert m['chance_r1'] == pytest.approx(1 / 20)


def test_shifted_permutation_has_known_ranks():
  """Text i likes video i+7 best, then i+8, ...: its own video comes 4th of 10 (both ways)."""
  n, shift = 10, 7
  i, j = np.meshgrid(np.arange(n), np.arange(n), indexing='ij')
  sim = -((j - i - shift) % n).astype(float)
  m = retrieval_metrics(sim, ks=(1, 3, 4, 5))
  for d in ('t2v', 'v2t'):
    assert m[f'{d}_r1'] == 0.0 and m[f'{d}_r3'] == 0.0
    assert m[f'{d}_r4'] == 1.0 and m[f'{d}_r5'] == 1.0
    assert m[f'{d}_median_rank'] == 4.0 and m[f'{d}_mean_rank'] == 4.0


def test_hand_computed_4x4():
  sim = np.array([
      [0.9, 0.1, 0.35, 0.3],
      [0.8, 0.2, 0.7, 0.1],
      [0.1, 0.6, 0.4, 0.9],
      [0.3, 0.5, 0.2, 0.3],  # Row 3 ties its correct 0.3 with video 0: counts against it.
  ])
  # t2v ranks [1, 3, 3, 3]; v2t ranks [1, 3, 2, 3].
  m = retrieval_metrics(sim, ks=(1, 2, 3))
  assert (m['t2v_r1'], m['t2v_r2'], m['t2v_r3']) == (0.25, 0.25, 1.0)
  assert (m['v2t_r1'], m['v2t_r2'], m['v2t_r3']) == (0.25, 0.5, 1.0)
  assert m['t2v_median_rank'] == 3.0 and m['t2v_mean_rank'] == 2.5
  assert m['v2t_median_rank'] == 2.5 and m['v2t_mean_rank'] == 2.25


def test_constant_matrix_scores_worst_not_best():
  m = retrieval_metrics(np.full((8, 8), 0.5))
  assert m['t2v_r1'] == m['v2t_r1'] == 0.0 and m['t2v_r5'] == 0.0
  assert m['t2v_r10'] == 1.0
  assert m['t2v_median_rank'] == m['v2t_median_rank'] == 8.0


def test_several_captions_per_video():
  sim = np.array([
      [0.9, 0.1, 0.2],
      [0.3, 0.8, 0.1],
      [0.5, 0.4, 0.6],
      [0.1, 0.7, 0.2],
      [0.2, 0.3, 0.1],
      [0.6, 0.5, 0.55],
  ])
  t2v = np.array([0, 0, 1, 1, 2, 2])
  # t2v ranks [1, 2, 3, 1, 3, 2]; v2t: best own caption vs other videos' captions -> [1, 2, 2].
  m = retrieval_metrics(sim, ks=(1, 2), text_to_video=t2v)
  assert m['t2v_r1'] == pytest.approx(2 / 6) and m['t2v_r2'] == pytest.approx(4 / 6)
  assert m['t2v_median_rank'] == 2.0 and m['t2v_mean_rank'] == 2.0
  assert m['v2t_r1'] == pytest.approx(1 / 3) and m['v2t_r2'] == 1.0
  assert m['v2t_median_rank'] == 2.0 and m['v2t_mean_rank'] == pytest.approx(5 / 3)
  assert m['chance_r1'] == pytest.approx(1 / 3)


@pytest.mark.parametrize('captions_per_video', [1, 3])
def test_matches_brute_force_with_ties(captions_per_video):
  rng = np.random.default_rng(0)
  videos = 12
  t2v = rng.permutation(np.repeat(np.arange(videos), captions_per_video))
  sim = rng.integers(0, 4, size=(len(t2v), videos)).astype(float)  # Plenty of ties.
  t2v_ranks, v2t_ranks = brute_force_ranks(sim, t2v)
  m = retrieval_metrics(sim, ks=(1, 5), text_to_video=t2v)
  for d, ranks in (('t2v', t2v_ranks), ('v2t', v2t_ranks)):
    assert m[f'{d}_r1'] == pytest.approx(np.mean(ranks <= 1))
    assert m[f'{d}_r5'] == pytest.approx(np.mean(ranks <= 5))
    assert m[f'{d}_median_rank'] == np.median(ranks)
    assert m[f'{d}_mean_rank'] == pytest.approx(np.mean(ranks))


def test_invalid_inputs_raise():
  with pytest.raises(ValueError, match='text_to_video'):
    retrieval_metrics(np.zeros((4, 3)))
  with pytest.raises(ValueError, match='at least one caption'):
    retrieval_metrics(np.zeros((4, 3)), text_to_video=np.array([0, 0, 1, 1]))
  with pytest.raises(ValueError, match='NaN'):
    retrieval_metrics(np.array([[1.0, np.nan], [0.0, 1.0]]))


def test_1000x1000_is_fast():
  sim = np.random.default_rng(0).normal(size=(1000, 1000)) + 5 * np.eye(1000)
  start = time.perf_counter()
  m = retrieval_metrics(sim)
  assert time.perf_counter() - start < 0.5
  assert 0.5 < m['t2v_r1'] <= m['t2v_r10'] <= 1.0


def test_group_captions_of_the_same_video():
  from vidlang_jax.evaluators.retrieval import group_captions

  first, text_to_video = group_captions([b'b.mp4', b'a.mp4', b'b.mp4#1', b'c#2.mp4', b'a.mp4#1'])
  np.testing.assert_array_equal(first, [0, 1, 3])  # b, a, c#2 in order of appearance
  np.testing.assert_array_equal(text_to_video, [0, 1, 0, 2, 1])
  first, text_to_video = group_captions(['test/000001', 'test/000002'])
  np.testing.assert_array_equal(first, [0, 1])
  np.testing.assert_array_equal(text_to_video, [0, 1])
