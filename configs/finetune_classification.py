"""Fine-tunes a pretrained video encoder to classify moving_shapes' shape and motion.

  # From a masked video (or joint, or two-tower) run: the encoder is loaded, the decoder, text
  # tower and projections are dropped, the heads start at zero.
  vidlang train --config configs/finetune_classification.py:tiny,init=runs/mae_tiny \
      --workdir runs/finetune_tiny

  # From scratch, for comparison:
  vidlang train --config configs/finetune_classification.py:tiny --workdir runs/scratch_tiny

Arguments (comma separated): `tiny` | `base`, `init=PATH` (a workdir or its
checkpoints/<step>), `steps=N`. The encoder's architecture is the video tower of
`configs/two_tower.py` (and so of `configs/masked_video.py`) of the same size; a checkpoint of
another shape fails to load with both shapes named.
"""

import os

import ml_collections

from vidlang_jax.config import from_file, parse_arg


def _config(name: str, arg: str) -> ml_collections.ConfigDict:
  return from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), name), arg)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False, base=False, init='', steps=0)
  c = _config('two_tower.py', 'tiny' if arg.tiny else 'base')
  c.objective = 'classification'
  video = c.model.video
  c.model = ml_collections.ConfigDict(dict(
      name='video_classifier', video=video,
      num_classes=ml_collections.ConfigDict(dict(shape=6, motion=12)), head_dropout=0.0))
  c.data.label_keys = ('shape_label', 'motion_label')
  c.loss = ml_collections.ConfigDict(dict(label_smoothing=0.1))

  # Partial loading by regex: only the encoder (`video/...`), from the same path in the
  # checkpoint; everything else there (decoder, text tower, projections) is ignored, and the
  # head and its norm keep their initialisation.
  c.init_from.path = arg.init
  c.init_from.load = [('video/(.*)', r'video/\1')]
  c.init_from.dont_load = []

  # VideoMAE fine-tuning: AdamW lr 1e-3 x batch / 256 (base 5e-4 at 128), wd 0.05.
  c.batch_size = 512
  c.total_steps = arg.steps or 20_000
  c.optimizer.update(dict(learning_rate=1e-3, warmup_steps=2000, weight_decay=0.05))
  c.evals = ml_collections.ConfigDict()
  c.evals.classification = ml_collections.ConfigDict(dict(type='classification', split='test',
                                                          batch_size=1024))
  if arg.tiny:
    c.batch_size = 128
    c.total_steps = arg.steps or 300
    c.optimizer.update(dict(learning_rate=5e-4, warmup_steps=50))
    c.checkpoint_every = 300
    c.evals.classification.batch_size = 200
  return c
