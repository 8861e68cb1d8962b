"""The XLA:CPU defaults join the user's XLA_FLAGS without overriding them."""

from vidlang_jax import xla_cpu


def test_adds_missing_defaults_and_keeps_the_users_flags():
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  xla_cpu.apply_defaults(env)
  for name, value in xla_cpu.DEFAULTS.items():
    assert f'--{name}={value}' in env['XLA_FLAGS']
  assert env['XLA_FLAGS'].startswith('--xla_force_host_platform_device_count=8 ')
  again = dict(env)
  xla_cpu.apply_defaults(again)
  assert again == env  # once only


def test_a_flag_the_user_set_wins_and_the_defaults_can_be_turned_off():
  name = next(iter(xla_cpu.DEFAULTS))
  env = {'XLA_FLAGS': f'--{name}=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE'}
  xla_cpu.apply_defaults(env)
  assert env['XLA_FLAGS'] == f'--{name}=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE'
  off = {'VIDLANG_XLA_DEFAULTS': '0'}
  xla_cpu.apply_defaults(off)
  assert 'XLA_FLAGS' not in off


def test_importing_the_package_applied_them():
  import os

  assert all(f'--{name}=' in os.environ['XLA_FLAGS'] for name in xla_cpu.DEFAULTS)
