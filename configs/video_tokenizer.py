"""Video tokenizer for the world model: per-frame conv autoencoder + FSQ on moving_shapes.

  vidlang train --config configs/video_tokenizer.py:tiny --workdir runs/tokenizer_tiny
  vidlang eval  --config configs/video_tokenizer.py:tiny --workdir runs/tokenizer_tiny

Arguments (comma separated): `tiny` | `base`, `steps=N`. `tiny` codes each 32x32 frame as 8x8
tokens from a 1,000-code vocabulary (FSQ levels 8,5,5,5); `base` codes 256x256 frames as 16x16
tokens from 64,000 codes (levels 8,8,8,5,5,5), as LWM's VQGAN does.

Expected (tiny, 2 CPU cores, 300 steps): tokenizer PSNR ~25.9 dB, 82 % of the codes used
(docs/results.md).
"""

import ml_collections

from vidlang_jax.config import import_sibling, parse_arg

common = import_sibling(__file__, 'common')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False, base=False, steps=0)
  c = common.trainer('video_tokenizer')
  c.data = common.clip_data(arg.tiny)
  c.model = ml_collections.ConfigDict(dict(
      name='video_tokenizer', channels=(128, 256, 256, 512), levels=(8, 8, 8, 5, 5, 5)))
  c.data.image_size = 256
  # Objects cover a few percent of moving_shapes' pixels: weigh them up (see the objective).
  c.loss = ml_collections.ConfigDict(dict(foreground_weight=10.0))
  c.batch_size = 256
  c.total_steps = arg.steps or 100_000
  c.optimizer = common.optimizer(learning_rate=3e-4, warmup_steps=2000, weight_decay=0.0)
  c.evals.video_tokenizer = ml_collections.ConfigDict(dict(
      type='video_tokenizer', split='test', num_examples=1024, batch_size=256))
  if arg.tiny:
    c.model.update(dict(channels=(32, 64), levels=(8, 5, 5, 5)))
    c.data.image_size = 32
    # Frames are coded one by one, so 2 frames from each of 64 clips teach more per step
    # than 8 neighbouring (nearly identical) frames from each of 16.
    c.data.num_frames = 2
    c.data.strides = (1, 4, 8)
    c.batch_size = 64
    c.total_steps = arg.steps or 300
    c.optimizer.update(dict(learning_rate=2e-3, warmup_steps=50))
    c.log_every = 20
    c.checkpoint_every = 500
    c.eval_every = 10_000
    c.evals.video_tokenizer.update(dict(num_examples=500, batch_size=100))
  return c
