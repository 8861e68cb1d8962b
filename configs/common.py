"""Pieces every config is built from: the trainer's keys, clip data, towers, optimizer, probe.

Each family's config (`configs/<family>.py`) starts from `trainer()`, adds the pieces it uses
and says only what is its own; it loads this file with
`common = vidlang_jax.config.import_sibling(__file__, 'common')`. Not a config itself (no
`get_config`).
"""

import ml_collections


def trainer(objective: str) -> ml_collections.ConfigDict:
  """The keys the one trainer reads, with the defaults of a pod-scale run."""
  c = ml_collections.ConfigDict()
  c.objective = objective
  c.seed = 0
  # init_from: a run's workdir or a release. Every param is loaded (`load`: target regex ->
  # checkpoint path) or listed in `dont_load`; shapes that differ are fitted by `resample`
  # (time / space position embeddings, a 2D patch kernel inflated to a tubelet: `central` or
  # `average`), see vidlang_jax/checkpoint.py.
  c.init_from = ml_collections.ConfigDict(dict(
      path='', load=[('(.*)', r'\1')], dont_load=[],
      resample=[(r'.*pos_time', 'linear'), (r'.*pos_space', 'grid'),
                (r'.*patch_embed/kernel', 'inflate_central')]))
  c.peak_flops_per_device = 0.0  # 0: measure (CPU); set e.g. 989e12 for an H100 in bf16
  c.keep_checkpoints = 3
  # Axis sizes within a slice; `dcn` multiplies axes across slices (multi-slice TPU), e.g.
  # --config.mesh.dcn.data=2 on two slices (see vidlang_jax/sharding.make_mesh).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, sequence=1,
                                          dcn=dict(data=1, fsdp=1, tensor=1, sequence=1)))
  c.sharding = ml_collections.ConfigDict()
  c.sharding.logical_axis_rules = []  # [] = vidlang_jax.sharding.LOGICAL_AXIS_RULES
  c.sharding.rules = []  # (regex on param path, partition spec) overrides, first match wins
  c.log_every = 50
  c.eval_every = 2000
  c.checkpoint_every = 1000
  c.checkpoint_every_minutes = 0.0  # also save by the clock (0: steps only); SIGTERM saves too
  # NaN / inf loss or gradients skip the update; this many in a row stop the run.
  c.max_nonfinite_in_a_row = 5
  c.evals = ml_collections.ConfigDict()
  return c


def optimizer(**overrides) -> ml_collections.ConfigDict:
  """AdamW with warmup + cosine decay, global-norm clipping, decay and freezing by regex.

  `layer_decay` < 1 (e.g. 0.75 to fine-tune, as VideoMAE) scales each block's update by
  `layer_decay ** (depth - block)`, embeddings by `layer_decay ** (depth + 1)`, in the towers
  matching `layer_decay_towers`; see `vidlang_jax.optimizer.layer_scales`.
  """
  from vidlang_jax.optimizer import EMBEDDINGS

  c = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=2000, end_lr_fraction=0.0, b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=1e-4, grad_clip=1.0,
      weight_decay_rules=r'.*(kernel|token_embedding)', freeze='',
      layer_decay=1.0, layer_decay_towers='.*', layer_decay_embeddings=EMBEDDINGS))
  c.update(overrides)
  return c


def frozen_spatial(attention: str) -> str:
  """An `optimizer.freeze` regex for the video tower's spatial params, those an image model
  provides (*Optimizing ViViT Training*: train the temporal parts and the head). With divided
  attention the time attention, its norm and the time embeddings train; with joint attention
  every block mixes space and time, so the encoder stays as loaded and only the time
  embeddings, the pooling and everything outside the video tower train."""
  if attention == 'divided':
    return (r'video/(patch_embed|pos_space|cls|norm_pre|'
            r'encoder/(block_\d+|blocks)/(attn_space|norm_space|mlp|norm_mlp))(/.*)?')
  return r'video/(patch_embed|pos_space|cls|norm_pre|encoder)(/.*)?'


def clip_data(tiny: bool, dataset: str = '') -> ml_collections.ConfigDict:
  """Clips + captions from a TFDS dataset (moving_shapes unless `dataset` names another)."""
  d = ml_collections.ConfigDict()
  d.name = dataset or ('moving_shapes/small' if tiny else 'moving_shapes')
  d.data_dir = ''  # default: $VIDLANG_DATA_DIR or ~/.cache/vidlang_jax/datasets
  d.builder_kwargs = ml_collections.ConfigDict()
  d.train_split = 'train'
  d.num_frames = 16
  d.image_size = 224
  d.strides = (1, 2)
  d.crop_scale = (0.8, 1.0)
  d.max_text_len = 32
  d.vocab_size = 1000
  d.tokenizer = ''  # a tokenizer.json (e.g. a release's); default: the dataset's own
  # The caption's special ids (a converted CLIP's or SigLIP's differ; None: no BOS).
  d.bos_id, d.eos_id, d.pad_id = 2, 3, 0
  d.label_keys = ()  # integer fields kept in training batches, e.g. ('shape_label',)
  # Bad records (vidlang_jax/data/faults.py): a clip shorter than num_frames is padded with
  # its last frame ('pad') or skipped ('skip'); frames over max_pixels are skipped; more than
  # max_bad_fraction of the records read between two logged steps stops the run.
  d.short_clips = 'pad'
  d.max_pixels = 3840 * 2160
  d.max_bad_fraction = 0.2
  d.num_workers = 8
  d.num_threads = 16
  d.prefetch = 64
  if tiny:  # 32x32 frames, 8 per clip.
    d.update(dict(num_frames=8, image_size=32, strides=(2,), num_workers=2, num_threads=2,
                  prefetch=8))
  return d


def video_tower(tiny: bool, attention: str = 'joint') -> ml_collections.ConfigDict:
  """ViT-B/16 over 16 x 224² clips, or a 4-block width-128 ViT over 8 x 32² for `tiny` (MLP
  ratio 2: cheaper steps, so more of them fit a CPU budget)."""
  if tiny:
    return ml_collections.ConfigDict(dict(
        width=128, depth=4, num_heads=4, mlp_dim=256, tubelet=(2, 8, 8), num_frames=8,
        image_size=32, attention=attention, pool='gap', dropout=0.0, scan=False, remat=False))
  return ml_collections.ConfigDict(dict(
      width=768, depth=12, num_heads=12, mlp_dim=3072, tubelet=(2, 16, 16), num_frames=16,
      image_size=224, attention=attention, pool='map', dropout=0.0, scan=True, remat=True))


def text_tower(tiny: bool) -> ml_collections.ConfigDict:
  if tiny:
    return ml_collections.ConfigDict(dict(
        vocab_size=1000, width=128, depth=2, num_heads=4, mlp_dim=256, max_len=32,
        dropout=0.0, scan=False, remat=False))
  return ml_collections.ConfigDict(dict(
      vocab_size=1000, width=512, depth=12, num_heads=8, mlp_dim=2048, max_len=32, dropout=0.0,
      scan=True, remat=True))


def moving_shapes_subset(dataset_name: str) -> dict[str, int]:
  """The examples whose labels the video determines: moving_shapes' labels describe the
  first-named object, which a clip with several objects cannot single out; other datasets'
  labels describe the whole clip."""
  return {'num_objects': 1} if dataset_name.startswith('moving_shapes') else {}


def label_list(labels: str, default: tuple[str, ...]) -> tuple[str, ...]:
  """The `labels=a+b` config argument (`+` separates, as `,` separates arguments)."""
  return tuple(x for x in labels.split('+') if x) if labels else default


def linear_probe(tiny: bool, dataset_name: str,
                 labels: tuple[str, ...]) -> ml_collections.ConfigDict:
  """Ridge probe of the pooled video features for the dataset's `<label>_label` features."""
  return ml_collections.ConfigDict(dict(
      type='linear_probe', train_split='train', train_examples=4000 if tiny else 10_000,
      test_split='test', labels=labels, subset=moving_shapes_subset(dataset_name),
      random_init_baseline=False, batch_size=200 if tiny else 1024))
