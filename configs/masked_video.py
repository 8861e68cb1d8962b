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
`tiny,joint` alone defaults to random masking at 0.25, see README results),
`joint` (MAE + contrastive), `guide=PATH` (the two-tower run for text-guided masking),
`loss=sigmoid|softmax`, `steps=N`. Model, data, mesh and optimizer keys follow
`configs/two_tower.py`, so the encoder is the two-tower video tower and checkpoints move
between the two families.
"""

import os

import ml_collections

from vidlang_jax.config import from_file, parse_arg


def _two_tower_config(arg: str) -> ml_collections.ConfigDict:
  return from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'two_tower.py'), arg)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False, base=False, masking='', ratio=0.0, joint=False, guide='',
                  loss='sigmoid', steps=0)
  # tiny's 4x4 patch grid leaves objects unseen under heavy tube masking, which starves the
  # contrastive half of the joint objective: tiny,joint defaults to random masking at 0.25.
  tiny_joint = arg.tiny and arg.joint
  masking = arg.masking or ('random' if tiny_joint else 'tube')
  ratio = arg.ratio or (0.25 if tiny_joint and not arg.masking else
                        0.75 if masking == 'running_cell' else 0.9)
  size = 'tiny' if arg.tiny else 'base'
  c = _two_tower_config(f'{size},loss={arg.loss}')
  c.objective = 'masked_video'
  c.model.name = 'masked_video'
  if not arg.joint:
    c.model.text = None
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
  c.optimizer.update(dict(learning_rate=6e-4, warmup_steps=10_000, b2=0.95, weight_decay=0.05))

  # The two-tower config's linear probe (and retrieval, for the joint model), + reconstruction.
  if not arg.joint:
    del c.evals['retrieval']
  c.evals.probe.random_init_baseline = bool(arg.tiny)
  c.evals.recon = ml_collections.ConfigDict(dict(
      type='reconstruction', split='test', num_examples=512, batch_size=256, num_images=4))

  if masking == 'text_guided':
    # The guide is a frozen two-tower model of the same size under params/guide, loaded from
    # its run by the init_from rules below and never updated.
    c.masking.guide_model = _two_tower_config(f'{size},loss={arg.loss}').model
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
    c.checkpoint_every = 500
    c.eval_every = 10_000  # once, at the end
    c.evals.recon.update(dict(num_examples=200, batch_size=200))
  return c
