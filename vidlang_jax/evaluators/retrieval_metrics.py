"""Text<->video retrieval metrics (R@k, median and mean rank) from a similarity matrix.

Ranks are 1-based and ties count against the model: the rank of the correct item is
1 + the number of *wrong* candidates scoring >= it. A constant similarity matrix thus gives
rank N for every query (R@1 = 0), never a flattering rank 1 from a stable sort.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _ranks_t2v(sim: np.ndarray, t2v: np.ndarray) -> np.ndarray:
  """[texts] rank of each text's video among all videos."""
  correct = sim[np.arange(len(t2v)), t2v]  # [texts]
  return np.sum(sim >= correct[:, None], axis=1)  # Counts the correct video itself: that is the 1.


def _ranks_v2t(sim: np.ndarray, t2v: np.ndarray) -> np.ndarray:
  """[videos] rank of each video's best-scoring caption among the captions of other videos."""
  num_texts, num_videos = sim.shape
  rows = np.arange(num_texts)
  best = np.full(num_videos, -np.inf)
  np.maximum.at(best, t2v, sim[rows, t2v])  # [videos] best caption score per video.
  wrong_ge = sim >= best[None, :]  # [texts, videos]
  wrong_ge[rows, t2v] = False  # A video's own captions never count against it.
  return 1 + np.sum(wrong_ge, axis=0)


def retrieval_metrics(
    similarity: np.ndarray, ks: Sequence[int] = (1, 5, 10), text_to_video: np.ndarray | None = None
) -> dict[str, float]:
  """Recall@k, median and mean ranks in both directions.

  Args:
    similarity: [texts, videos] scores, higher is better.
    ks: the k of the R@k metrics.
    text_to_video: [texts] index of each caption's video (several captions per video,
      MSR-VTT style). Default: the diagonal, for a square matrix. Text->video ranks each
      caption's video; video->text ranks the best-ranked of the video's captions.

  Returns:
    `t2v_r{k}`, `v2t_r{k}` (fractions), `{t2v,v2t}_{median,mean}_rank` (1-based) and
    `chance_r1` = 1 / number of videos (t2v R@1 of a random ranking).
  """
  sim = np.asarray(similarity, dtype=np.float64)
  if sim.ndim != 2 or not sim.size:
    raise ValueError(f'similarity must be a non-empty [texts, videos] matrix, got {sim.shape}.')
  if np.isnan(sim).any():
    raise ValueError('similarity contains NaN: ranks would be meaningless.')
  num_texts, num_videos = sim.shape
  if text_to_video is None:
    if num_texts != num_videos:
      raise ValueError(f'A non-square similarity {sim.shape} needs text_to_video.')
    t2v = np.arange(num_texts)
  else:
    t2v = np.asarray(text_to_video, dtype=np.int64)
    if t2v.shape != (num_texts,) or t2v.min() < 0 or t2v.max() >= num_videos:
      raise ValueError(f'text_to_video must be [{num_texts}] indices < {num_videos}.')
    if len(np.unique(t2v)) != num_videos:
      raise ValueError('Every video needs at least one caption in text_to_video.')

  out = {}
  for name, ranks in (('t2v', _ranks_t2v(sim, t2v)), ('v2t', _ranks_v2t(sim, t2v))):
    for k in ks:
      out[f'{name}_r{k}'] = float(np.mean(ranks <= k))
    out[f'{name}_median_rank'] = float(np.median(ranks))
    out[f'{name}_mean_rank'] = float(np.mean(ranks))
  out['chance_r1'] = 1.0 / num_videos
  return out
