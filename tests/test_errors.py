"""Every error a user can reach from a config (a knob, an override, the mesh, a split, a model,
masking or ring-attention setting) is raised where it is detected and names what is wrong.

Most are found before any data is read or anything is compiled: loading the config, making the
mesh, `train.build` (objective, batch spec, the init traced with `eval_shape`) and tracing the
loss once (`eval_shape` again); that is all `build_and_trace` does. The rest need the dataset
(splits, dataset names, the world model's tokenizer run) or a workdir.
"""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest

from vidlang_jax import checkpoint as checkpoint_lib
from vidlang_jax import config as config_lib
from vidlang_jax import inputs, sharding, train
from vidlang_jax.config import ConfigError
from vidlang_jax.data import pipeline, sequences

TWO_TOWER = 'configs/two_tower.py:tiny'
MAE = 'configs/masked_video.py:tiny'
WORLD = 'configs/world_model.py:tiny'
RING = ['mesh.sequence=8', 'mesh.data=1']  # the tiny world model's 1K rows over 8 devices

# (config, overrides, error, what the message says: the offending key / value / sizes).
CASES = {
    # Config arguments and overrides.
    'bool_knob': (f'{TWO_TOWER},tiny=maybe', [], ConfigError, "Expected a boolean, got 'maybe'"),
    'override_type': (TWO_TOWER, ['total_steps=many'], ConfigError,
                      'Override total_steps=many: expected a int'),
    'batch_size_zero': (TWO_TOWER, ['batch_size=0'], ConfigError, 'batch_size=0'),
    'stage_out_of_range': (f'{WORLD},stage=4', [], ConfigError,
                           'stage=4: this config has stages 1..3'),
    'stage_without_init': (f'{WORLD},stage=2', [], ConfigError,
                           'stage=2 continues a run: pass init=<the stage 1 workdir>'),
    # The mesh against the 8 devices.
    'mesh_size': (TWO_TOWER, ['mesh.data=3'], ValueError,
                  "Mesh {'data': 3, 'fsdp': 1, 'tensor': 1, 'sequence': 1} needs 3 devices, "
                  'but 8 are available'),
    'mesh_two_auto_axes': (TWO_TOWER, ['mesh.fsdp=-1'], ValueError,
                           "Only one mesh axis may be -1, got ['data', 'fsdp']"),
    'mesh_auto_indivisible': (TWO_TOWER, ['mesh.fsdp=3'], ValueError,
                              '8 devices are not divisible by the fixed mesh axes '
                              "{'fsdp': 3, 'tensor': 1, 'sequence': 1}"),
    # The batch against the data-parallel devices (before the loss would find it, or jit).
    'batch_vs_data_parallel': (TWO_TOWER, ['batch_size=12'], ValueError,
                               'batch_size=12 is not divisible by the 8 devices of the batch '
                               "mesh axes {'data': 8, 'fsdp': 1}"),
    'batch_vs_data_fsdp': (MAE, ['batch_size=12', 'mesh.data=2', 'mesh.fsdp=4'], ValueError,
                           'batch_size=12 is not divisible by the 8 devices of the batch mesh '
                           "axes {'data': 2, 'fsdp': 4}"),
    # Two-tower objective: the loss and the keys data and model share.
    'sigmoid_without_bias': (TWO_TOWER, ['model.bias_init=None'], ValueError,
                             "loss.kind='sigmoid' needs a learnable bias: set model.bias_init"),
    'loss_kind': (TWO_TOWER, ['loss.kind=hinge'], KeyError,
                  "Unknown 'loss.hinge'. Registered loss.*: ['loss.sigmoid', 'loss.softmax']"),
    'image_size': (TWO_TOWER, ['data.image_size=48'], ValueError,
                   'data.image_size=48 but model.video.image_size=32'),
    'text_length': (TWO_TOWER, ['data.max_text_len=16'], ValueError,
                    'data.max_text_len=16 but model.text.max_len=32'),
    'vocab_size': (TWO_TOWER, ['data.vocab_size=500'], ValueError,
                   'data.vocab_size=500 but model.text.vocab_size=1000'),
    # Video tower.
    'tubelet': (TWO_TOWER, ['model.video.tubelet=(3, 8, 8)'], ValueError,
                'video of 8x32x32 (time x height x width) is not divisible by the tubelet 3x8x8'),
    'heads': (TWO_TOWER, ['model.video.num_heads=3'], ValueError,
              'width 128 is not divisible by num_heads 3'),
    'space_time_attention': (TWO_TOWER, ['model.video.attention=axial'], ValueError,
                             "attention must be 'joint' or 'divided', got 'axial'"),
    # Masked video modeling.
    'masking_kind': (f'{MAE},masking=checkerboard', [], ValueError,
                     "masking.kind='checkerboard'; expected one of ['mask.random', "
                     "'mask.running_cell', 'mask.text_guided', 'mask.tube']"),
    'mask_ratio': (MAE, ['masking.ratio=1.0'], ValueError, 'Mask ratio must be in [0, 1), got 1.0'),
    'running_cell_ratio': (f'{MAE},masking=running_cell,ratio=0.9', [], ValueError,
                           'ratio 0.9 masks 4 of 4 cell positions; need 1 to 3'),
    'joint_without_text': (f'{MAE},joint', ['model.text=None'], ValueError,
                           'loss.contrastive_weight > 0 needs a text tower: set model.text'),
    'joint_sigmoid_without_bias': (f'{MAE},joint', ['model.bias_init=None'], ValueError,
                                   "loss.kind='sigmoid' needs model.bias_init"),
    'text_guided_without_guide': (f'{MAE},masking=text_guided', [], ValueError,
                                  "masking.kind='text_guided' needs a trained two-tower run as "
                                  'its guide: pass guide=PATH'),
    'text_guided_guide_not_frozen': (f'{MAE},masking=text_guided,guide=runs/two_tower',
                                     ['optimizer.freeze='], ValueError,
                                     'set optimizer.freeze to a regex matching'),
    'mae_divided_attention': (MAE, ['model.video.attention=divided'], ValueError,
                              "model.video.attention must be 'joint' for masked video modeling"),
    # World model and ring attention.
    'lm_attention': (WORLD, ['model.attention=flash'], ValueError,
                     "model.attention must be 'dot_product' or 'ring', got 'flash'"),
    'kv_heads': (WORLD, ['model.num_kv_heads=3'], ValueError,
                 'heads=4 is not a multiple of kv_heads=3'),
    'ring_zigzag_length': (WORLD, RING + ['data.sequence_length=1000'], ValueError,
                           'zigzag layout needs length 1000 divisible by 2 x 8 shards'),
    'ring_length': (WORLD, RING + ['data.sequence_length=1004', 'sequence_layout=contiguous'],
                    ValueError,
                    "sequence length 1004 is not divisible by the 8 devices of mesh axis "
                    "'sequence'"),
    'ring_block_size': (WORLD, RING + ['model.block_size=48'], ValueError,
                        'per-device length 128 is not divisible by block_size 48'),
    'lm_batch_vs_data_parallel': (WORLD, ['batch_size=12'], ValueError,
                                  'batch_size=12 is not divisible by the 8 devices of the batch '
                                  "mesh axes {'data': 8, 'fsdp': 1}"),
    'ring_layout': (WORLD, ['mesh.sequence=2', 'mesh.data=4', 'sequence_layout=spiral'],
                    ValueError, "layout must be 'contiguous' or 'zigzag', got 'spiral'"),
}


def build_and_trace(config):
  """What the trainer does with a config before it reads data or compiles: the mesh, the
  model, objective, batch spec and state layout, and the loss traced once."""
  mesh = sharding.make_mesh(config.mesh)
  with sharding.use_mesh(mesh, sharding.logical_rules(config)):
    setup = train.build(config, mesh)
    jax.eval_shape(lambda params, batch: setup.objective.loss(params, batch, jax.random.key(0)),
                   setup.abstract_state['params'], setup.batch_spec)


@pytest.mark.parametrize('name', list(CASES))
def test_config_error_names_what_is_wrong(name):
  spec, overrides, error, message = CASES[name]
  with pytest.raises(error, match=re.escape(message)):
    build_and_trace(config_lib.load(spec, overrides))


@pytest.mark.parametrize('overrides', [['batch_size=12'], ['model.video.tubelet=(3, 8, 8)'],
                                       ['mesh.data=3']])
def test_config_errors_come_before_any_data_or_compilation(tmp_path, monkeypatch, overrides):
  """The trainer validates a config by laying out the train state before it starts the input
  pipeline (worker processes, file reads) or compiles anything."""
  def must_not_run(*args, **kwargs):
    raise AssertionError('reached before the config error')

  monkeypatch.setattr(train, 'train_input', must_not_run)
  monkeypatch.setattr(train, 'make_train_step', must_not_run)
  config = config_lib.load(TWO_TOWER, overrides)
  with pytest.raises(ValueError, match='divisible|needs 3 devices'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_unknown_key_suggests_the_close_ones():
  with pytest.raises(ConfigError, match=r"Unknown config key 'totl_steps'; did you mean "
                                        r"'total_steps'\?"):
    config_lib.load(TWO_TOWER, ['totl_steps=3'])
  with pytest.raises(ConfigError, match=r"Unknown config key 'data.num_frame'; did you mean "
                                        r"'num_frames'"):
    config_lib.load(TWO_TOWER, ['data.num_frame=3'])


def test_unknown_mesh_axis_is_named():
  """A config file (not an override: those must name existing keys) with a mesh axis that the
  trainer does not know."""
  with pytest.raises(ValueError, match=re.escape("Unknown mesh axes ['model']; expected a "
                                                 "subset of ('data', 'fsdp', 'tensor', "
                                                 "'sequence')")):
    sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1, sequence=1, model=2))


# ------------------------------------------------------------------------------------------
# Errors that need the dataset or a workdir.


def tiny(spec, data_dir, overrides=()):
  config = config_lib.load(spec, list(overrides))
  config.data.update(name='moving_shapes/tiny', data_dir=data_dir, num_workers=0)
  return config


def test_unknown_splits_are_named_with_the_splits_there_are(tiny_data_dir):
  config = tiny(TWO_TOWER, tiny_data_dir, ['data.train_split=training'])
  with pytest.raises(ValueError, match=re.escape(
      "data.train_split='training' is not a split of moving_shapes/tiny (it has "
      "['test', 'train', 'validation'])")):
    pipeline.train_iterator(config.data, global_batch_size=16, seed=0)
  mesh = sharding.make_mesh(config.mesh)
  model = train.build_model(config)
  for key, bad in (('retrieval.split', 'valid'), ('probe.test_split', 'dev')):
    config = tiny(TWO_TOWER, tiny_data_dir, [f'evals.{key}={bad}'])
    with pytest.raises(ValueError, match=re.escape(f"evals.{key}='{bad}' is not a split")):
      train.build_evaluators(config, model, mesh)


def test_unknown_dataset_is_named_with_the_known_ones(tiny_data_dir):
  config = tiny(TWO_TOWER, tiny_data_dir)
  config.data.name = 'moving_shape/tiny'
  with pytest.raises(KeyError, match=re.escape("Unknown 'dataset.moving_shape'. Registered "
                                               "dataset.*: ['dataset.moving_shapes'")):
    pipeline.train_iterator(config.data, global_batch_size=16, seed=0)


def test_batch_not_divisible_by_processes(tiny_data_dir, monkeypatch):
  monkeypatch.setattr(jax, 'process_count', lambda: 3)
  config = tiny(TWO_TOWER, tiny_data_dir)
  with pytest.raises(ValueError, match=re.escape('batch_size=16 is not divisible by the 3 '
                                                 'processes')):
    pipeline.train_iterator(config.data, global_batch_size=16, seed=0)


def test_classifier_labels_need_label_keys(tiny_data_dir):
  config = tiny('configs/finetune_classification.py:tiny', tiny_data_dir, ['data.label_keys=()'])
  with pytest.raises(ValueError, match=re.escape(
      "model.num_classes has labels ['motion', 'shape'] but data.label_keys lacks "
      "['motion_label', 'shape_label']")):
    build_and_trace(config)


def test_world_model_tokenizer_run_is_checked(tiny_data_dir, tmp_path):
  """`tokenizer=PATH` must be a video tokenizer run with as many codes as `data.num_codes`."""

  def rows(tokenizer_dir):
    config = tiny(f'{WORLD},tokenizer={tokenizer_dir}', tiny_data_dir)
    return inputs.lookup(config.data).train_iterator(config.data, global_batch_size=8, seed=0)

  missing = tmp_path / 'missing'
  with pytest.raises(FileNotFoundError, match=re.escape(
      f'{missing}/config.json does not exist: data.video_tokenizer must be the workdir')):
    rows(missing)
  for name, model in (('two_tower', dict(name='two_tower')),
                      ('tokenizer', dict(name='video_tokenizer', levels=[8, 8]))):
    os.makedirs(tmp_path / name)
    (tmp_path / name / 'config.json').write_text(json.dumps(dict(model=model)))
  with pytest.raises(ValueError, match=re.escape(
      f"{tmp_path / 'two_tower'} is a 'two_tower' run, not a video_tokenizer run")):
    rows(tmp_path / 'two_tower')
  with pytest.raises(ValueError, match=re.escape(
      f"data.num_codes=1000 but the tokenizer in {tmp_path / 'tokenizer'} has 64 codes")):
    rows(tmp_path / 'tokenizer')


def test_needle_fraction_must_be_a_fraction():
  config = config_lib.load(WORLD, ['data.lm.needle_fraction=1.5'])
  with pytest.raises(ValueError, match=re.escape('data.lm.needle_fraction=1.5 must be in [0, 1]')):
    sequences.needle_rows_per_batch(config.data, 8)


def test_evaluate_without_a_checkpoint(tiny_data_dir, tmp_path):
  config = tiny(TWO_TOWER, tiny_data_dir)
  with pytest.raises(FileNotFoundError, match=re.escape(
      f'No checkpoint to evaluate in {tmp_path}/checkpoints')):
    train.evaluate(config, str(tmp_path))


def test_no_checkpoint_loads(tmp_path):
  """Every step there is incomplete: an error naming the steps, not a fresh start."""
  mesh = sharding.make_mesh(dict(data=-1))
  placed = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = {'w': jax.device_put(np.zeros(4, np.float32), placed)}
  abstract = {'w': jax.ShapeDtypeStruct((4,), np.float32, sharding=placed)}
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / 'ckpt'), async_save=False)
  for step in (1, 2):
    checkpointer.save(step, state, None, {})
    shutil.rmtree(tmp_path / 'ckpt' / str(step) / 'state')
  with pytest.raises(FileNotFoundError, match=re.escape(
      f"No checkpoint in {tmp_path / 'ckpt'} loads (steps [2, 1] are all incomplete or damaged: 2: "
      '"Unknown key: state')):
    checkpointer.restore_latest(abstract, None)
  checkpointer.close()
