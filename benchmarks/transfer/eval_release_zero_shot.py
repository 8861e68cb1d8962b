"""Zero-shot video retrieval of a release under the fine-tune's own eval config
(configs/finetune_retrieval.py:tiny,init=REL,dataset=...): the step-0 point of the fine-tune.

  .venv/bin/python benchmarks/transfer/eval_release_zero_shot.py releases/clip_frames runs/zs \
      moving_shapes/small
"""
import json
import sys

import vidlang_jax
from vidlang_jax import config as config_lib
from vidlang_jax import sharding, train

rel, workdir, dataset = sys.argv[1:4]
config = config_lib.load(f'configs/finetune_retrieval.py:tiny,init={rel},dataset={dataset}')
mesh = sharding.make_mesh(config.mesh)
with sharding.use_mesh(mesh, sharding.logical_rules(config)):
  model, params, _ = vidlang_jax.load_pretrained(rel, mesh)
  results = train.run_evals(train.build_evaluators(config, model, mesh), params, 0, workdir)
print(json.dumps(results, indent=1, default=float))
