"""Every test sees 8 fake CPU devices, so sharding and ring code run as on a small pod slice."""

import os

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  """`moving_shapes/tiny` (256 / 32 / 64 clips of 16x32x32) built once per test session."""
  from vidlang_jax.data import builders

  data_dir = str(tmp_path_factory.mktemp('datasets'))
  builders.prepare('moving_shapes/tiny', data_dir)
  return data_dir


def pytest_addoption(parser):
  parser.addoption('--update-golden', action='store_true', default=False,
                   help='rewrite tests/golden/*.json from the current code instead of '
                        'comparing against them (review the diff before committing)')
