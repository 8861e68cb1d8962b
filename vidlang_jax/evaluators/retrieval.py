"""Zero-shot text<->video retrieval on a held-out split (recall@k, median rank)."""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np

from vidlang_jax import registry, sharding
from vidlang_jax.evaluators import common
from vidlang_jax.evaluators.retrieval_metrics import retrieval_metrics


def group_captions(video_ids: Sequence[bytes | str]) -> tuple[np.ndarray, np.ndarray]:
  """Several captions of one video (ids 'path', 'path#1', …) rank against that video once.

  Returns (index of each distinct video's first example, `[texts]` index of each caption's
  video among the distinct videos).
  """
  names = [v.decode() if isinstance(v, bytes) else str(v) for v in video_ids]
  names = [re.sub(r'#\d+$', '', name) for name in names]
  _, first, text_to_video = np.unique(names, return_index=True, return_inverse=True)
  order = np.argsort(first)  # videos in order of appearance
  rank = np.empty_like(order)
  rank[order] = np.arange(len(order))
  return first[order], rank[text_to_video]


@registry.register('evaluator.retrieval')
class RetrievalEvaluator(common.Evaluator):
  """Embeds every clip and caption of `eval_config.split` and ranks all pairs.

  Needs a model with `encode_video` / `encode_text` (the two-tower model, or any tower pair).
  """

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    model = self.model

    def embed(params, batch):
      variables = {'params': params}
      return (model.apply(variables, batch['video'], method=model.encode_video),
              model.apply(variables, batch['text'], method=model.encode_text))

    self.embed = jax.jit(embed, out_shardings=sharding.batch_sharding(self.mesh, 2))

  def run(self, params: Any, *, step: int, workdir: str) -> dict[str, float]:
    del step, workdir
    video_embs, text_embs, video_ids = [], [], []
    for (video, text), batch, mask in self.outputs(
        lambda p, b, _: self.embed(p, b), params, self.eval_config.split,
        inputs=('video', 'text'), keys=('video_id',)):
      video_ids.extend(batch['video_id'][mask])
      video_embs.append(video[mask])
      text_embs.append(text[mask])
    video_emb, text_emb = np.concatenate(video_embs), np.concatenate(text_embs)
    first, text_to_video = group_captions(video_ids)
    similarity = text_emb @ video_emb[first].T  # [texts, videos]
    return retrieval_metrics(similarity, text_to_video=text_to_video)

  @staticmethod
  def format_results(results: dict[str, Any]) -> tuple[list[str], set[str]]:
    """Recall@k and median rank, one row per direction."""
    keys = {k for k in results if k.startswith(('t2v_', 'v2t_')) or k == 'chance_r1'}
    if 't2v_r1' not in results:
      return [], set()
    lines = [f'  {"":15s} {"R@1":>6s} {"R@5":>6s} {"R@10":>6s} {"median rank":>12s}']
    for title, prefix in (('text -> video', 't2v'), ('video -> text', 'v2t')):
      lines.append(f'  {title:15s} ' + ' '.join(f'{results[f"{prefix}_r{k}"]:6.3f}'
                                                for k in (1, 5, 10))
                   + f' {results[f"{prefix}_median_rank"]:12.1f}')
    lines.append(f'  chance R@1 = {results["chance_r1"]:.4f}')
    return lines, keys
