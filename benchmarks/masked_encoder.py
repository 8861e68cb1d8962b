"""The masked-video encoder at 90 % tube masking against the same encoder on every tubelet,
forward + backward, timed in turns: VideoMAE's point is that the encoder only pays for the
visible tokens (gathered before the patch embedding).

Size (issue 19): 16 frames x 64², tubelet 2x8x8 (8 x 8 x 8 = 512 tubelets; tube masking at 0.9
keeps 6 per frame, 48 in all), encoder width 384 x 6 layers, 6 heads, MLP 1536, batch 8, fp32.
Only the encoder is timed (`MaskedVideoModel.encode_visible` with its gradient with respect to
the encoder's parameters), on masks drawn outside the timed call; the unmasked encoder is the
same call keeping every tubelet.

  .venv/bin/python benchmarks/masked_encoder.py   # writes benchmarks/results/*.json
"""

from __future__ import annotations

import os
from typing import Any, Callable

import harness
import jax
import jax.numpy as jnp
import numpy as np

from vidlang_jax import config as config_lib
from vidlang_jax import train
from vidlang_jax.models import masked_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = dict(frames=16, image=64, tubelet=(2, 8, 8), width=384, depth=6, heads=6, mlp=1536,
             batch=8, ratio=0.9)
SMOKE = dict(frames=4, image=32, tubelet=(2, 8, 8), width=32, depth=1, heads=2, mlp=64,
             batch=2, ratio=0.9)


def load_config(s: dict[str, Any]) -> Any:
  """`configs/masked_video.py:tiny` (tube masking) at the benchmark's size."""
  return config_lib.load(os.path.join(ROOT, 'configs', 'masked_video.py:tiny'), {
      'model.video.width': s['width'], 'model.video.depth': s['depth'],
      'model.video.num_heads': s['heads'], 'model.video.mlp_dim': s['mlp'],
      'model.video.tubelet': s['tubelet'], 'model.video.num_frames': s['frames'],
      'model.video.image_size': s['image'], 'data.num_frames': s['frames'],
      'data.image_size': s['image'], 'batch_size': s['batch'], 'masking.kind': 'tube',
      'masking.ratio': s['ratio']})


def encoder_step(model: Any, params: Any, video: jax.Array,
                 keep: jax.Array) -> Callable[[], Any]:
  """A blocking call of the encoder's loss and gradient (encoder parameters only) on `keep`."""

  def loss(encoder_params):
    out = model.apply({'params': dict(params, video=encoder_params)}, video, keep, train=True,
                      method=model.encode_visible)
    return jnp.mean(jnp.square(out.astype(jnp.float32)))

  compiled = jax.jit(jax.value_and_grad(loss)).lower(params['video']).compile()
  return lambda: jax.block_until_ready(compiled(params['video']))


def main() -> None:
  args = harness.parser(__doc__.splitlines()[0]).parse_args()
  s = SMOKE if args.smoke else SIZES
  repeats = 1 if args.smoke else args.repeats
  config = load_config(s)
  model = train.build_model(config)
  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.random((s['batch'], s['frames'], s['image'], s['image'], 3)),
                      jnp.float32)
  batch = {'video': video}
  grid = masked_video.token_grid(video.shape, tuple(s['tubelet']))
  tokens = int(np.prod(grid))
  objective = masked_video.masked_video_objective(model, config)
  params = jax.jit(objective.init)(jax.random.key(0), batch)
  mask = masked_video.mask_fn(config)(params, batch, jax.random.key(1))
  everything = jnp.broadcast_to(jnp.arange(tokens, dtype=jnp.int32), (s['batch'], tokens))
  visible = int(mask.keep_indices.shape[1])
  times = harness.time_interleaved(
      {'masked': encoder_step(model, params, video, mask.keep_indices),
       'unmasked': encoder_step(model, params, video, everything)}, repeats=repeats)
  t = {k: harness.median(v) for k, v in times.items()}
  figures = [harness.figure(
      f'Masked-video encoder fwd+bwd, {s["ratio"]:.0%} tube masking / unmasked '
      f'({visible} of {tokens} tubelets, ViT {s["width"]}x{s["depth"]}, batch {s["batch"]})',
      t['masked'], t['unmasked'], goal='<= 0.25', unit='s/step',
      note=f'visible fraction {visible / tokens:.3f}; attention cost falls with its square')]
  harness.write(args, 'masked_encoder', figures, sizes=s, grid=grid, tokens=tokens,
                visible_tokens=visible, times=times, medians=t)


if __name__ == '__main__':
  main()
