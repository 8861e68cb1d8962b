"""Save -> restore (onto another mesh) -> identical next step; damaged checkpoints; partial load."""

import os
import shutil

import jax
import numpy as np
import pytest

from vidlang_jax import checkpoint as checkpoint_lib
from vidlang_jax import sharding, train

from helpers import find_leaf, synthetic_batch, tiny_config


def setup_run(config, devices=None):
  mesh = sharding.make_mesh(config.mesh, devices)
  with jax.set_mesh(mesh):
    setup = train.build(config, mesh)
  step = train.make_train_step(setup.objective, setup.tx, setup.schedule, setup.shardings)

  def new_state(seed):
    with jax.set_mesh(mesh):
      return jax.jit(setup.init, out_shardings=setup.shardings)(jax.random.key(seed))

  return mesh, new_state, setup.abstract_state, step


def next_loss(mesh, step, state, config, seed):
  with jax.set_mesh(mesh):
    batch = sharding.shard_batch(synthetic_batch(config, seed=seed), mesh)
    state, metrics = step(state, batch, jax.random.key(1))
  return state, float(metrics['loss'])


def assert_same_state(actual, expected, **tolerance):
  """Every leaf of two train states (params, each optimizer leaf, step), by path."""
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(expected)]
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for path, a, e in zip(paths, jax.tree.leaves(actual), jax.tree.leaves(expected)):
    if tolerance:
      np.testing.assert_allclose(np.asarray(a), np.asarray(e), err_msg=path, **tolerance)
    else:
      np.testing.assert_array_equal(np.asarray(a), np.asarray(e), err_msg=path)


def test_save_restore_identical_next_step(tmp_path):
  config = tiny_config()
  config.mesh.update(data=2, fsdp=4)
  mesh, new_state, _, step = setup_run(config)
  state, _ = next_loss(mesh, step, new_state(0), config, seed=0)
  saved = jax.device_get(state)  # a host copy: the train step donates `state`
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / 'ckpt'))
  checkpointer.save(1, state, None, config.to_dict())
  checkpointer.wait()
  after, expected = next_loss(mesh, step, state, config, seed=1)
  after = jax.device_get(after)

  # Restore onto a different mesh (fsdp=8): resharding on load.
  config.mesh.update(data=1, fsdp=8)
  mesh2, _, abstract2, step2 = setup_run(config)
  restored_step, restored, *_ = checkpointer.restore_latest(abstract2, None)
  assert restored_step == 1
  kernel = find_leaf(restored['params'], r'video/encoder/.*mlp/Dense_0/kernel')
  assert 'fsdp' in str(kernel.sharding.spec)
  # The whole state comes back as saved: params, Adam's moments and count, the step.
  assert int(saved['step']) == 1
  assert_same_state(jax.device_get(restored), saved)
  restored_after, actual = next_loss(mesh2, step2, restored, config, seed=1)
  np.testing.assert_allclose(actual, expected, rtol=1e-5)
  # And one more step from it gives the state the uninterrupted run reached.
  assert_same_state(jax.device_get(restored_after), after, rtol=1e-5, atol=1e-6)
  checkpointer.close()


def test_damaged_latest_checkpoint_falls_back(tmp_path):
  config = tiny_config()
  _, new_state, abstract, _ = setup_run(config)
  state = new_state(0)
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / 'ckpt'), async_save=False)
  checkpointer.save(1, state, None, {})
  checkpointer.save(2, state, None, {})
  shutil.rmtree(tmp_path / 'ckpt' / '2' / 'state')  # a half-deleted newest checkpoint
  step = checkpointer.restore_latest(abstract, None).step
  assert step == 1
  checkpointer.close()


def _largest_file(folder):
  files = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]
  return max(files, key=os.path.getsize)


def _arrays(step):
  return _largest_file(step / 'state' / 'ocdbt.process_0')


def _truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


# How a newest checkpoint gets damaged after it was committed (a copy cut short, a disk error,
# files lost); the arrays are the largest file of Orbax's OCDBT store. Bytes changed in place
# are found only when they break the format: Orbax keeps no checksums (docs/reliability.md).
DAMAGE = {
    'array_file_missing': lambda step: os.remove(_arrays(step)),
    'array_file_truncated': lambda step: _truncate(_arrays(step)),
    'metadata_missing': lambda step: os.remove(step / 'state' / '_METADATA'),
    'metadata_truncated': lambda step: _truncate(step / 'state' / '_METADATA'),
    'manifest_missing': lambda step: os.remove(step / 'state' / 'manifest.ocdbt'),
    'counters_truncated': lambda step: _truncate(step / 'counters' / 'metadata'),
    'state_missing': lambda step: shutil.rmtree(step / 'state'),
    'emptied': lambda step: [shutil.rmtree(step), step.mkdir()],
}


@pytest.fixture(scope='module')
def two_steps(tmp_path_factory):
  """Checkpoints of two different states at steps 1 and 2, and what restores them."""
  config = tiny_config()
  _, new_state, abstract, _ = setup_run(config)
  first, second = new_state(0), new_state(1)
  directory = tmp_path_factory.mktemp('two_steps') / 'ckpt'
  checkpointer = checkpoint_lib.Checkpointer(str(directory), async_save=False)
  checkpointer.save(1, first, None, {}, {'data/skipped_corrupt_video': 1})
  checkpointer.save(2, second, None, {}, {'data/skipped_corrupt_video': 2})
  checkpointer.close()
  return directory, abstract, jax.device_get(first)


@pytest.mark.parametrize('damage', list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous_good_one(tmp_path, two_steps,
                                                                       damage, caplog):
  pristine, abstract, first = two_steps
  directory = tmp_path / 'ckpt'
  shutil.copytree(pristine, directory)
  DAMAGE[damage](directory / '2')
  checkpointer = checkpoint_lib.Checkpointer(str(directory), async_save=False)
  with caplog.at_level('WARNING', logger='vidlang_jax.checkpoint'):
    restored = checkpointer.restore_latest(abstract, None)
  assert restored.step == 1
  assert restored.counters == {'data/skipped_corrupt_video': 1}
  assert_same_state(jax.device_get(restored.state), first)
  assert f'Checkpoint {directory}/2 is incomplete or damaged' in caplog.text
  checkpointer.close()


def test_partly_written_checkpoint_is_never_a_candidate(tmp_path, two_steps):
  """A save cut off by a kill leaves `<step>.orbax-checkpoint-tmp`; only renamed (committed)
  steps count."""
  pristine, abstract, _ = two_steps
  directory = tmp_path / 'ckpt'
  shutil.copytree(pristine, directory)
  os.rename(directory / '2', directory / '3.orbax-checkpoint-tmp-7')
  os.remove(_largest_file(directory / '3.orbax-checkpoint-tmp-7' / 'state'))
  checkpointer = checkpoint_lib.Checkpointer(str(directory), async_save=False)
  assert checkpointer.restore_latest(abstract, None).step == 1
  checkpointer.close()


def saved_run(tmp_path, config, seed=0):
  """A checkpoint of `config`'s state at init (seed) under tmp_path/run; returns its state."""
  _, new_state, _, _ = setup_run(config)
  state = new_state(seed)
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / 'run' / 'checkpoints'),
                                             async_save=False)
  checkpointer.save(5, state, None, {})
  checkpointer.close()
  return state


def test_load_params_partial_strict_and_errors_name_both_shapes(tmp_path):
  config = tiny_config()
  source = saved_run(tmp_path, config)
  target = setup_run(config)[1](7)
  run = str(tmp_path / 'run')
  loaded = checkpoint_lib.load_params(run, target['params'], load=[('video/(.*)', r'video/\1')],
                                      dont_load=['(?!video/).*', '.*pos_.*'])
  np.testing.assert_array_equal(loaded['video']['patch_embed']['kernel'],
                                source['params']['video']['patch_embed']['kernel'])
  np.testing.assert_array_equal(loaded['video']['pos_time'], target['params']['video']['pos_time'])
  np.testing.assert_array_equal(loaded['text']['token_embedding'],
                                target['params']['text']['token_embedding'])
  # Every problem at once, each param named with both shapes.
  with pytest.raises(ValueError, match=r'other shapes.*text/token_embedding \(1000, 128\) <- '
                                       r'video/patch_embed/kernel \(384, 128\)'):
    checkpoint_lib.load_params(run, target['params'],
                               load=[('text/token_embedding', 'video/patch_embed/kernel')],
                               dont_load=['(?!text/token_embedding).*'])
  with pytest.raises(ValueError, match=r'not in the checkpoint.*video/nonexistent'):
    checkpoint_lib.load_params(run, target['params'], load=[('video/(.*)', r'video/nonexistent')],
                               dont_load=['(?!video/).*'])
  # Strict: a param neither loaded nor listed in dont_load is an error, not silently kept.
  with pytest.raises(ValueError, match=r'matched by no init_from.load rule \(\d+; .*text/'):
    checkpoint_lib.load_params(run, target['params'], load=[('video/(.*)', r'video/\1')])
  with pytest.raises(FileNotFoundError, match='does-not-exist'):
    checkpoint_lib.load_params(str(tmp_path / 'does-not-exist'), target['params'])


def test_load_resamples_position_embeddings_to_more_frames_and_pixels(tmp_path):
  config = tiny_config()  # 8 frames of 32x32, tubelet 2x8x8: pos_time 4, pos_space 4x4
  source = saved_run(tmp_path, config)['params']['video']
  config.data.update(num_frames=16, image_size=64)
  config.model.video.update(num_frames=16, image_size=64)
  target = setup_run(config)[1](7)['params']
  loaded = checkpoint_lib.load_params(str(tmp_path / 'run'), target)['video']
  assert loaded['pos_time'].shape == (8, 128) and loaded['pos_space'].shape == (64, 128)
  # The ends of the time axis and the corners of the grid keep their embeddings.
  np.testing.assert_allclose(np.asarray(loaded['pos_time'])[[0, -1]],
                             np.asarray(source['pos_time'])[[0, -1]], atol=1e-6)
  grid = np.asarray(loaded['pos_space']).reshape(8, 8, -1)
  np.testing.assert_allclose(grid[0, 0], np.asarray(source['pos_space'])[0], atol=1e-6)
  np.testing.assert_array_equal(loaded['patch_embed']['kernel'], source['patch_embed']['kernel'])


def test_load_reads_only_each_devices_share(tmp_path, monkeypatch):
  """On fsdp=8 the params come off the checkpoint already sharded like the target (a partial
  restore that skips the optimizer state): no device ever holds a whole sharded param."""
  config = tiny_config()
  saved_run(tmp_path, config)
  config.mesh.update(data=1, fsdp=8)
  target = setup_run(config)[1](7)['params']
  read = {}
  original = checkpoint_lib.read_params_subset

  def spy(path, wanted, shapes=None):
    read.update(original(path, wanted, shapes))
    return read

  monkeypatch.setattr(checkpoint_lib, 'read_params_subset', spy)
  loaded = checkpoint_lib.load_params(str(tmp_path / 'run'), target)
  assert set(read) == set(checkpoint_lib.params_metadata(str(tmp_path / 'run'))[0])  # params only
  embedding = read['text/token_embedding']  # [1000, 128]: fsdp over the 128
  assert embedding.addressable_shards[0].data.shape == (1000, 16)
  sharded = [p for p, x in read.items() if x.addressable_shards[0].data.size * 8 == x.size]
  assert len(sharded) > len(read) // 3, sharded
  assert loaded['text']['token_embedding'].sharding == target['text']['token_embedding'].sharding


def test_checkpoint_of_another_config_raises_instead_of_restarting(tmp_path):
  config = tiny_config()
  _, new_state, _, _ = setup_run(config)
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / 'ckpt'), async_save=False)
  checkpointer.save(1, new_state(0), None, {})
  config.model.video.width = 64  # another model in the same workdir
  config.model.video.num_heads = 2
  _, _, other_abstract, _ = setup_run(config)
  with pytest.raises(ValueError, match='does not fit this config'):
    checkpointer.restore_latest(other_abstract, None)
  checkpointer.close()
