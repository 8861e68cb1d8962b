"""Two-tower video-text contrastive pretraining (SigLIP / CLIP style) on moving_shapes.

  # The demo: 2 CPU cores, a few minutes.
  vidlang train --config configs/two_tower.py:tiny --workdir runs/demo
  vidlang eval  --config configs/two_tower.py:tiny --workdir runs/demo

  # ViT-B/16-sized towers on a pod slice (FSDP over all chips):
  vidlang train --config configs/two_tower.py:base --workdir gs://bucket/runs/vt_base \
      --config.mesh.fsdp=-1 --config.mesh.data=1

Arguments (comma separated): `tiny` | `base`, `loss=sigmoid|softmax`, `attention=joint|divided`,
`steps=N`, `dataset=NAME`. Any key can also be overridden with `--config.a.b=value`.
"""

import ml_collections

from vidlang_jax.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False, base=False, loss='sigmoid', attention='joint', steps=0,
                  dataset='')
  c = ml_collections.ConfigDict()
  c.objective = 'contrastive'
  c.seed = 0
  # Params from another run: path = a workdir or its checkpoints/<step>; load = (target regex,
  # checkpoint path replacement) pairs, first match wins; dont_load = regexes kept as initialised.
  c.init_from = ml_collections.ConfigDict(dict(path='', load=[('(.*)', r'\1')], dont_load=[]))
  c.peak_flops_per_device = 0.0  # 0: measure (CPU); set e.g. 989e12 for an H100 in bf16
  c.keep_checkpoints = 3

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, sequence=1))
  c.sharding = ml_collections.ConfigDict()
  c.sharding.logical_axis_rules = []  # [] = vidlang_jax.sharding.LOGICAL_AXIS_RULES
  c.sharding.rules = []  # (regex on param path, partition spec) overrides, first match wins

  c.data = ml_collections.ConfigDict()
  c.data.name = arg.dataset or 'moving_shapes'
  c.data.data_dir = ''  # default: $VIDLANG_DATA_DIR or ~/.cache/vidlang_jax/datasets
  c.data.builder_kwargs = ml_collections.ConfigDict()
  c.data.train_split = 'train'
  c.data.num_frames = 16
  c.data.image_size = 224
  c.data.strides = (1, 2)
  c.data.crop_scale = (0.8, 1.0)
  c.data.max_text_len = 32
  c.data.vocab_size = 1000
  c.data.label_keys = ()  # integer fields kept in training batches, e.g. ('shape_label',)
  c.data.num_workers = 8
  c.data.num_threads = 16
  c.data.prefetch = 64

  c.model = ml_collections.ConfigDict()
  c.model.name = 'two_tower'
  c.model.embed_dim = 512
  c.model.temperature_init = 10.0 if arg.loss == 'sigmoid' else 1 / 0.07
  c.model.bias_init = -10.0 if arg.loss == 'sigmoid' else None
  c.model.video = ml_collections.ConfigDict(dict(
      width=768, depth=12, num_heads=12, mlp_dim=3072, tubelet=(2, 16, 16), num_frames=16,
      image_size=224, attention=arg.attention, pool='map', dropout=0.0, scan=True, remat=True))
  c.model.text = ml_collections.ConfigDict(dict(
      vocab_size=1000, width=512, depth=12, num_heads=8, mlp_dim=2048, max_len=32, dropout=0.0,
      scan=True, remat=True))
  c.loss = ml_collections.ConfigDict(dict(kind=arg.loss))

  c.batch_size = 4096
  c.total_steps = arg.steps or 20_000
  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=2000, end_lr_fraction=0.0, b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=1e-4, grad_clip=1.0,
      weight_decay_rules=r'.*(kernel|token_embedding)', freeze=''))

  c.log_every = 50
  c.eval_every = 2000
  c.checkpoint_every = 1000
  c.evals = ml_collections.ConfigDict()
  c.evals.retrieval = ml_collections.ConfigDict(dict(type='retrieval', split='test',
                                                     batch_size=1024))
  # Ridge probe of the pooled video features (see vidlang_jax/evaluators/linear_probe.py).
  c.evals.probe = ml_collections.ConfigDict(dict(
      type='linear_probe', train_split='train', train_examples=10_000, test_split='test',
      labels=('shape', 'motion'), single_object=True, random_init_baseline=False,
      batch_size=1024))

  if arg.tiny:
    # 2 CPU cores, ~10 minutes: 32x32 frames, 8 per clip, small towers (MLP ratio 2: cheaper
    # steps, so more of them fit in the budget), evaluated once at the end.
    c.data.name = arg.dataset or 'moving_shapes/small'
    c.data.num_frames = 8
    c.data.image_size = 32
    c.data.strides = (2,)
    c.data.num_workers = 2
    c.data.num_threads = 2
    c.data.prefetch = 8
    c.model.embed_dim = 128
    c.model.video.update(dict(width=128, depth=4, num_heads=4, mlp_dim=256, tubelet=(2, 8, 8),
                              num_frames=8, image_size=32, pool='gap', scan=False,
                              remat=False))
    c.model.text.update(dict(width=128, depth=2, num_heads=4, mlp_dim=256, scan=False,
                             remat=False))
    c.batch_size = 128
    c.total_steps = arg.steps or 700
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 100
    c.log_every = 20
    c.eval_every = 1000
    c.checkpoint_every = 350
    c.evals.retrieval.batch_size = 200
    c.evals.probe.update(dict(train_examples=4000, batch_size=200))
  return c
