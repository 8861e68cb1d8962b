"""The fine-tuning recipes end to end on the tiny dataset: a two-tower run is exported, and
`configs/finetune_retrieval.py` trains from the release; `frozen_spatial` leaves every spatial
param bitwise as loaded while the rest moves; the recipes' arguments reach the optimizer."""

import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from vidlang_jax import checkpoint as checkpoint_lib
from vidlang_jax import config as config_lib
from vidlang_jax import masking, release, train
from vidlang_jax.sharding import tree_paths

from helpers import eval_json, tiny_config


def _flat(params):
  return {p: np.asarray(v) for p, v in zip(jax.tree.leaves(tree_paths(params)),
                                           jax.tree.leaves(params))}


def test_finetune_retrieval_from_a_release_frozen_spatial(tiny_data_dir, tmp_path):
  pretrain = tiny_config(total_steps=2, log_every=1, checkpoint_every=2, eval_every=100)
  pretrain.data.update(name='moving_shapes/tiny', data_dir=tiny_data_dir, num_workers=0)
  pretrain.evals.retrieval.batch_size = 32
  del pretrain.evals['probe']
  train.train_and_evaluate(pretrain, str(tmp_path / 'pretrain'))
  rel = release.export(str(tmp_path / 'pretrain'), str(tmp_path / 'release'))

  config = config_lib.load(f'configs/finetune_retrieval.py:tiny,init={rel},steps=2,'
                           'frozen_spatial,lr=0.01')
  assert config.model.to_dict() == release.load_config(rel).model.to_dict()
  assert config.init_from.path == rel and config.init_from.dont_load == []
  config.update(dict(batch_size=16, log_every=1, checkpoint_every=2))
  config.evals.retrieval.batch_size = 32
  train.train_and_evaluate(config, str(tmp_path / 'finetune'))

  before = _flat(checkpoint_lib.read_params_tree(rel)[0])
  after = _flat(checkpoint_lib.read_params_tree(str(tmp_path / 'finetune'))[0])
  assert before.keys() == after.keys()
  frozen = [p for p in before if p.startswith(('video/patch_embed', 'video/pos_space',
                                               'video/encoder'))]
  assert len(frozen) > 10
  for path in frozen:
    np.testing.assert_array_equal(after[path], before[path], err_msg=path)
  for path in ('video/pos_time', 'video_proj/kernel', 'text/token_embedding', 'logit_scale'):
    assert not np.array_equal(after[path], before[path]), path
  assert 't2v_r1' in eval_json(str(tmp_path / 'finetune'), 2)


def test_finetune_recipes_arguments(tmp_path):
  classification = config_lib.load('configs/finetune_classification.py:base')
  assert classification.optimizer.layer_decay == 0.75  # VideoMAE's fine-tuning recipe
  assert config_lib.load('configs/finetune_classification.py:tiny').optimizer.layer_decay == 1.0
  frozen = config_lib.load('configs/finetune_classification.py:tiny,frozen_spatial,'
                           'layer_decay=0.5').optimizer
  assert frozen.layer_decay == 0.5 and frozen.freeze.startswith('video/(patch_embed')
  with pytest.raises(config_lib.ConfigError, match='init=PATH'):
    config_lib.load('configs/finetune_retrieval.py:tiny')


def test_finetune_classification_takes_the_release_video_tower(tiny_data_dir, tmp_path):
  """A release whose video tower differs from ours (here sin-cos positions and erf GELU, as a
  converted VideoMAE's) is what the classifier is built with, fed its frames."""
  config = config_lib.load('configs/masked_video.py:tiny')
  config.model.video.update(dict(posemb='sincos', act='gelu', num_frames=4, depth=1))
  config.data.update(dict(num_frames=4, name='moving_shapes/tiny', data_dir=tiny_data_dir))
  params = nn.meta.unbox(jax.jit(train.build_model(config).init)(
      jax.random.key(0), np.zeros((1, 4, 32, 32, 3), np.float32),
      _all_visible())['params'])
  rel = release.write(str(tmp_path / 'release'), config, params)
  finetune = config_lib.load(f'configs/finetune_classification.py:tiny,init={rel}')
  assert finetune.model.video.posemb == 'sincos' and finetune.data.num_frames == 4
  assert 'video/pos_time' not in _flat(params) and os.path.exists(rel)


def _all_visible():
  tokens = (4 // 2) * (32 // 8) ** 2  # frames / tubelet time x (32 / 8)^2
  return masking.from_boolean(np.zeros((1, tokens), bool), tokens)
