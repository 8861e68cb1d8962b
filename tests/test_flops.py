"""The MFU numerator: train-step FLOPs from XLA agree with and without layer scan."""

import jax

from vidlang_jax import registry, sharding, train
from vidlang_jax.data import pipeline
from vidlang_jax.optimizer import make_optimizer

from helpers import tiny_config


def compiled_flops(config, mesh):
  with jax.set_mesh(mesh):
    model = train.build_model(config)
    objective = registry.lookup(config.objective, kind='objective')(model, config)
    tx, schedule = make_optimizer(config.optimizer, config.total_steps)
    spec = pipeline.batch_spec(config.data, config.batch_size, mesh)
    _, shardings, abstract = train.train_state_layout(config, objective, tx, mesh, spec)
    compiled = train.make_train_step(objective, tx, schedule, shardings).lower(
        abstract, spec, jax.random.key(0)).compile()
    return train.step_flops_per_device(config, compiled, mesh, spec)


def test_scan_and_unrolled_flops_agree():
  config = tiny_config()
  config.model.video.depth = 3
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  unrolled = compiled_flops(config, mesh)
  config.model.video.scan = config.model.text.scan = True
  scanned = compiled_flops(config, mesh)
  assert abs(scanned - unrolled) / unrolled < 0.02, (scanned, unrolled)
  # Sanity: at least the dense matmuls of the video tower (6 * params * tokens per example).
  v = config.model.video
  tokens = (v.num_frames // v.tubelet[0]) * (v.image_size // v.tubelet[1]) ** 2
  dense_params = v.depth * (4 * v.width**2 + 2 * v.width * v.mlp_dim)
  assert unrolled > 6 * dense_params * tokens * config.batch_size
