"""Masked video modeling: targets, loss, encoder cost, parameter names shared with two-tower."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidlang_jax import config as config_lib
from vidlang_jax import masking, sharding, train
from vidlang_jax.evaluators.linear_probe import ridge_probe
from vidlang_jax.models import masked_video as mv
from vidlang_jax.models.two_tower import TwoTower
from vidlang_jax.models.video_vit import VideoViT

from helpers import synthetic_batch

TUBELET = (2, 8, 8)


def mae_config(arg='tiny', **overrides):
  config = config_lib.load(f'configs/masked_video.py:{arg}', overrides)
  config.batch_size = 8
  return config


def video_batch(batch=2, frames=8, size=32, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, frames, size, size, 3)),
                     jnp.float32)


def test_targets_map_back_to_pixels():
  video = video_batch()
  target, mean, std = mv.tubelet_targets(video, TUBELET, normalize=True)
  assert target.shape == (2, 4 * 4 * 4, 2 * 8 * 8 * 3)
  # Each tubelet's target has zero mean and unit std per channel.
  per_channel = target.reshape(2, 64, -1, 3)
  np.testing.assert_allclose(per_channel.mean(2), 0, atol=1e-5)
  np.testing.assert_allclose(per_channel.std(2, ddof=1), 1, atol=1e-3)
  # A perfect prediction maps back to the clip's pixels (where they are inside [0, 1]).
  pixels = mv.unpatchify(mv.prediction_pixels(target, mean, std), (4, 4, 4), TUBELET)
  np.testing.assert_allclose(pixels, jnp.clip(mv.pixels_01(video), 0, 1), atol=1e-5)


def test_loss_ignores_visible_tokens():
  mask = masking.tube_mask(jax.random.key(0), 2, (4, 4, 4), 0.75).mask
  pred = jax.random.normal(jax.random.key(1), (2, 64, 12))
  target = jax.random.normal(jax.random.key(2), (2, 64, 12))
  grad = jax.grad(mv.masked_mse)(pred, target, mask)
  assert np.all(grad[~mask] == 0)
  assert np.all(np.abs(grad[mask]).sum(-1) > 0)
  # Changing the visible predictions does not change the loss.
  moved = jnp.where(mask[..., None], pred, pred + 10.0)
  assert mv.masked_mse(moved, target, mask) == mv.masked_mse(pred, target, mask)


def test_visible_embedding_equals_gathered_full_embedding():
  vit = VideoViT(width=32, depth=1, num_heads=2, tubelet=TUBELET, num_frames=8, image_size=32,
                 scan=False)
  video = video_batch()
  params = vit.init(jax.random.key(0), video)
  keep = masking.random_mask(jax.random.key(1), 2, (4, 4, 4), 0.9).keep_indices
  full = vit.apply(params, video, method=vit.embed).reshape(2, 64, 32)
  visible = vit.apply(params, video, keep, method=vit.embed)
  np.testing.assert_allclose(visible, masking.gather_tokens(full, keep), atol=1e-5)


def test_encoder_flops_shrink_with_mask_ratio():
  config = mae_config()
  model = train.build_model(config)
  video = video_batch(batch=8)
  grid = mv.token_grid(video.shape, tuple(config.model.video.tubelet))
  mask = masking.tube_mask(jax.random.key(0), 8, grid, 0.9)
  t, h, w = grid
  assert mask.keep_indices.shape[1] == t * (h * w - round(0.9 * h * w))
  params = jax.jit(model.init)(jax.random.key(0), video, mask)

  def flops(fn, *args):
    return jax.jit(fn).lower(*args).compile().cost_analysis()['flops']

  masked = flops(lambda p, v, k: model.apply(p, v, k, method=model.encode_visible), params,
                 video, mask.keep_indices)
  full = flops(lambda p, v: model.apply(p, v, method=model.video_features), params, video)
  assert masked <= 0.25 * full, (masked, full)


def test_joint_model_params_are_two_tower_params():
  """The video and text towers and projections have the two-tower names and shapes, and the
  joint model's retrieval embeddings equal the two-tower model's with the same params."""
  config = mae_config('tiny,joint')
  joint = train.build_model(config)
  two_tower = TwoTower(**{k: v for k, v in config.model.to_dict().items()
                          if k in ('video', 'text', 'embed_dim', 'temperature_init',
                                   'bias_init')})
  batch = synthetic_batch(config)
  video, text = jnp.asarray(batch['video'][:2]), jnp.asarray(batch['text'][:2])
  mask = masking.tube_mask(jax.random.key(0), 2, (4, 4, 4), 0.9)
  joint_params = joint.init(jax.random.key(0), video, mask, text)['params']
  tt_params = two_tower.init(jax.random.key(1), video, text)['params']
  shapes = lambda tree: jax.tree.map(lambda x: x.shape, tree)
  shared = {k: v for k, v in joint_params.items() if k != 'decoder'}
  assert shapes(shared) == shapes(tt_params)
  assert sorted(joint_params) == sorted(list(tt_params) + ['decoder'])
  np.testing.assert_allclose(
      joint.apply({'params': joint_params}, video, method=joint.encode_video),
      two_tower.apply({'params': shared}, video, method=two_tower.encode_video), atol=1e-6)


def test_objective_errors_name_the_fix():
  config = mae_config(**{'masking.kind': 'checkerboard'})
  with pytest.raises(ValueError, match='masking.kind'):
    mv.masked_video_objective(train.build_model(config), config)
  config = mae_config('tiny,masking=text_guided,guide=runs/guide', **{'optimizer.freeze': ''})
  with pytest.raises(ValueError, match='optimizer.freeze'):
    mv.masked_video_objective(train.build_model(config), config)
  config = mae_config('tiny,masking=text_guided')
  with pytest.raises(ValueError, match='guide=PATH'):
    mv.masked_video_objective(train.build_model(config), config)


def step_losses(config, steps):
  """The loss after `steps` train steps on one device and on data=4 x fsdp=2."""
  batch = synthetic_batch(config)
  losses = []
  for devices, mesh_shape in ((jax.devices()[:1], dict(data=1)), (None, dict(data=4, fsdp=2))):
    config.mesh.update(mesh_shape)
    mesh = sharding.make_mesh(config.mesh, devices)
    with sharding.use_mesh(mesh):
      setup = train.build(config, mesh)
      state = jax.jit(setup.init, out_shardings=setup.shardings)(jax.random.key(0))
      step = train.make_train_step(setup.objective, setup.tx, setup.schedule, setup.shardings)
      for _ in range(steps):
        state, metrics = step(state, sharding.shard_batch(batch, mesh), jax.random.key(1))
      losses.append(float(metrics['loss']))
  assert np.isfinite(losses[0])
  return losses


@pytest.mark.parametrize('arg', ['tiny,joint,masking=random',
                                 pytest.param('tiny', marks=pytest.mark.slow),
                                 pytest.param('tiny,masking=running_cell', marks=pytest.mark.slow)])
def test_train_step_on_eight_devices_matches_one(arg):
  config = mae_config(arg)
  config.model.video.depth = 1
  losses = step_losses(config, steps=2)
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)


@pytest.mark.parametrize('arg', ['tiny', 'tiny,masking=running_cell'])
def test_small_plain_mae_step_on_eight_devices_matches_one(arg):
  """The fast suite's version of the slow cases above: plain VideoMAE (tube masking at 0.9, and
  running-cell at 0.75), one step of a one-block encoder and decoder on 8 examples."""
  config = mae_config(arg)
  config.model.video.depth = config.model.decoder.depth = 1
  config.batch_size = 8
  losses = step_losses(config, steps=1)
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)


def test_ridge_probe_separates_linear_classes():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 16)) * 3
  labels = rng.integers(0, 4, 400)
  feats = centres[labels] + rng.normal(size=(400, 16))
  acc, l2 = ridge_probe(feats[:300], labels[:300], feats[300:], labels[300:], 4)
  assert acc > 0.95 and l2 > 0
  # Features that carry no label information probe at chance.
  noise = rng.normal(size=(400, 16))
  acc, _ = ridge_probe(noise[:300], labels[:300], noise[300:], labels[300:], 4)
  assert acc < 0.45
