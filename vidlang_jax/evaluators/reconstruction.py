"""Masked-video reconstruction quality: PSNR on the masked tubelets, and a picture of it."""

from __future__ import annotations

import os
from typing import Any

import einops
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image

from vidlang_jax import registry, sharding
from vidlang_jax.data import pipeline
from vidlang_jax.evaluators.retrieval import process_slice
from vidlang_jax.models import masked_video as mv

GREY = 0.5  # Masked tubelets in the picture.


def psnr(mse: jax.Array) -> jax.Array:
  """Peak signal-to-noise ratio in dB of pixels in [0, 1]."""
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


def image_grid(*rows: np.ndarray) -> np.ndarray:
  """Clips `[examples, time, height, width, 3]` in [0, 1] -> one uint8 image: per example one
  row per argument (e.g. original / what the encoder saw / reconstruction), one column per
  frame, 1-pixel gaps."""
  grid = np.stack(rows, axis=1)  # [examples, rows, time, height, width, 3]
  grid = np.pad(grid, ((0, 0), (0, 0), (0, 0), (0, 1), (0, 1), (0, 0)), constant_values=1.0)
  grid = einops.rearrange(grid, 'e r t h w c -> (e r h) (t w) c')
  return (np.clip(grid, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


@registry.register('evaluator.reconstruction')
class ReconstructionEvaluator:
  """Masks the first `num_examples` clips of `split` as in training (fixed seed), reconstructs
  them and reports `recon_psnr` over the masked tubelets, beside `recon_psnr_mean_baseline`:
  the PSNR of predicting each masked tubelet's own mean colour (what a zero prediction gives
  with normalised targets). Saves `recon/<step>.png` in the workdir.
  """

  def __init__(self, *, model, config: ml_collections.ConfigDict,
               eval_config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.config, self.eval_config, self.mesh = config, eval_config, mesh
    pipeline.tokenizer_path(config.data)
    pipeline.check_split(config.data, eval_config.split, 'evals.recon.split')
    self.batch_size = eval_config.get('batch_size', config.batch_size)
    make_mask = mv.mask_fn(config)
    tubelet = tuple(config.model.video.tubelet)
    normalize, var_eps = config.loss.normalize_target, config.loss.target_var_eps

    def reconstruct(params, batch, rng, with_images):
      own, _ = mv.split_guide(params)
      mask = make_mask(params, batch, rng)
      pred = model.apply({'params': own}, batch['video'], mask)['pred']
      _, mean, std = mv.tubelet_targets(batch['video'], tubelet, normalize, var_eps)
      truth = einops.rearrange(mv.patchify(mv.pixels_01(batch['video']), tubelet),
                               'b t h w (p c) -> b (t h w) p c', c=3)
      pixels = mv.prediction_pixels(pred, mean, std)  # [batch, tokens, p, c]
      masked = mask.mask[:, :, None, None]
      weights = mask.mask.astype(jnp.float32)
      per_token = lambda x: jnp.mean(jnp.square(x - truth), axis=(2, 3))  # [batch, tokens]
      mse = lambda x: jnp.sum(per_token(x) * weights, 1) / jnp.sum(weights, 1)
      scores = psnr(mse(pixels)), psnr(mse(jnp.broadcast_to(mean, truth.shape)))
      if not with_images:
        return scores
      grid = mv.token_grid(batch['video'].shape, tubelet)
      frames = lambda x: mv.unpatchify(x, grid, tubelet)
      return scores, [frames(truth), frames(jnp.where(masked, GREY, truth)),
                      frames(jnp.where(masked, pixels, truth))]

    # Pictures (original / masked / reconstruction) only for the first batch.
    self.reconstruct = jax.jit(reconstruct, static_argnums=3,
                               out_shardings=sharding.batch_sharding(mesh, 1))

  def run(self, params: Any, *, step: int, workdir: str) -> dict[str, float]:
    scores, baselines, shown = [], [], None
    batches = pipeline.eval_batches(self.config.data, self.eval_config.split, self.batch_size,
                                    max_examples=self.eval_config.num_examples)
    for index, batch in enumerate(batches):
      mask = batch['mask']
      local = sharding.shard_batch(process_slice({'video': batch['video'],
                                                  'text': batch['text']}), self.mesh)
      gather = lambda x: multihost_utils.process_allgather(x, tiled=True)
      if shown is None:
        (score, baseline), images = self.reconstruct(params, local, jax.random.key(index), True)
        shown = [gather(x)[:self.eval_config.get('num_images', 4)] for x in images]
      else:
        score, baseline = self.reconstruct(params, local, jax.random.key(index), False)
      scores.append(gather(score)[mask])
      baselines.append(gather(baseline)[mask])
    if jax.process_index() == 0 and shown is not None:
      os.makedirs(os.path.join(workdir, 'recon'), exist_ok=True)
      Image.fromarray(image_grid(*shown)).save(os.path.join(workdir, 'recon', f'{step}.png'))
    return {'recon_psnr': float(np.mean(np.concatenate(scores))),
            'recon_psnr_mean_baseline': float(np.mean(np.concatenate(baselines)))}
