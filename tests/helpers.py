"""Shared test helpers: tiny configs and synthetic batches (no dataset needed)."""

import jax
import numpy as np

from vidlang_jax import config as config_lib


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
