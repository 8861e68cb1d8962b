"""Masked-video reconstruction quality: PSNR on the masked tubelets, and a picture of it."""

from __future__ import annotations

from typing import Any

import einops
import jax
import jax.numpy as jnp
import numpy as np

from vidlang_jax import registry, sharding
from vidlang_jax.evaluators import common
from vidlang_jax.models import masked_video as mv
from vidlang_jax.pixels import image_grid, pixels_01, psnr

GREY = 0.5  # Masked tubelets in the picture.


@registry.register('evaluator.reconstruction')
class ReconstructionEvaluator(common.Evaluator):
  """Masks the first `num_examples` clips of `split` as in training (fixed seed), reconstructs
  them and reports `recon_psnr` over the masked tubelets, beside `recon_psnr_mean_baseline`:
  the PSNR of predicting each masked tubelet's own mean colour (what a zero prediction gives
  with normalised targets). Saves `recon/<step>.png` in the workdir.
  """

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    config, model = self.config, self.model
    make_mask = mv.mask_fn(config)
    tubelet = tuple(config.model.video.tubelet)
    normalize, var_eps = config.loss.normalize_target, config.loss.target_var_eps

    def reconstruct(params, batch, rng, with_images):
      own, _ = mv.split_guide(params)
      mask = make_mask(params, batch, rng)
      pred = model.apply({'params': own}, batch['video'], mask)['pred']
      _, mean, std = mv.tubelet_targets(batch['video'], tubelet, normalize, var_eps)
      truth = einops.rearrange(mv.patchify(pixels_01(batch['video']), tubelet),
                               'b t h w (p c) -> b (t h w) p c', c=3)
      pixels = mv.prediction_pixels(pred, mean, std)  # [batch, tokens, p, c]
      masked = mask.mask[:, :, None, None]
      weights = mask.mask.astype(jnp.float32)
      per_token = lambda x: jnp.mean(jnp.square(x - truth), axis=(2, 3))  # [batch, tokens]
      mse = lambda x: jnp.sum(per_token(x) * weights, 1) / jnp.sum(weights, 1)
      scores = psnr(mse(pixels)), psnr(mse(jnp.broadcast_to(mean, truth.shape)))
      if not with_images:
        return scores, []
      grid = mv.token_grid(batch['video'].shape, tubelet)
      frames = lambda x: mv.unpatchify(x, grid, tubelet)
      return scores, [frames(truth), frames(jnp.where(masked, GREY, truth)),
                      frames(jnp.where(masked, pixels, truth))]

    # Pictures (original / masked / reconstruction) only for the first batch.
    jitted = jax.jit(reconstruct, static_argnums=3,
                     out_shardings=sharding.batch_sharding(self.mesh, 1))
    self.reconstruct = lambda params, batch, index: jitted(params, batch,
                                                           jax.random.key(index), index == 0)

  def run(self, params: Any, *, step: int, workdir: str) -> dict[str, float]:
    scores, baselines, shown = [], [], None
    for ((score, baseline), images), _, mask in self.outputs(
        self.reconstruct, params, self.eval_config.split, inputs=('video', 'text'),
        max_examples=self.eval_config.num_examples):
      if shown is None:
        shown = [x[:self.eval_config.get('num_images', 4)] for x in images]
      scores.append(score[mask])
      baselines.append(baseline[mask])
    if shown is not None:
      common.save_image(workdir, 'recon', step, image_grid(*shown))
    return {'recon_psnr': float(np.mean(np.concatenate(scores))),
            'recon_psnr_mean_baseline': float(np.mean(np.concatenate(baselines)))}
