"""Long-context world model (LWM-style): a LLaMA decoder on video tokens and captions, in both
orders, packed into long rows, with needle-in-a-haystack documents mixed in; context grows in
stages, each starting from the previous stage's checkpoint with a larger RoPE theta.

  # 1. The video tokenizer (see configs/video_tokenizer.py), then the LM stages on 2 CPU cores:
  vidlang train --config configs/video_tokenizer.py:tiny --workdir runs/tokenizer_tiny
  vidlang train --config configs/world_model.py:tiny,stage=1,tokenizer=runs/tokenizer_tiny \
      --workdir runs/lwm_tiny_1
  vidlang train --config configs/world_model.py:tiny,stage=2,tokenizer=runs/tokenizer_tiny,\
init=runs/lwm_tiny_1 --workdir runs/lwm_tiny_2
  vidlang train --config configs/world_model.py:tiny,stage=3,tokenizer=runs/tokenizer_tiny,\
init=runs/lwm_tiny_2 --workdir runs/lwm_tiny_3
  vidlang generate --config configs/world_model.py:tiny,stage=3,tokenizer=runs/tokenizer_tiny \
      --workdir runs/lwm_tiny_3 --prompt "a small red circle moves left"

  # LWM-7B-sized on a v5p-512 (launch/tpu_pod.sh run ... --tpu v5p-512): stages 32K -> 128K ->
  # 256K -> 512K -> 1M tokens, ring attention over the `sequence` mesh axis, 8K tokens of a
  # row per chip; every stage compiles and fits (`vidlang compile ... --topology v5p:8x8x8`,
  # README "Launch"):
  vidlang train --config configs/world_model.py:base,stage=5,tokenizer=gs://b/runs/tok,\
init=gs://b/runs/lwm_4 --workdir gs://b/runs/lwm_5

Arguments (comma separated): `tiny` | `base`, `stage=K` (1-based), `tokenizer=PATH` (the video
tokenizer run), `init=PATH` (the previous stage's run; stage 1 starts from scratch),
`steps=N`, `attention=dot_product|ring` (default ring: on one device, as in `tiny`, it is a
blockwise attention that skips future tiles and tiles of different packed documents, 2.6-3x
faster than plain attention on 1K rows and 11x on 4K, see benchmarks/world_model_step.py).
"""

import ml_collections

from vidlang_jax.config import ConfigError, import_sibling, parse_arg
from vidlang_jax.data.sequences import SPECIALS
from vidlang_jax.sharding import LOGICAL_AXIS_RULES

common = import_sibling(__file__, 'common')

# Context length and RoPE theta per stage (theta grows with the context, as in LWM).
TINY_STAGES = ((1024, 10_000.0), (4096, 40_000.0), (8192, 80_000.0))
BASE_STAGES = ((32_768, 1e6), (131_072, 1e7), (262_144, 1e7), (524_288, 2.5e7),
               (1_048_576, 5e7))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False, base=False, stage=1, tokenizer='', init='', steps=0,
                  attention='')
  stages = TINY_STAGES if arg.tiny else BASE_STAGES
  if not 1 <= arg.stage <= len(stages):
    raise ConfigError(f'stage={arg.stage}: this config has stages 1..{len(stages)}.')
  length, theta = stages[arg.stage - 1]
  c = common.trainer('world_model')
  data = common.clip_data(arg.tiny)  # the clips behind the token cache; no augmentation
  c.data = ml_collections.ConfigDict({k: data[k] for k in (
      'name', 'data_dir', 'builder_kwargs', 'train_split', 'num_frames', 'image_size',
      'max_text_len', 'vocab_size', 'tokenizer', 'num_workers', 'num_threads', 'prefetch')})
  c.loss = ml_collections.ConfigDict()
  c.sequence_layout = 'zigzag'  # with ring attention: load-balanced causal work
  c.init_from.path = arg.init
  if arg.stage > 1 and not arg.init:
    raise ConfigError(f'stage={arg.stage} continues a run: pass init=<the stage '
                      f'{arg.stage - 1} workdir>.')

  c.data.format = 'lm_sequences'
  c.data.video_tokenizer = arg.tokenizer or 'runs/tokenizer_tiny'
  c.data.num_codes = 64_000  # the base tokenizer's FSQ levels (8, 8, 8, 5, 5, 5)
  c.data.sequence_length = length
  c.data.lm = ml_collections.ConfigDict(dict(
      frame_stride=1,             # use every `frame_stride`-th cached frame
      video_text_fraction=0.5,    # captioning documents; the rest are text -> video
      text_weight=1.0, video_weight=1.0,
      condition_weight=0.0,       # loss on the conditioning part (first half of a document)
      needle_fraction=0.02,       # rows of needle-in-a-haystack documents in each batch
      needle_min_length=256, needle_max_length=0,  # 0: up to the stage's sequence length
      # ((until_step, max_length), ...): shorter haystacks first (see NeedleRow).
      needle_max_length_schedule=(),
      needle_edge_fraction=0.1,   # facts placed exactly first / last in the haystack
      needle_facts=4,             # keyed facts per training haystack, each asked at the end
      needle_value_len=2, needle_weight=1.0,
      packing_bins=16, max_train_clips=0))  # 0: the whole train split

  c.model = ml_collections.ConfigDict(dict(
      name='world_model', vocab_size=0, width=4096, depth=32, num_heads=32, num_kv_heads=8,
      mlp_dim=11_008, rope_theta=theta, attention=arg.attention or 'ring', block_size=2048,
      # Unrolled layers: with the 32 layers scanned, XLA's TPU buffers for ring attention grow
      # with the ring (98 GiB per v5p chip at 32K over sequence=4, 2.3 TiB at 1M over 128:
      # out of memory); unrolled, stage 1 peaks at 14.7 GiB (docs/launch.md).
      scan=False, remat=True, dtype='bfloat16'))
  c.batch_size = max(1, 4 * 1024 * 1024 // length)  # ~4M tokens per step
  # A device holds 8K tokens of a row: the row is split over `sequence` (ring attention) and
  # the rows over `fsdp`, which takes the remaining devices (on a v5p-512: fsdp 128 x sequence 4
  # at 32K ... fsdp 4 x sequence 128 at 1M; the batch always divides). Weights and optimizer
  # state are sharded over both axes (ZeRO-3 over every chip, as maxtext shards `embed`).
  c.mesh.update(dict(data=1, fsdp=-1, sequence=max(1, length // 8192)))
  c.sharding.logical_axis_rules = [
      (name, ('fsdp', 'sequence') if name == 'embed' else axes)
      for name, axes in LOGICAL_AXIS_RULES]
  c.total_steps = arg.steps or 10_000
  c.optimizer = common.optimizer(learning_rate=4e-4 if arg.stage == 1 else 4e-5,
                                 warmup_steps=500, weight_decay=0.0,
                                 weight_decay_rules=r'.*kernel')
  c.evals.perplexity = ml_collections.ConfigDict(dict(type='lm_perplexity', split='test',
                                                      num_examples=500, batch_size=32))
  c.evals.captioning = ml_collections.ConfigDict(dict(
      type='captioning', split='test', num_examples=1000, batch_size=64,
      subset=common.moving_shapes_subset(c.data.name), joint=[('shape', 'motion')]))
  trained = [n for n, _ in stages[:arg.stage]]
  c.evals.needle = ml_collections.ConfigDict(dict(
      type='needle', split='test', lengths=trained, depths=(0.0, 0.25, 0.5, 0.75, 1.0),
      samples=4, seed=0))
  c.evals.text_to_video = ml_collections.ConfigDict(dict(
      type='text_to_video', split='test', num_samples=8, temperature=1.0, top_k=50))

  if arg.tiny:
    c.data.num_codes = 1000  # levels (8, 5, 5, 5)
    c.data.lm.frame_stride = 2  # 4 of the 8 cached frames: 4 x 8 x 8 codes per clip
    c.data.lm.update(dict(video_text_fraction=0.7, needle_fraction=0.25, needle_min_length=32))
    c.data.lm.packing_bins = 8
    c.data.lm.max_train_clips = 8000
    c.model.update(dict(width=128, depth=4, num_heads=4, num_kv_heads=2, mlp_dim=384,
                        attention=arg.attention or 'ring', block_size=128, scan=False,
                        remat=False, dtype='float32'))
    c.batch_size = max(1, 8192 // length)  # 8K tokens per step
    c.mesh.update(dict(data=-1, fsdp=1, sequence=1))
    c.sharding.logical_axis_rules = []  # the defaults
    c.total_steps = arg.steps or (350, 40, 30)[arg.stage - 1]
    if arg.stage == 1:
      # Haystacks of <= 128 tokens for 80 % of the steps: a needle-only run formed the
      # retrieval circuit at ~700-1,100 steps this way and at 1K was still at a uniform guess
      # after 350 steps of 64-1K haystacks (docs/results.md, "Needle curriculum").
      c.data.lm.needle_max_length_schedule = ((int(0.8 * c.total_steps), 128),)
    c.optimizer.update(dict(learning_rate=3e-3 if arg.stage == 1 else 1e-3,
                            warmup_steps=(60, 10, 5)[arg.stage - 1]))
    c.log_every = 10
    c.eval_every = 100_000
    c.checkpoint_every = 200
    c.evals.perplexity.update(dict(num_examples=200, batch_size=50))
    c.evals.captioning.update(dict(num_examples=300, batch_size=64))
    c.evals.needle.update(dict(samples=2))
    c.evals.text_to_video.update(dict(num_samples=4))
  # Text ids, video codes and the structural tokens, padded to a multiple of 128 (as LLaMA /
  # maxtext pad) so that `tensor` can split the embedding and the LM head: 65,005 is odd and
  # would be replicated on every device. The padding ids are never targets.
  vocab = c.data.vocab_size + c.data.num_codes + len(SPECIALS)
  c.model.vocab_size = -(-vocab // 128) * 128
  return c
