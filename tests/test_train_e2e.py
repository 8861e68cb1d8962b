"""The trainer end to end on the tiny dataset: metrics, eval JSON, checkpoints, resume, eval CLI."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from vidlang_jax import checkpoint as checkpoint_lib
from vidlang_jax import train

from helpers import assert_release_round_trip, tiny_config

EVAL_KEYS = ('t2v_r1', 't2v_r5', 't2v_r10', 'v2t_r1', 'v2t_r5', 'v2t_r10', 'chance_r1')


def e2e_config(data_dir, total_steps):
  config = tiny_config(total_steps=total_steps, log_every=1, checkpoint_every=2,
                       eval_every=100)
  config.model.video.depth = config.model.text.depth = 1
  config.data.update(name='moving_shapes/tiny', data_dir=data_dir, num_workers=0)
  config.evals.retrieval.batch_size = 32
  config.peak_flops_per_device = 1e11
  return config


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_train_resume_and_eval(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(e2e_config(tiny_data_dir, total_steps=4), workdir)

  train_records = [r for r in read_metrics(workdir) if 'loss' in r]
  assert [r['step'] for r in train_records] == [1, 2, 3, 4]
  for key in ('loss', 'learning_rate', 'examples_per_sec', 'data_wait_fraction', 'mfu'):
    assert key in train_records[-1], key
  assert 0 <= train_records[-1]['data_wait_fraction'] <= 1
  assert train_records[-1]['mfu'] > 0
  with open(os.path.join(workdir, 'eval', '4.json')) as f:
    results = json.load(f)
  for key in EVAL_KEYS:
    assert 0 <= results[key] <= 1, key
  assert results['chance_r1'] == pytest.approx(1 / 64)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '4', 'data'))
  assert os.path.exists(os.path.join(workdir, 'config.json'))
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  # Exported and loaded back, the params give the same retrieval JSON.
  assert_release_round_trip(workdir, 4, str(tmp_path / 'release'), tmp_path)

  # As if the run had died before step 4's checkpoint: the same command resumes from step 2
  # and redoes steps 3-4 exactly (the data iterator continues where it was saved): the same
  # losses and the same final params as the run that was not interrupted.
  first_losses = {r['step']: r['loss'] for r in train_records}
  first_params, _ = checkpoint_lib.read_params_tree(workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '4'))
  train.train_and_evaluate(e2e_config(tiny_data_dir, total_steps=4), workdir)
  redone = {r['step']: r['loss'] for r in read_metrics(workdir) if 'loss' in r}
  assert sorted(redone) == [1, 2, 3, 4]
  assert [redone[s] for s in (3, 4)] == [first_losses[s] for s in (3, 4)]
  resumed_params, _ = checkpoint_lib.read_params_tree(workdir)
  for a, b in zip(jax.tree.leaves(resumed_params), jax.tree.leaves(first_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # The same command with more steps resumes instead of starting again; here from step 2, as
  # if the run had died before step 4's checkpoint: steps 3-4 are redone, not logged twice.
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '4'))
  train.train_and_evaluate(e2e_config(tiny_data_dir, total_steps=6), workdir)
  steps = [r['step'] for r in read_metrics(workdir) if 'loss' in r]
  assert steps == [1, 2, 3, 4, 5, 6]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4', '6']

  evaluated = train.evaluate(e2e_config(tiny_data_dir, total_steps=6), workdir)
  assert evaluated['step'] == 6
  with open(os.path.join(workdir, 'eval', '6.json')) as f:
    assert json.load(f)['t2v_r1'] == pytest.approx(evaluated['t2v_r1'])
