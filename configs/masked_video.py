"""Masked video modeling (VideoMAE) and joint MAE + contrastive (TGM) on moving_shapes.

  # VideoMAE, tube masking at 0.9, 2 CPU cores, ~10 minutes; then the probes again:
  vidlang train --config configs/masked_video.py:tiny --workdir runs/mae_tiny
  vidlang eval  --config configs/masked_video.py:tiny --workdir runs/mae_tiny

  # Joint MAE + video-text contrastive in one forward pass (adds a text tower, retrieval eval):
  vidlang train --config configs/masked_video.py:tiny,joint --workdir runs/joint_tiny

  # Text-guided masking, guided by a frozen two-tower run of the same size:
  vidlang train --config configs/masked_video.py:tiny,joint,masking=text_guided,\
guide=runs/two_tower_tiny --workdir runs/tgm_tiny

  # ViT-B/16 VideoMAE on a pod slice:
  vidlang train --config configs/masked_video.py:base --workdir gs://bucket/runs/mae_base \
      --config.mesh.fsdp=-1 --config.mesh.data=1

Arguments (comma separated): `tiny` | `base`, `masking=tube|random|running_cell|text_guided`,
`ratio=R` (default 0.9; 0.75 for running_cell, which masks whole quarters of 2x2 cells;
`tiny,joint` alone defaults to random masking at 0.25, see docs/results.md),
`joint` (MAE + contrastive), `guide=PATH` (the two-tower run for text-guided masking),
`loss=sigmoid|softmax`, `steps=N`, `dataset=NAME`, `labels=a+b` (probed labels). The encoder
is the two-tower video tower under the same names, so checkpoints move between the two
families.

Expected (tiny, 2 CPU cores, 1,500 steps): probes shape ~0.41 / motion ~0.86, reconstruction
PSNR ~19.5 dB on the masked tubelets (docs/results.md).
"""

import ml_collections

from vidlang_jax.config import import_sibling, parse_arg

common = import_sibling(__file__, 'common')


def _towers(tiny: bool, loss: str, joint: bool) -> ml_collections.ConfigDict:
  """The two-tower model's keys: the encoder (and, when `joint`, text tower and projections)
  keep its names, so checkpoints move between the families."""
  return ml_collections.ConfigDict(dict(
      name='two_tower', embed_dim=128 if tiny else 512,
      temperature_init=10.0 if loss == 'sigmoid' else 1 / 0.07,
      bias_init=-10.0 if loss == 'sigmoid' else None,
      video=common.video_tower(tiny), text=common.text_tower(tiny) if joint else None))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False, base=False, masking='', ratio=0.0, joint=False, guide='',
                  loss='sigmoid', steps=0, dataset='', labels='')
  # tiny's 4x4 patch grid leaves objects unseen under heavy tube masking, which starves the
  # contrastive half of the joint objective: tiny,joint defaults to random masking at 0.25.
  tiny_joint = arg.tiny and arg.joint
  masking = arg.masking or ('random' if tiny_joint else 'tube')
  ratio = arg.ratio or (0.25 if tiny_joint and not arg.masking else
                        0.75 if masking == 'running_cell' else 0.9)
  c = common.trainer('masked_video')
  c.data = common.clip_data(arg.tiny, arg.dataset)
  c.model = _towers(arg.tiny, arg.loss, arg.joint)
  c.model.name = 'masked_video'
  # VideoMAE's decoder: 4 blocks of width 384 (ViT-B encoder).
  c.model.decoder = ml_collections.ConfigDict(dict(
      width=384, depth=4, num_heads=6, mlp_dim=1536, scan=True, remat=True))

  c.masking = ml_collections.ConfigDict()
  c.masking.kind = masking
  c.masking.ratio = ratio
  # text_guided: this fraction of the masked patches is drawn at random instead (TGM mixes).
  c.masking.random_fraction = 0.0
  c.masking.guide_model = None

  c.loss = ml_collections.ConfigDict(dict(
      kind=arg.loss, recon_weight=1.0, contrastive_weight=1.0 if arg.joint else 0.0,
      normalize_target=True, target_var_eps=1e-6))

  # VideoMAE: AdamW, betas (0.9, 0.95), weight decay 0.05, lr 1.5e-4 x batch / 256.
  c.batch_size = 1024
  c.total_steps = arg.steps or 100_000
  c.optimizer = common.optimizer(learning_rate=6e-4, warmup_steps=10_000, weight_decay=0.05)

  # Retrieval for the joint model; the linear probe; reconstruction.
  if arg.joint:
    c.evals.retrieval = ml_collections.ConfigDict(dict(
        type='retrieval', split='test', batch_size=200 if arg.tiny else 1024))
  c.evals.probe = common.linear_probe(arg.tiny, c.data.name,
                                      common.label_list(arg.labels, ('shape', 'motion')))
  c.evals.probe.random_init_baseline = bool(arg.tiny)
  c.evals.recon = ml_collections.ConfigDict(dict(
      type='reconstruction', split='test', num_examples=512, batch_size=256, num_images=4))

  if masking == 'text_guided':
    # The guide is a frozen two-tower model of the same size under params/guide, loaded from
    # its run by the init_from rules below and never updated.
    c.masking.guide_model = _towers(arg.tiny, arg.loss, joint=True)
    c.init_from.path = arg.guide
    c.init_from.load = [('guide/(.*)', r'\1')]
    c.init_from.dont_load = ['(?!guide/).*']
    c.optimizer.freeze = 'guide/.*'

  if arg.tiny:
    c.model.decoder.update(dict(width=64, depth=2, num_heads=4, mlp_dim=128, scan=False,
                                remat=False))
    c.batch_size = 128
    c.total_steps = arg.steps or (700 if arg.joint else 1500)  # joint: as two_tower tiny
    c.optimizer.update(dict(learning_rate=1e-3, warmup_steps=100))
    c.log_every = 20
    c.checkpoint_every = 500
    c.eval_every = 10_000  # once, at the end
    c.evals.recon.update(dict(num_examples=200, batch_size=200))
  return c
