"""The MFU numerator: train-step FLOPs from XLA agree with and without layer scan."""

import jax

from vidlang_jax import sharding, train

from helpers import tiny_config


def compiled_flops(config, mesh):
  with jax.set_mesh(mesh):
    setup = train.build(config, mesh)
    compiled = train.make_train_step(setup.objective, setup.tx, setup.schedule,
                                     setup.shardings).lower(
        setup.abstract_state, setup.batch_spec, jax.random.key(0)).compile()
    return train.step_flops_per_device(config, compiled, mesh, setup.batch_spec)


def test_scan_and_unrolled_flops_agree():
  config = tiny_config()
  config.model.video.depth = 3
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  unrolled = compiled_flops(config, mesh)
  config.model.video.scan = config.model.text.scan = True
  scanned = compiled_flops(config, mesh)
  assert abs(scanned - unrolled) / unrolled < 0.02, (scanned, unrolled)
  # Per device on 8 devices (fsdp=8): about an eighth (plus a little collective overhead).
  config.mesh.update(data=1, fsdp=8)
  per_device = compiled_flops(config, sharding.make_mesh(config.mesh))
  assert 0.9 < per_device * 8 / unrolled < 1.2, per_device * 8 / unrolled
  # Sanity: at least the dense matmuls of the video tower (6 * params * tokens per example).
  v = config.model.video
  tokens = (v.num_frames // v.tubelet[0]) * (v.image_size // v.tubelet[1]) ** 2
  dense_params = v.depth * (4 * v.width**2 + 2 * v.width * v.mlp_dim)
  assert unrolled > 6 * dense_params * tokens * config.batch_size
