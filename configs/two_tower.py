"""Two-tower video-text contrastive pretraining (SigLIP / CLIP style) on moving_shapes.

  # The demo: 2 CPU cores, a few minutes.
  vidlang train --config configs/two_tower.py:tiny --workdir runs/demo
  vidlang eval  --config configs/two_tower.py:tiny --workdir runs/demo

  # ViT-B/16-sized towers on a pod slice (FSDP over all chips):
  vidlang train --config configs/two_tower.py:base --workdir gs://bucket/runs/vt_base \
      --config.mesh.fsdp=-1 --config.mesh.data=1

Arguments (comma separated): `tiny` | `base`, `loss=sigmoid|softmax`, `attention=joint|divided`,
`steps=N`, `dataset=NAME` (e.g. `video_text_folder/my_videos`), `labels=a+b` (the dataset's
label features the linear probe reads; default shape+motion). Any key can also be overridden
with `--config.a.b=value`.

Expected (tiny, 2 CPU cores): text -> video R@1 ~0.73, probes shape ~0.29 / motion ~0.77
(docs/results.md).
"""

import ml_collections

from vidlang_jax.config import import_sibling, parse_arg

common = import_sibling(__file__, 'common')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False, base=False, loss='sigmoid', attention='joint', steps=0,
                  dataset='', labels='')
  c = common.trainer('contrastive')
  c.data = common.clip_data(arg.tiny, arg.dataset)

  c.model = ml_collections.ConfigDict()
  c.model.name = 'two_tower'
  c.model.embed_dim = 128 if arg.tiny else 512
  c.model.temperature_init = 10.0 if arg.loss == 'sigmoid' else 1 / 0.07
  c.model.bias_init = -10.0 if arg.loss == 'sigmoid' else None
  c.model.video = common.video_tower(arg.tiny, arg.attention)
  c.model.text = common.text_tower(arg.tiny)
  c.loss = ml_collections.ConfigDict(dict(kind=arg.loss))

  c.batch_size = 4096
  c.total_steps = arg.steps or 20_000
  c.optimizer = common.optimizer()

  c.evals.retrieval = ml_collections.ConfigDict(dict(type='retrieval', split='test',
                                                     batch_size=1024))
  # Ridge probe of the pooled video features (see vidlang_jax/evaluators/linear_probe.py).
  c.evals.probe = common.linear_probe(arg.tiny, c.data.name,
                                      common.label_list(arg.labels, ('shape', 'motion')))

  if arg.tiny:
    # 2 CPU cores, ~10 minutes: small towers, evaluated once at the end.
    c.batch_size = 128
    c.total_steps = arg.steps or 700
    c.optimizer.update(dict(learning_rate=1e-3, warmup_steps=100))
    c.log_every = 20
    c.eval_every = 1000
    c.checkpoint_every = 350
    c.evals.retrieval.batch_size = 200
  return c
