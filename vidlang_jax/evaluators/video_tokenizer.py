"""Video tokenizer quality: reconstruction PSNR and how much of the vocabulary is used."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from vidlang_jax import registry, sharding
from vidlang_jax.evaluators import common
from vidlang_jax.pixels import image_grid, pixels_01, psnr_01


@registry.register('evaluator.video_tokenizer')
class TokenizerEvaluator(common.Evaluator):
  """`tokenizer_psnr` (dB, frames in [0, 1]), `code_usage` (fraction of the vocabulary seen on
  the split) and `code_perplexity` (exp of the code distribution's entropy; the vocabulary size
  when codes are used evenly); saves `video_tokenizer/<step>.png` (original over
  reconstruction)."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.num_codes = math.prod(self.config.model.levels)
    model = self.model

    def run(params, batch):
      recon, tokens = model.apply({'params': params}, batch['video'])
      return psnr_01(recon, batch['video']), tokens, recon

    self.apply = jax.jit(run, out_shardings=sharding.batch_sharding(self.mesh, 1))

  def run(self, params: Any, *, step: int, workdir: str) -> dict[str, float]:
    scores, counts, shown = [], np.zeros(self.num_codes), None
    for (psnr, tokens, recon), batch, mask in self.outputs(
        lambda p, b, _: self.apply(p, b), params, self.eval_config.split,
        max_examples=self.eval_config.get('num_examples')):
      scores.append(psnr[mask])
      counts += np.bincount(tokens[mask].reshape(-1), minlength=self.num_codes)
      if shown is None:
        shown = (np.asarray(pixels_01(batch['video'][:4])), np.asarray(pixels_01(recon[:4])))
    if shown is not None:
      common.save_image(workdir, 'video_tokenizer', step, image_grid(*shown))
    probs = counts / counts.sum()
    entropy = -np.sum(probs[probs > 0] * np.log(probs[probs > 0]))
    return {'tokenizer_psnr': float(np.mean(np.concatenate(scores))),
            'code_usage': float(np.mean(counts > 0)),
            'code_perplexity': float(np.exp(entropy))}
