"""Masked video family end to end on the tiny dataset: two-tower run -> text-guided joint MAE
run guided by it -> fine-tuning from the MAE encoder; eval JSON keys, picture, partial loads."""

import os

import numpy as np

from vidlang_jax import checkpoint as checkpoint_lib
from vidlang_jax import config as config_lib
from vidlang_jax import train

from helpers import assert_release_round_trip, eval_json


def small(config, data_dir, steps=2):
  """Depth-1 towers, batch 16, the tiny dataset, small evals."""
  for model in (config.model, config.get('masking', {}).get('guide_model')):
    if model is not None:
      model.video.depth = 1
      if model.get('text') is not None:
        model.text.depth = 1
  config.update(total_steps=steps, log_every=1, checkpoint_every=steps, eval_every=100,
                batch_size=16, peak_flops_per_device=1e11)
  config.data.update(name='moving_shapes/tiny', data_dir=data_dir, num_workers=0)
  for eval_config in config.evals.values():
    eval_config.batch_size = 32
  if 'probe' in config.evals:
    config.evals.probe.train_examples = 128
  if 'recon' in config.evals:
    config.evals.recon.num_examples = 40
  return config


def test_guided_joint_mae_then_finetune(tiny_data_dir, tmp_path):
  guide_dir, mae_dir, finetune_dir = (str(tmp_path / n) for n in ('guide', 'mae', 'finetune'))
  train.train_and_evaluate(small(config_lib.load('configs/two_tower.py:tiny'), tiny_data_dir),
                           guide_dir)

  spec = f'configs/masked_video.py:tiny,joint,masking=text_guided,guide={guide_dir}'
  train.train_and_evaluate(small(config_lib.load(spec), tiny_data_dir), mae_dir)
  results = eval_json(mae_dir, 2)
  for key in ('probe_shape_acc', 'probe_motion_acc', 'probe_random_init_shape_acc',
              'probe_random_init_motion_acc', 'probe_shape_acc_all_clips'):
    assert 0 <= results[key] <= 1, key
  assert 0 < results['probe_num_test'] < 64  # the one-object clips of the test split
  assert np.isfinite(results['recon_psnr']) and results['recon_psnr'] > 0
  assert 0 <= results['t2v_r1'] <= 1  # the joint model also runs the retrieval evaluator
  assert os.path.getsize(os.path.join(mae_dir, 'recon', '2.png')) > 0

  # The guide was loaded from the two-tower run and stayed frozen; the model's own towers
  # (same names as the two-tower's) were trained from their own initialisation.
  guide, _ = checkpoint_lib.read_params(guide_dir)
  mae, _ = checkpoint_lib.read_params(mae_dir)
  for path, value in guide.items():
    np.testing.assert_array_equal(mae[f'guide/{path}'], value)
    assert mae[path].shape == value.shape
  assert any(p.startswith('decoder/') for p in mae)

  # Exported (with its frozen guide) and loaded back: the same probe, reconstruction and
  # retrieval JSON.
  release_dir = str(tmp_path / 'mae_release')
  assert_release_round_trip(mae_dir, 2, release_dir, tmp_path)

  # Fine-tuning from the release loads only the encoder: with a zero learning rate it stays
  # exactly the MAE's.
  config = small(config_lib.load(
      f'configs/finetune_classification.py:tiny,init={release_dir}'), tiny_data_dir)
  config.optimizer.learning_rate = 0.0
  train.train_and_evaluate(config, finetune_dir)
  finetuned, _ = checkpoint_lib.read_params(finetune_dir)
  encoder = [p for p in finetuned if p.startswith('video/')]
  assert encoder and all(np.array_equal(finetuned[p], mae[p]) for p in encoder)
  assert not any(p.startswith(('decoder/', 'text/', 'guide/')) for p in finetuned)
  results = eval_json(finetune_dir, 2)
  for key in ('shape_acc', 'motion_acc', 'shape_acc_single_object'):
    assert 0 <= results[key] <= 1, key
