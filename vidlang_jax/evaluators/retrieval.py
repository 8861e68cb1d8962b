"""Zero-shot text<->video retrieval on a held-out split (recall@k, median rank)."""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from vidlang_jax import registry, sharding
from vidlang_jax.data import pipeline
from vidlang_jax.evaluators.retrieval_metrics import retrieval_metrics


def process_slice(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's contiguous share of a batch that every process holds whole."""
  count, index = jax.process_count(), jax.process_index()
  return {k: np.array_split(v, count)[index] for k, v in batch.items()}


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
class RetrievalEvaluator:
  """Embeds every clip and caption of `eval_config.split` and ranks all pairs.

  Needs a model with `encode_video` / `encode_text` (the two-tower model, or any tower pair).
  """

  def __init__(self, *, model, config: ml_collections.ConfigDict,
               eval_config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.model, self.config, self.eval_config, self.mesh = model, config, eval_config, mesh
    pipeline.tokenizer_path(config.data)  # builds the dataset (and tokenizer) if needed
    pipeline.check_split(config.data, eval_config.split, 'the evaluation split')
    self.batch_size = eval_config.get('batch_size', config.batch_size)

    def embed(params, batch):
      variables = {'params': params}
      return (model.apply(variables, batch['video'], method=model.encode_video),
              model.apply(variables, batch['text'], method=model.encode_text))

    self.embed = jax.jit(embed, out_shardings=sharding.batch_sharding(mesh, 2))

  def run(self, params: Any, *, step: int, workdir: str) -> dict[str, float]:
    del step, workdir
    video_embs, text_embs, video_ids = [], [], []
    for batch in pipeline.eval_batches(self.config.data, self.eval_config.split,
                                       self.batch_size, keys=('video_id',)):
      mask = batch.pop('mask')
      batch.pop('num_skipped')
      video_ids.extend(batch.pop('video_id')[mask])
      video, text = self.embed(params, sharding.shard_batch(process_slice(batch), self.mesh))
      video_embs.append(multihost_utils.process_allgather(video, tiled=True)[mask])
      text_embs.append(multihost_utils.process_allgather(text, tiled=True)[mask])
    video_emb, text_emb = np.concatenate(video_embs), np.concatenate(text_embs)
    first, text_to_video = group_captions(video_ids)
    similarity = text_emb @ video_emb[first].T  # [texts, videos]
    return retrieval_metrics(similarity, text_to_video=text_to_video)
