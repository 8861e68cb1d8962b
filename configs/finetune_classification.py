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

Arguments (comma separated): `tiny` | `base`, `init=PATH` (a workdir or its
checkpoints/<step>), `steps=N`, `dataset=NAME`, `labels=a+b` (the dataset's `<label>_label`
features, one head each, sized by the dataset's class count; default shape+motion). The
encoder's architecture is the video tower of `configs/two_tower.py` (and so of
`configs/masked_video.py`) of the same size; a checkpoint of another shape fails to load with
both shapes named.

Expected (tiny, 2 CPU cores, 300 steps from a 1,500-step MAE run): motion ~0.90, shape ~0.29 on
the one-object test clips (docs/results.md).
"""

import ml_collections

from vidlang_jax.config import import_sibling, parse_arg

common = import_sibling(__file__, 'common')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False, base=False, init='', steps=0, dataset='', labels='')
  labels = common.label_list(arg.labels, ('shape', 'motion'))
  c = common.trainer('classification')
  c.data = common.clip_data(arg.tiny, arg.dataset)
  c.data.label_keys = tuple(f'{label}_label' for label in labels)
  # A class count of 0 is taken from the dataset's label feature.
  c.model = ml_collections.ConfigDict(dict(
      name='video_classifier', video=common.video_tower(arg.tiny),
      num_classes=ml_collections.ConfigDict({label: 0 for label in labels}),
      head_dropout=0.0))
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
  c.optimizer = common.optimizer(learning_rate=1e-3, warmup_steps=2000, weight_decay=0.05)
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
