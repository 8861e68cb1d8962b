"""Golden shardings: the PartitionSpec of every train-state leaf (params, optimizer state, step)
of each family's `base` config on a fixed 8-device mesh, against `tests/golden/<family>.json`.

A change to a logical rule, a regex override, a param name or `sharding._fit_spec` shows up
as a leaf-by-leaf diff. After an intended change, regenerate with
`pytest tests/test_golden_shardings.py --update-golden` and review the JSON diff. The
hand-written expectations below say what the rules mean (heads on `tensor`, model width on
`fsdp`, moments as their params), so a golden file regenerated from broken code still fails.
Base configs are pod-sized: only `jax.eval_shape` and `jax.make_jaxpr`, nothing is allocated.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import warnings
from typing import Any, NamedTuple

import jax
import jax.extend as jex
import pytest
from jax.sharding import PartitionSpec as P

from vidlang_jax import config as config_lib
from vidlang_jax import sharding, train

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), 'golden')

# 8 devices; every mesh axis a family's weights use has size 2. Weights never go on `data`, nor
# on `sequence` but in the world model (its config: ZeRO over fsdp x sequence). The world model
# gets `sequence`=2 (and `data`=1: 16 devices would be needed for all four) so that its
# activations show the sequence axis and a weight put on it shows up.
MESHES = {
    'masked_video': dict(data=2, fsdp=2, tensor=2, sequence=1),
    'two_tower': dict(data=2, fsdp=2, tensor=2, sequence=1),
    'video_tokenizer': dict(data=2, fsdp=2, tensor=2, sequence=1),
    'world_model': dict(data=1, fsdp=2, tensor=2, sequence=2),
}
BATCH = ('data', 'fsdp')


class Layout(NamedTuple):
  config: Any
  mesh: jax.sharding.Mesh
  setup: train.Setup
  specs: dict[str, list[Any]]  # 'params/a/b' -> spec as JSON: None | axis | [axes]
  warnings: tuple[str, ...]  # what vidlang_jax.sharding warned while building


class _Messages(logging.Handler):

  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages = []

  def emit(self, record: logging.LogRecord) -> None:
    self.messages.append(record.getMessage())


def _spec_json(spec: P) -> list[Any]:
  return [axes if axes is None or isinstance(axes, str) else list(axes) for axes in spec]


@functools.cache
def _layout(family: str, vocab_size: int = 0) -> Layout:
  """The train-state layout of `configs/<family>.py:base` on `MESHES[family]`, built once."""
  config = config_lib.load(f'configs/{family}.py:base')
  config.mesh.update(MESHES[family])
  if family == 'world_model':
    # Its base unrolls the 32 layers (for memory on TPU); the rules are the same for a scanned
    # stack, which lists one block instead of 32.
    config.model.scan = True
  if vocab_size:
    config.model.vocab_size = vocab_size
  mesh = sharding.make_mesh(config.mesh)
  handler, logger = _Messages(), sharding.log
  level = logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.WARNING)
  try:
    with sharding.use_mesh(mesh, sharding.logical_rules(config)):
      setup = train.build(config, mesh)
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  paths = jax.tree.leaves(sharding.tree_paths(setup.shardings))
  specs = {p: _spec_json(s.spec) for p, s in zip(paths, jax.tree.leaves(setup.shardings))}
  assert len(specs) == len(paths), 'two train-state leaves have the same path'
  return Layout(config, mesh, setup, specs, tuple(handler.messages))


def _golden_text(family: str, specs: dict[str, list[Any]]) -> str:
  """JSON with one leaf per line, sorted, so that a regenerated file reviews as a small diff."""
  lines = [f'    {json.dumps(path)}: {json.dumps(spec)}' for path, spec in sorted(specs.items())]
  return ('{\n'
          f'  "config": "configs/{family}.py:base",\n'
          f'  "mesh": {json.dumps(MESHES[family])},\n'
          '  "specs": {\n' + ',\n'.join(lines) + '\n  }\n}\n')


def _diff(golden: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """One line per leaf that changed, appeared or went, params before the optimizer state."""
  lines = []
  for path in sorted(golden.keys() | current.keys(), key=lambda p: (p.startswith('opt_'), p)):
    old, new = json.dumps(golden.get(path)), json.dumps(current.get(path))
    if path not in current:
      lines.append(f'  missing {path}: golden {old}')
    elif path not in golden:
      lines.append(f'  added   {path}: now {new}')
    elif old != new:
      lines.append(f'  changed {path}: golden {old} -> now {new}')
  return lines


@pytest.mark.parametrize('family', sorted(MESHES))
def test_train_state_shardings_match_golden(family, request):
  specs = _layout(family).specs
  path = os.path.relpath(os.path.join(GOLDEN_DIR, f'{family}.json'))
  if request.config.getoption('--update-golden'):
    os.makedirs(GOLDEN_DIR, exist_ok=True)
    with open(path, 'w') as f:
      f.write(_golden_text(family, specs))
    warnings.warn(f'--update-golden: wrote {path} ({len(specs)} leaves); review its diff.',
                  stacklevel=1)
    return
  if not os.path.exists(path):
    pytest.fail(f'{path} is missing: run `pytest {__file__} --update-golden`.', pytrace=False)
  with open(path) as f:
    golden = json.load(f)
  problems = []
  if golden['mesh'] != MESHES[family]:
    problems.append(f'  mesh: golden {golden["mesh"]} -> now {MESHES[family]}')
  problems += _diff(golden['specs'], specs)
  if problems:
    shown = problems[:40] + ([f'  ... and {len(problems) - 40} more'] if len(problems) > 40 else [])
    pytest.fail(
        f'Shardings of configs/{family}.py:base on mesh {MESHES[family]} differ from {path} '
        f'({len(problems)} differences; if intended, rerun with --update-golden and review the '
        'JSON diff):\n' + '\n'.join(shown), pytrace=False)


@pytest.mark.parametrize('family', sorted(MESHES))
def test_moments_follow_their_params_and_counters_are_replicated(family):
  """AdamW's mu / nu are sharded as their param (else every update reshards them); step and
  counts are scalars; no weight is split over `data` (nor over `sequence`, but in the world
  model, whose config shards weights over it too)."""
  specs = _layout(family).specs
  params = {p[len('params/'):]: s for p, s in specs.items() if p.startswith('params/')}
  moments = 0
  for path, spec in specs.items():
    match = re.fullmatch(r'opt_state/.*/(mu|nu)/(.*)', path)
    if match:
      assert spec == params[match[2]], path
      moments += 1
    elif not path.startswith('params/'):
      assert spec == [], path
  assert moments == 2 * len(params)
  on_batch_axes = [p for p, s in specs.items() if 'data' in _axes(s)]
  assert not on_batch_axes
  if family != 'world_model':  # the one config that shards its weights over `sequence` too
    assert not [p for p, s in specs.items() if 'sequence' in _axes(s)]


def _axes(spec: list[Any]) -> list[str]:
  return [a for axes in spec if axes for a in ([axes] if isinstance(axes, str) else axes)]


# What the logical rules mean, written out: [layers, embed, heads, head_dim] kernels have embed
# on fsdp and heads on tensor, [layers, embed, mlp] kernels mlp on tensor, vocab on tensor. The
# world model's config shards embed over fsdp and sequence (ZeRO over every chip of its mesh).
ZERO = ['fsdp', 'sequence']
EXPECTED = {
    'two_tower': {
        'params/video/encoder/blocks/attn/query/kernel': [None, 'fsdp', 'tensor', None],
        'params/video/encoder/blocks/attn/out/kernel': [None, 'tensor', None, 'fsdp'],
        'params/video/encoder/blocks/mlp/Dense_0/kernel': [None, 'fsdp', 'tensor'],
        'params/video/encoder/blocks/mlp/Dense_1/kernel': [None, 'tensor', 'fsdp'],
        'params/video/encoder/blocks/norm_attn/scale': [None, 'fsdp'],
        'params/video/patch_embed/kernel': [None, 'fsdp'],
        'params/text/encoder/blocks/attn/key/kernel': [None, 'fsdp', 'tensor', None],
        'params/text/token_embedding': ['tensor', 'fsdp'],  # [vocab 1000, embed]
        'params/video_proj/kernel': ['fsdp', None],
    },
    'masked_video': {  # the encoder keeps the two-tower video tower's names and layout
        'params/video/encoder/blocks/attn/query/kernel': [None, 'fsdp', 'tensor', None],
        'params/video/encoder/blocks/mlp/Dense_0/kernel': [None, 'fsdp', 'tensor'],
        'params/decoder/encoder/blocks/attn/value/kernel': [None, 'fsdp', 'tensor', None],
        'params/decoder/encoder/blocks/mlp/Dense_1/kernel': [None, 'tensor', 'fsdp'],
        'params/decoder/embed/kernel': ['fsdp', 'tensor'],  # [encoder width, decoder width]
    },
    'world_model': {
        'params/blocks/attn/query/kernel': [None, ZERO, 'tensor', None],  # 32 heads
        'params/blocks/attn/key/kernel': [None, ZERO, 'tensor', None],  # 8 kv heads
        'params/blocks/attn/value/kernel': [None, ZERO, 'tensor', None],
        'params/blocks/attn/out/kernel': [None, 'tensor', None, ZERO],
        'params/blocks/mlp/gate/kernel': [None, ZERO, 'tensor'],
        'params/blocks/mlp/up/kernel': [None, ZERO, 'tensor'],
        'params/blocks/mlp/down/kernel': [None, 'tensor', ZERO],
        'params/blocks/norm_attn/scale': [None, ZERO],
        'params/norm_out/scale': [ZERO],
        # 1,000 text + 64,000 video codes + 5 specials, padded to 65,024: split over `tensor`.
        'params/token_embedding': ['tensor', ZERO],
        'params/lm_head/kernel': [ZERO, 'tensor'],
    },
}


@pytest.mark.parametrize('family', sorted(EXPECTED))
def test_rules_mean_what_they_say(family):
  specs = _layout(family).specs
  wrong = [f'  {p}: now {json.dumps(specs.get(p))}, expected {json.dumps(s)}'
           for p, s in EXPECTED[family].items() if specs.get(p) != s]
  assert not wrong, 'Shardings that contradict the rules:\n' + '\n'.join(wrong)


def test_world_model_vocab_is_padded_onto_tensor():
  """The config pads the vocabulary to a multiple of 128, so the vocab rule applies."""
  layout = _layout('world_model')
  assert layout.config.model.vocab_size == 65_024
  assert layout.specs['params/token_embedding'] == ['tensor', ZERO]
  assert layout.specs['params/lm_head/kernel'] == [ZERO, 'tensor']
  assert not layout.warnings


def test_odd_vocab_is_replicated_and_reported():
  """An unpadded vocabulary (65,005, odd) cannot be split over `tensor`: that dimension is
  replicated, and one warning per leaf says so."""
  layout = _layout('world_model', vocab_size=65_005)
  for leaf in ('params/token_embedding', 'params/lm_head/kernel'):
    tail = f' of {leaf}: the mesh axes do not divide it.'
    said = [m for m in layout.warnings if m.endswith(tail)]
    assert len(said) == 1, (leaf, layout.warnings)
    assert "(size 65005) over 'tensor' (size 2)" in said[0]
  assert layout.specs['params/token_embedding'] == [None, ZERO]
  assert len(layout.warnings) == 6, layout.warnings  # the 2 weights and their mu / nu


def test_video_tokenizer_is_replicated():
  """Its convs carry no logical names (a small conv net): every leaf is replicated."""
  specs = _layout('video_tokenizer').specs
  assert not [p for p, s in specs.items() if _axes(s)]


def _sharding_constraints(jaxpr: jex.core.Jaxpr) -> list[tuple[tuple[int, ...], P]]:
  """(shape, spec) of every `with_sharding_constraint` in a jaxpr and its sub-jaxprs (scan)."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'sharding_constraint':
      found.append((eqn.invars[0].aval.shape, eqn.params['sharding'].spec))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(sub, jex.core.ClosedJaxpr):
          found += _sharding_constraints(sub.jaxpr)
        elif isinstance(sub, jex.core.Jaxpr):
          found += _sharding_constraints(sub)
  return found


def test_world_model_activations_split_length_over_sequence():
  """The base world model's train-step activations, traced (not compiled): rows over the batch
  axes, the length over `sequence` (ring attention's axis), heads / mlp / vocab over `tensor`."""
  layout = _layout('world_model')
  setup, config = layout.setup, layout.config
  with sharding.use_mesh(layout.mesh, sharding.logical_rules(config)):
    jaxpr = jax.make_jaxpr(lambda p, b: setup.objective.loss(p, b, jax.random.key(0)))(
        setup.abstract_state['params'], setup.batch_spec)
  b, n = setup.batch_spec['inputs'].shape
  m = config.model
  expected = {
      (b, n, m.width): P(BATCH, 'sequence', None),  # residual stream [batch, length, embed]
      (b, n, m.num_heads, m.width // m.num_heads): P(BATCH, 'sequence', 'tensor', None),
      (b, n, m.mlp_dim): P(BATCH, 'sequence', 'tensor'),  # SwiGLU hidden
      (b, n, m.vocab_size): P(BATCH, 'sequence', 'tensor'),  # logits
  }
  found = {}
  for shape, spec in _sharding_constraints(jaxpr.jaxpr):
    found.setdefault(shape, set()).add(spec)
  assert found == {shape: {spec} for shape, spec in expected.items()}
