"""Video tokenizer quality: reconstruction PSNR and how much of the vocabulary is used."""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image

from vidlang_jax import registry, sharding
from vidlang_jax.data import pipeline
from vidlang_jax.evaluators.reconstruction import image_grid
from vidlang_jax.evaluators.retrieval import process_slice
from vidlang_jax.models.masked_video import pixels_01
from vidlang_jax.models.video_tokenizer import psnr_01


@registry.register('evaluator.tokenizer')
class TokenizerEvaluator:
  """`tokenizer_psnr` (dB, frames in [0, 1]), `code_usage` (fraction of the vocabulary seen on
  the split) and `code_perplexity` (exp of the code distribution's entropy; the vocabulary size
  when codes are used evenly); saves `tokenizer/<step>.png` (original over reconstruction)."""

  def __init__(self, *, model, config: ml_collections.ConfigDict,
               eval_config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.config, self.eval_config, self.mesh = config, eval_config, mesh
    pipeline.tokenizer_path(config.data)
    pipeline.check_split(config.data, eval_config.split, 'evals.tokenizer.split')
    self.num_codes = math.prod(config.model.levels)
    self.batch_size = eval_config.get('batch_size', config.batch_size)

    def run(params, video):
      recon, tokens = model.apply({'params': params}, video)
      return psnr_01(recon, video), tokens, recon

    self.apply = jax.jit(run, out_shardings=sharding.batch_sharding(mesh, 1))

  def run(self, params: Any, *, step: int, workdir: str) -> dict[str, float]:
    scores, counts, shown = [], np.zeros(self.num_codes), None
    for batch in pipeline.eval_batches(self.config.data, self.eval_config.split,
                                       self.batch_size,
                                       max_examples=self.eval_config.get('num_examples')):
      mask = batch['mask']
      video = sharding.shard_batch(process_slice({'video': batch['video']}), self.mesh)['video']
      psnr, tokens, recon = (multihost_utils.process_allgather(x, tiled=True)
                             for x in self.apply(params, video))
      scores.append(psnr[mask])
      counts += np.bincount(tokens[mask].reshape(-1), minlength=self.num_codes)
      if shown is None:
        shown = (np.asarray(pixels_01(batch['video'][:4])), np.asarray(pixels_01(recon[:4])))
    if jax.process_index() == 0 and shown is not None:
      os.makedirs(os.path.join(workdir, 'tokenizer'), exist_ok=True)
      original, recon = shown
      Image.fromarray(image_grid(original, recon)).save(
          os.path.join(workdir, 'tokenizer', f'{step}.png'))
    probs = counts / counts.sum()
    entropy = -np.sum(probs[probs > 0] * np.log(probs[probs > 0]))
    return {'tokenizer_psnr': float(np.mean(np.concatenate(scores))),
            'code_usage': float(np.mean(counts > 0)),
            'code_perplexity': float(np.exp(entropy))}
