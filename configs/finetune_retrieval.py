"""Contrastive fine-tuning of a two-tower release on videos with captions: one of ours
(`vidlang export`), or CLIP / SigLIP converted from a transformers folder, whose image tower
becomes the video tower (docs/converters.md).

  # From a public image-text model, on your own captioned videos:
  vidlang convert hf_siglip --src path/to/siglip --out releases/siglip --num-frames 8
  vidlang data --builder video_text_folder --name my_videos --src path/to/videos
  vidlang train --config configs/finetune_retrieval.py:init=releases/siglip,\
dataset=video_text_folder/my_videos --workdir runs/siglip_my_videos

  # From one of our releases, on the embedded data, small enough for a CPU:
  vidlang train --config configs/finetune_retrieval.py:tiny,init=releases/two_tower_tiny \
      --workdir runs/ft_tiny

Arguments (comma separated): `init=PATH` (required: a release or a two-tower run's workdir; the
model, its tokenizer and caption ids are the release's), `dataset=NAME` (default: the
release's), `steps=N`, `lr=X`, `frames=N` (clip length; time position embeddings are
resampled), `frozen_spatial` (train only what the image model lacks: time embeddings, pooling,
projections, temperature, and the text tower, as in *Optimizing ViViT Training*),
`layer_decay=X` (e.g. 0.75: lower blocks learn slower), `tiny` (CPU sizes: batch 128, 300
steps).

Every param is loaded (strict): the fine-tuned model is the release's architecture.
"""

import ml_collections

from vidlang_jax import release
from vidlang_jax.config import ConfigError, import_sibling, parse_arg

common = import_sibling(__file__, 'common')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, init='', tiny=False, dataset='', steps=0, lr=0.0, frames=0,
                  frozen_spatial=False, layer_decay=1.0)
  if not arg.init:
    raise ConfigError('finetune_retrieval needs init=PATH: a two-tower release (vidlang export '
                      'or vidlang convert hf_clip / hf_siglip) or a two-tower run.')
  c = release.load_config(arg.init)
  if c.model.name != 'two_tower':
    raise ConfigError(f'init={arg.init} holds a {c.model.name} model; finetune_retrieval '
                      'fine-tunes two-tower models.')
  c.init_from = common.trainer('contrastive').init_from
  c.init_from.path = arg.init
  if arg.dataset:
    c.data.name = arg.dataset
    c.data.builder_kwargs = ml_collections.ConfigDict()
    c.data.label_keys = ()
  if arg.frames:
    c.data.num_frames = c.model.video.num_frames = arg.frames

  c.batch_size = 512
  c.total_steps = arg.steps or 5000
  c.optimizer = common.optimizer(learning_rate=arg.lr or 1e-5, warmup_steps=500,
                                 weight_decay=0.05, layer_decay=arg.layer_decay)
  if arg.frozen_spatial:
    c.optimizer.freeze = common.frozen_spatial(c.model.video.attention)
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.evals = ml_collections.ConfigDict(dict(retrieval=dict(
      type='retrieval', split='test', batch_size=1024)))
  if arg.tiny:
    c.data.update(dict(num_workers=2, num_threads=2, prefetch=8))
    c.batch_size = 128
    c.total_steps = arg.steps or 300
    c.optimizer.update(dict(learning_rate=arg.lr or 3e-4, warmup_steps=30))
    c.log_every = 20
    c.eval_every = 1000
    c.checkpoint_every = 300
    c.evals.retrieval.batch_size = 200
  return c
