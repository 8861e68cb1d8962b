"""Shared test helpers: tiny configs and synthetic batches (no dataset needed)."""

import os

import jax
import numpy as np

from vidlang_jax import config as config_lib
from vidlang_jax.sharding import tree_paths


def tiny_config(**overrides):
  config = config_lib.load('configs/two_tower.py:tiny')
  config.model.video.depth = 2
  config.model.text.depth = 1
  config.batch_size = 16
  config_lib.apply_overrides(config, overrides)
  return config


def synthetic_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  b, d = config.batch_size, config.data
  video = rng.normal(size=(b, d.num_frames, d.image_size, d.image_size, 3)).astype(np.float32)
  text = rng.integers(4, 60, size=(b, d.max_text_len)).astype(np.int32)
  text[:, -5:] = 0  # padding
  return {'video': video, 'text': text}


def find_leaf(tree, pattern):
  """The first leaf whose 'a/b/c' path fully matches the regex (scanned or unrolled layers)."""
  import re

  from vidlang_jax.sharding import tree_paths

  for path, leaf in zip(jax.tree.leaves(tree_paths(tree)), jax.tree.leaves(tree)):
    if re.fullmatch(pattern, path):
      return leaf
  raise KeyError(pattern)


def eval_json(workdir, step):
  """A run's `eval/<step>.json`."""
  import json
  import os

  with open(os.path.join(workdir, 'eval', f'{step}.json')) as f:
    return json.load(f)


def assert_release_round_trip(workdir, step, out, tmp_path, evals=None):
  """`vidlang export` of `workdir` at `step` -> `load_pretrained` -> the release's evaluators:
  the same eval JSON as the run's own, and params equal to the checkpoint's."""
  import numpy as np
  import pytest

  from vidlang_jax import checkpoint as checkpoint_lib
  from vidlang_jax import load_pretrained, release

  release.export(workdir, out, step=step)
  assert checkpoint_lib.is_release(out)
  for name in ('config.json', 'release.json', 'README.md', 'params'):
    assert os.path.exists(os.path.join(out, name)), name
  _, params, _ = load_pretrained(out)
  source, _ = checkpoint_lib.read_params(os.path.join(workdir, 'checkpoints', str(step)))
  flat = {p: v for p, v in zip(jax.tree.leaves(tree_paths(params)), jax.tree.leaves(params))}
  assert flat.keys() == source.keys()
  for path in source:
    np.testing.assert_array_equal(flat[path], source[path], err_msg=path)
  results = release.evaluate(out, str(tmp_path / 'release_eval'), evals)
  expected = eval_json(workdir, step)
  assert set(results) <= set(expected) and (evals or set(results) | {'step'} == set(expected))
  for key, value in results.items():
    assert value == pytest.approx(expected[key], rel=1e-5), key
  return results


def hf_libraries():
  """(torch, transformers) for the converters' parity tests. Where CI runs them the [hf]
  extra is installed, so under CI=true a missing one is a failure, not a skip."""
  import pytest

  if os.environ.get('CI') == 'true':
    import torch
    import transformers
  else:
    torch = pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
  return torch, transformers
