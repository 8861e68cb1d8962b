"""Fine-tunes a pretrained video encoder to classify moving_shapes' shape and motion.

  # From a masked video (or joint, or two-tower) run: the encoder is loaded, the decoder, text
  # tower and projections are dropped, the heads start at zero.
  vidlang train --config configs/finetune_classification.py:tiny,init=runs/mae_tiny \
      --workdir runs/finetune_tiny

  # From scratch, for comparison:
  vidlang train --config configs/finetune_classification.py:tiny --workdir runs/scratch_tiny

  # On your own labelled videos (a video_text_folder built with --label_columns action):
  vidlang train --config configs/finetune_classification.py:tiny,\
dataset=video_text_folder/my_videos,labels=action,init=runs/mine --workdir runs/mine_action

  # From VideoMAE's public weights (a local transformers VideoMAEForPreTraining folder):
  vidlang convert hf_videomae --src path/to/videomae --out releases/videomae
  vidlang train --config configs/finetune_classification.py:base,init=releases/videomae,\
dataset=video_text_folder/my_videos,labels=action --workdir runs/videomae_action

Arguments (comma separated): `tiny` | `base`, `init=PATH` (a release, a workdir or its
checkpoints/<step>), `steps=N`, `dataset=NAME`, `labels=a+b` (the dataset's `<label>_label`
features, one head each, sized by the dataset's class count; default shape+motion),
`layer_decay=X` (layer-wise learning-rate decay; default VideoMAE's 0.75 for base, off for
tiny), `frozen_spatial` (train only the temporal parts and the heads, see
`common.frozen_spatial`). The
encoder's architecture is `init`'s video tower (a release's or a run's, with its frames and
frame size), else that of `configs/two_tower.py` of the same size; a checkpoint of another shape
fails to load with both shapes named.

Expected (tiny, 2 CPU cores, 300 steps from a 1,500-step MAE run): motion ~0.90, shape ~0.29 on
the one-object test clips (docs/results.md).
"""

import os

import ml_collections

from vidlang_jax import release
from vidlang_jax.config import import_sibling, parse_arg

common = import_sibling(__file__, 'common')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False, base=False, init='', steps=0, dataset='', labels='',
                  layer_decay=0.0, frozen_spatial=False)
  labels = common.label_list(arg.labels, ('shape', 'motion'))
  c = common.trainer('classification')
  c.data = common.clip_data(arg.tiny, arg.dataset)
  c.data.label_keys = tuple(f'{label}_label' for label in labels)
  # A class count of 0 is taken from the dataset's label feature.
  c.model = ml_collections.ConfigDict(dict(
      name='video_classifier', video=common.video_tower(arg.tiny),
      num_classes=ml_collections.ConfigDict({label: 0 for label in labels}),
      head_dropout=0.0))
  if arg.init and os.path.exists(os.path.join(arg.init, 'config.json')):
    # A release or a run: its video tower (e.g. a converted VideoMAE's sin-cos positions),
    # fed the clips it was built for.
    c.model.video = release.load_config(arg.init).model.video
    c.data.num_frames, c.data.image_size = c.model.video.num_frames, c.model.video.image_size
  c.loss = ml_collections.ConfigDict(dict(label_smoothing=0.1))

  # Partial loading by regex: only the encoder (`video/...`), from the same path in the
  # checkpoint; everything else there (decoder, text tower, projections) is ignored, and the
  # head and its norm keep their initialisation.
  c.init_from.path = arg.init
  c.init_from.load = [('video/(.*)', r'video/\1')]
  c.init_from.dont_load = ['(?!video/).*']  # the classifier head starts from scratch

  # VideoMAE fine-tuning: AdamW lr 1e-3 x batch / 256 (base 5e-4 at 128), wd 0.05.
  c.batch_size = 512
  c.total_steps = arg.steps or 20_000
  c.optimizer = common.optimizer(learning_rate=1e-3, warmup_steps=2000, weight_decay=0.05,
                                 layer_decay=arg.layer_decay or (1.0 if arg.tiny else 0.75))
  if arg.frozen_spatial:
    c.optimizer.freeze = common.frozen_spatial(c.model.video.attention)
  subset = common.moving_shapes_subset(c.data.name)
  c.evals.classification = ml_collections.ConfigDict(dict(
      type='classification', split='test', batch_size=1024, subset=subset,
      subset_name='single_object'))
  if arg.tiny:
    c.batch_size = 128
    c.total_steps = arg.steps or 300
    c.optimizer.update(dict(learning_rate=5e-4, warmup_steps=50))
    c.log_every = 20
    c.eval_every = 1000
    c.checkpoint_every = 300
    c.evals.classification.batch_size = 200
  return c
