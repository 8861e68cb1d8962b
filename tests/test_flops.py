"""The MFU numerator: `train.step_flops_per_device` against the analytic count per family
(vidlang_jax/flops.py, as nanoGPT / maxtext count). Elementwise work is left out of that
count, so the towers use head_dim 64 (as real models do) and the counts agree within 5 %.
Checked on one device, and per device on fsdp=8 where the batch really is split, for the
scanned stack (counted through its unrolled twin) and the unrolled one (XLA's compiled count
of the partitioned program).
"""

import jax

from vidlang_jax import config as config_lib
from vidlang_jax import sharding, train
from vidlang_jax.flops import masked_video as masked_video_flops
from vidlang_jax.flops import two_tower as two_tower_flops
from vidlang_jax.flops import world_model


def step_flops(config, devices=None):
  mesh = sharding.make_mesh(config.mesh, devices)
  with jax.set_mesh(mesh):
    setup = train.build(config, mesh)
    compiled = train.make_train_step(setup.objective, setup.tx, setup.schedule,
                                     setup.shardings).lower(
        setup.abstract_state, setup.batch_spec, jax.random.key(0)).compile()
    return train.step_flops_per_device(config, compiled, mesh, setup.batch_spec)


def two_tower_config():
  c = config_lib.load('configs/two_tower.py:tiny')
  c.batch_size = 16
  c.model.video.update(num_heads=2, depth=3)
  c.model.text.num_heads = 2
  return c


def assert_close(got, want, tolerance=0.05):
  assert abs(got / want - 1) < tolerance, f'XLA {got:.4g} vs formula {want:.4g}: x{got / want:.3f}'


def test_two_tower_on_one_device_unrolled_and_scanned():
  config = two_tower_config()
  assert_close(step_flops(config, jax.devices()[:1]), two_tower_flops(config))
  config.model.video.scan = config.model.text.scan = True
  config.mesh.update(data=1, fsdp=8)
  assert_close(step_flops(config) * 8, two_tower_flops(config))


def test_per_device_share_on_a_mesh_that_splits_the_batch():
  config = two_tower_config()
  config.mesh.update(data=2, fsdp=4)  # 16 examples, 2 per device
  assert_close(step_flops(config), two_tower_flops(config) / 8)


def test_masked_video_encoder_sees_only_visible_tubelets():
  config = config_lib.load('configs/masked_video.py:tiny')  # tube masking at 0.9
  config.batch_size = 16
  config.model.video.num_heads = 2
  config.model.decoder.update(width=128, num_heads=2, mlp_dim=256)
  assert_close(step_flops(config, jax.devices()[:1]), masked_video_flops(config))


def test_world_model_scanned():
  config = config_lib.load('configs/world_model.py:tiny,attention=dot_product')
  config.model.update(width=256, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=512, scan=True)
  config.data.sequence_length, config.batch_size = 256, 4
  # The reference attention computes the whole causal square.
  assert_close(step_flops(config, jax.devices()[:1]), world_model(config, causal_half=False))
