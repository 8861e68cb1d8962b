"""Registry lookups (with call syntax), regex sharding overrides, and dimensions that the mesh
axes do not divide."""

import flax.linen as nn
import jax
import pytest
from jax.sharding import PartitionSpec as P

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
  spec = lambda pattern: find_leaf(setup.shardings, pattern).spec
  assert spec(r'params/video/patch_embed/kernel') == P(None, None)  # the `()` override
  assert spec(r'opt_state/.*mu/video/patch_embed/kernel') == P(None, None)
  assert spec(r'opt_state/.*nu/video/patch_embed/kernel') == P(None, None)
  assert spec(r'params/video/pos_space') == P(None, 'fsdp')
  # [vocab, embed]: vocab -> tensor (size 1 here, kept), embed -> fsdp.
  assert spec(r'params/text/token_embedding') == P('tensor', 'fsdp')
  assert spec(r'opt_state/.*mu/text/token_embedding') == P('tensor', 'fsdp')
  assert 'no_such_param' in caplog.text


class _Weights(nn.Module):
  """Weights that fsdp=2 x tensor=4 divides, partly or not at all."""

  @nn.compact
  def __call__(self):
    param = lambda name, shape, *axes: self.param(
        name, nn.with_logical_partitioning(nn.initializers.zeros, axes), shape)
    param('divides', (8, 12), 'embed', 'mlp')
    param('odd_mlp', (8, 3), 'embed', 'mlp')
    param('odd_both', (5, 3), 'embed', 'mlp')
    param('odd_embed', (3, 8), 'embed', None)  # dim 1 is free and even: fsdp stays off it
    param('table12', (12, 4), None, None)  # these two are sharded by the regex rules
    param('table16', (16, 4), None, None)


def test_dims_the_mesh_does_not_divide_are_replicated_with_one_warning_per_leaf(caplog):
  mesh = sharding.make_mesh(dict(data=1, fsdp=2, tensor=4, sequence=1))
  abstract = jax.eval_shape(lambda: _Weights().init(jax.random.key(0)))
  over_both = (('fsdp', 'tensor'), None)  # 8 devices on dim 0
  rules = [(r'params/table12', over_both), (r'params/table16', over_both)]
  with caplog.at_level('WARNING', logger='vidlang_jax.sharding'):
    shardings = sharding.infer_shardings(abstract, mesh, regex_rules=rules)
  specs = {k: v.spec for k, v in shardings['params'].items()}
  assert specs == {
      'divides': P('fsdp', 'tensor'),
      'odd_mlp': P('fsdp', None),
      'odd_both': P(None, None),
      'odd_embed': P(None, None),
      'table12': P(None, None),
      'table16': P(('fsdp', 'tensor'), None),
  }
  messages = sorted(r.getMessage() for r in caplog.records)
  assert messages == sorted([
      "Replicating dim 0 (size 12) over ('fsdp', 'tensor') (size 8) of params/table12: "
      'the mesh axes do not divide it.',
      "Replicating dim 0 (size 5) over 'fsdp' (size 2), dim 1 (size 3) over 'tensor' (size 4) "
      'of params/odd_both: the mesh axes do not divide it.',
      "Replicating dim 0 (size 3) over 'fsdp' (size 2) of params/odd_embed: "
      'the mesh axes do not divide it.',
      "Replicating dim 1 (size 3) over 'tensor' (size 4) of params/odd_mlp: "
      'the mesh axes do not divide it.',
  ])
  assert all(r.levelname == 'WARNING' for r in caplog.records)
