"""Config loading, overrides and the errors users see."""

import subprocess
import sys

import pytest

from vidlang_jax import config as config_lib


def test_tiny_and_base_load_with_required_keys():
  for arg in ('tiny', 'base', 'tiny,loss=softmax,attention=divided,steps=7'):
    config = config_lib.load(f'configs/two_tower.py:{arg}')
    for key in config_lib.REQUIRED_KEYS:
      assert key in config
  config = config_lib.load('configs/two_tower.py:tiny,loss=softmax,steps=7')
  assert (config.loss.kind, config.total_steps, config.model.bias_init) == ('softmax', 7, None)


def test_overrides_are_typed():
  config = config_lib.load('configs/two_tower.py:tiny',
                           ['optimizer.learning_rate=1', 'total_steps=5', 'mesh.fsdp=2'])
  assert config.optimizer.learning_rate == 1.0 and isinstance(config.optimizer.learning_rate, float)
  assert config.total_steps == 5 and config.mesh.fsdp == 2


def test_unknown_keys_are_named():
  with pytest.raises(config_lib.ConfigError, match='optimizer.learning_rat'):
    config_lib.load('configs/two_tower.py:tiny', ['optimizer.learning_rat=1'])
  with pytest.raises(config_lib.ConfigError, match='nonexistent'):
    config_lib.load('configs/two_tower.py:tiny', ['nonexistent.key=1'])
  with pytest.raises(config_lib.ConfigError, match='tinny'):
    config_lib.load('configs/two_tower.py:tinny')
  with pytest.raises(FileNotFoundError, match='nope.py'):
    config_lib.load('configs/nope.py:tiny')


def test_cli_unknown_key_fails_with_its_name(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'vidlang_jax', 'train', '--config', 'configs/two_tower.py:tiny',
       '--workdir', str(tmp_path), '--config.optimizer.nonexistent_key=3'],
      capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert 'nonexistent_key' in result.stderr
  assert 'Traceback' not in result.stderr


def test_base_config_lays_out_fsdp_on_eight_devices():
  """The pod config's shapes and shardings, without allocating (eval_shape only)."""
  import jax

  from vidlang_jax import sharding, train

  config = config_lib.load('configs/two_tower.py:base', ['mesh.data=1', 'mesh.fsdp=8',
                                                          'batch_size=16'])
  mesh = sharding.make_mesh(config.mesh)
  with sharding.use_mesh(mesh):
    setup = train.build(config, mesh)
  params = setup.abstract_state['params']
  count = sum(x.size for x in jax.tree.leaves(params))
  assert 120e6 < count < 135e6, count  # ViT-B/16 video tower (86M) + 12 x 512 text tower (38M)
  kernel = params['video']['encoder']['blocks']['mlp']['Dense_0']['kernel']
  assert kernel.shape == (12, 768, 3072) and 'fsdp' in str(kernel.sharding.spec)
  shard_shape = kernel.sharding.shard_shape(kernel.shape)
  assert shard_shape == (12, 96, 3072)  # the model dimension split over 8 devices
