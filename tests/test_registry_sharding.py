"""Registry lookups (with call syntax) and regex sharding overrides."""

import jax
import pytest

from vidlang_jax import registry, sharding

from helpers import find_leaf, tiny_config


def test_lookup_with_arguments_and_unknown_names():
  sigmoid = registry.lookup("loss.sigmoid(batch_axes=('data',))")
  assert sigmoid.keywords == {'batch_axes': ('data',)}
  assert registry.lookup('softmax', kind='loss') is registry.lookup('loss.softmax')
  with pytest.raises(KeyError, match=r"loss.nope.*loss.sigmoid"):
    registry.lookup('loss.nope')
  with pytest.raises(KeyError, match='registered twice'):
    registry.register('loss.softmax')(lambda: None)


def test_regex_rule_overrides_params_and_moments(caplog):
  from vidlang_jax import train

  config = tiny_config()
  config.mesh.update(data=1, fsdp=8)
  config.sharding.rules = [(r'.*video/patch_embed/kernel', ()), (r'.*no_such_param', ('fsdp',))]
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh), caplog.at_level('WARNING'):
    setup = train.build(config, mesh)
  replicated = lambda s: all(axes is None for axes in s.spec)
  assert replicated(find_leaf(setup.shardings, r'params/video/patch_embed/kernel'))
  assert replicated(find_leaf(setup.shardings, r'opt_state/.*mu/video/patch_embed/kernel'))
  assert not replicated(find_leaf(setup.shardings, r'params/video/pos_space'))
  assert 'fsdp' in str(find_leaf(setup.shardings, r'params/text/token_embedding').spec)
  assert 'no_such_param' in caplog.text
