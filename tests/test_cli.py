"""The `vidlang` command as a user runs it: train, eval, data and generate, the metrics a run
writes (MFU, skipped clips), checkpoint rotation, and the one-line errors (exit status 1, no
traceback) for a wrong name, path or config value.

Commands run in this process (`main.main` after `main._parse_flags`, as `app.run` calls them),
so that one tiny training run serves several tests; one test runs the real entry point in a
subprocess. A traceback in a command shows up here as the exception itself, failing the test.
"""

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from absl import logging as absl_logging

from vidlang_jax import checkpoint as checkpoint_lib
from vidlang_jax import config as config_lib
from vidlang_jax import main, sharding, train
from vidlang_jax.data import builders, video
from vidlang_jax.data import moving_shapes as ms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWO_TOWER = 'configs/two_tower.py:tiny,steps=4'
SMALL = ('--config.batch_size=16', '--config.model.video.depth=1',
         '--config.model.text.depth=1', '--config.data.name=moving_shapes/tiny',
         '--config.data.num_workers=0', '--config.evals.retrieval.batch_size=32',
         '--config.evals.probe.train_examples=64', '--config.evals.probe.batch_size=32',
         '--config.peak_flops_per_device=1e11')
PEAK_FLOPS = 1e11
NUM_CORRUPT = 3


class Result(NamedTuple):
  status: int  # the process's exit status
  error: str   # what `sys.exit(message)` printed on stderr
  out: str     # stdout


@contextlib.contextmanager
def _cli_state(argv):
  """`sys.argv` (config_flags reads `--config.*` overrides from it), the parsed flags, the
  override flags config_flags defines, and the logging `main` sets up: all put back after,
  so that commands in one process do not see each other's."""
  saved_argv, was_parsed = sys.argv, flags.FLAGS.is_parsed()
  logger = logging.getLogger('vidlang_jax')
  saved_logger = (list(logger.handlers), logger.propagate, logger.level)
  verbosity = absl_logging.get_verbosity()
  sys.argv = argv
  try:
    yield
  finally:
    sys.argv = saved_argv
    flags.FLAGS.unparse_flags()
    for name in [n for n in flags.FLAGS if n.startswith('config.')]:
      delattr(flags.FLAGS, name)
    if was_parsed:
      flags.FLAGS.mark_as_parsed()
    logger.handlers[:], logger.propagate = saved_logger[:2]
    logger.setLevel(saved_logger[2])
    absl_logging.set_verbosity(verbosity)


def vidlang(*args) -> Result:
  """`vidlang ARGS` in this process; an exception other than SystemExit propagates (the real
  command would print its traceback)."""
  argv = ['vidlang', *args]
  out = io.StringIO()
  with _cli_state(argv), contextlib.redirect_stdout(out):
    try:
      if args[0] == 'data':
        main.run()
      else:
        main.main(main._parse_flags(argv))
      code = None
    except SystemExit as e:
      code = e.code
  if isinstance(code, str):
    return Result(1, code, out.getvalue())
  return Result(code or 0, '', out.getvalue())


def assert_error(result: Result, *fragments: str) -> None:
  """Exit status 1 with one `error: ...` message that names every fragment."""
  assert result.status == 1, result
  assert result.error.startswith('error: '), result.error
  assert 'Traceback' not in result.error, result.error
  for fragment in fragments:
    assert fragment in result.error, (fragment, result.error)


class _FirstReadsCorrupt:
  """A data source whose first `budget.left` reads (shared by every copy) are corrupt clips,
  the others the real records: with the pipeline's small read-ahead, all of them are read, and
  skipped, within the first training batches."""

  def __init__(self, source, budget):
    self.source, self.budget = source, budget

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    record = dict(self.source[index])
    with self.budget.lock:
      if self.budget.left:
        self.budget.left -= 1
        record['video'] = b'not an mp4 at all'
    return record


@pytest.fixture(scope='module')
def trained(tiny_data_dir, tmp_path_factory):
  """`vidlang train` of the tiny two-tower model for 4 steps (depth 1, 16 clips a step),
  logging every 2 steps, checkpointing every step and keeping 2, with NUM_CORRUPT corrupt clips
  planted in the train split; the FLOPs per step the trainer computed are recorded."""
  workdir = str(tmp_path_factory.mktemp('cli') / 'run')
  budget = type('Budget', (), dict(left=NUM_CORRUPT, lock=threading.Lock()))()
  step_flops = []
  real_source, real_flops = builders.data_source, train.step_flops_per_device

  def data_source(name, split, *args, **kwargs):
    source = real_source(name, split, *args, **kwargs)
    return _FirstReadsCorrupt(source, budget) if split == 'train' else source

  def flops(*args, **kwargs):
    step_flops.append(real_flops(*args, **kwargs))
    return step_flops[-1]

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(builders, 'data_source', data_source)
    patch.setattr(train, 'step_flops_per_device', flops)
    result = vidlang('train', '--config', TWO_TOWER, '--workdir', workdir, '--data_dir',
                     tiny_data_dir, *SMALL, '--config.log_every=2',
                     '--config.checkpoint_every=1', '--config.keep_checkpoints=2')
  assert result.status == 0, result
  assert budget.left == 0
  return dict(workdir=workdir, out=result.out, step_flops=step_flops)


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def test_train_prints_the_final_evaluation(trained):
  out = trained['out']
  assert f'Evaluation at step 4 (written to {trained["workdir"]}/eval/4.json)' in out
  assert 'text -> video' in out and 'probe_shape_acc' in out
  with open(os.path.join(trained['workdir'], 'eval', '4.json'), encoding='utf-8') as f:
    assert 0 <= json.load(f)['t2v_r1'] <= 1


def test_keep_checkpoints_leaves_the_last_k_steps(trained):
  """4 saves with keep_checkpoints=2: steps 3 and 4 remain."""
  steps = sorted(int(d) for d in os.listdir(os.path.join(trained['workdir'], 'checkpoints')))
  assert steps == [3, 4]


def test_metrics_count_skipped_clips_and_mfu(trained):
  """`data_skipped` counts every corrupt clip the run passed over (cumulative), and `mfu` is
  the FLOPs of the window's steps (2 here) over the window's time (the time `examples_per_sec`
  also divides by) over the configured peak."""
  records = [r for r in read_metrics(trained['workdir']) if 'loss' in r]
  assert [r['step'] for r in records] == [2, 4]
  skipped = [r['data_skipped'] for r in records]
  assert skipped == sorted(skipped) and skipped[-1] == NUM_CORRUPT, skipped
  (step_flops,) = trained['step_flops']
  assert step_flops > 1e6
  for r in records:
    steps_per_sec = r['examples_per_sec'] / 16
    assert r['mfu'] == pytest.approx(step_flops * steps_per_sec / PEAK_FLOPS, rel=1e-9), r


def test_eval_reevaluates_the_latest_checkpoint(trained, tiny_data_dir):
  workdir = trained['workdir']
  path = os.path.join(workdir, 'eval', '4.json')
  with open(path, encoding='utf-8') as f:
    first = json.load(f)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump({'step': 4}, f)
  result = vidlang('eval', '--config', TWO_TOWER, '--workdir', workdir, '--data_dir',
                   tiny_data_dir, *SMALL)
  assert result.status == 0, result
  assert f'Evaluation at step 4 (written to {path})' in result.out
  assert 'text -> video' in result.out
  with open(path, encoding='utf-8') as f:
    again = json.load(f)  # rewritten: the same params and test clips give the same ranks
  assert again['t2v_r1'] == pytest.approx(first['t2v_r1'])


def test_nonfinite_updates_stop_the_run_naming_the_steps(tiny_data_dir, tmp_path):
  """An infinite learning rate makes every update non-finite: each is skipped (the params stay
  finite), and after max_nonfinite_in_a_row=3 the run stops with one line naming the steps and
  the newest checkpoint, whose params are the initial ones."""
  workdir = str(tmp_path / 'nan')
  result = vidlang('train', '--config', TWO_TOWER, '--workdir', workdir, '--data_dir',
                   tiny_data_dir, *SMALL, '--config.log_every=1', '--config.checkpoint_every=1',
                   '--config.optimizer.learning_rate=inf', '--config.max_nonfinite_in_a_row=3')
  assert_error(result, 'The loss or the update was not finite for 3 steps in a row (steps 1-3, '
               'max_nonfinite_in_a_row=3)', 'the params are those after step 0',
               f'The newest checkpoint, {workdir}/checkpoints/2, holds the last good params')
  logged = [r for r in read_metrics(workdir) if 'loss' in r]
  assert [(r['step'], r['updates_skipped_nonfinite']) for r in logged] == [(1, 1), (2, 2)]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['1', '2']
  params, _ = checkpoint_lib.read_params_tree(workdir)
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(params))


def test_measured_peak_flops_is_plausible():
  """Positive and within what one device can do (a CPU: 20 TFLOP/s; one accelerator chip:
  3 PFLOP/s): a timing that did not wait for the matmuls (async dispatch) reports far more."""
  peak = train.measure_peak_flops()
  assert 1e8 < peak < (2e13 if jax.local_devices()[0].platform == 'cpu' else 3e15), peak


# ------------------------------------------------------------------------------------------
# vidlang data


def test_data_builds_and_summarises(tiny_data_dir):
  result = vidlang('data', 'moving_shapes/tiny', '--data_dir', tiny_data_dir)
  assert result.status == 0, result
  assert 'train: 256 examples' in result.out and 'test: 64 examples' in result.out


def test_data_errors_are_one_line(tmp_path):
  assert_error(vidlang('data', 'nope', '--data_dir', str(tmp_path)), "'dataset.nope'",
               'dataset.moving_shapes')
  assert_error(vidlang('data', 'video_text_folder', '--source_dir', str(tmp_path / 'missing'),
                       '--data_dir', str(tmp_path)), str(tmp_path / 'missing'))


# ------------------------------------------------------------------------------------------
# errors of train / eval / generate


def test_config_errors_are_one_line(tmp_path):
  workdir = str(tmp_path / 'run')
  assert_error(vidlang('eval', '--config', 'configs/two_tower.py:tinny', '--workdir', workdir),
               "Unknown config argument 'tinny'")
  assert_error(vidlang('eval', '--config', 'configs/nope.py:tiny', '--workdir', workdir),
               'configs/nope.py')
  assert_error(vidlang('eval', '--config', 'configs/two_tower.py:tiny', '--workdir', workdir,
                       '--config.optimizer.nonexistent_key=3'), 'nonexistent_key')
  assert_error(vidlang('eval', '--config', 'configs/two_tower.py:tiny', '--workdir', workdir,
                       '--config.total_steps=many'), 'config.total_steps', 'many')
  assert_error(vidlang('eval', '--config', 'configs/two_tower.py:tiny', '--workdir', workdir,
                       '--config.mesh.data=3'), 'needs 3 devices, but 8 are available')
  assert_error(vidlang('eval', '--config', 'configs/two_tower.py:tiny'), '--workdir')
  assert_error(vidlang('eval', '--workdir', workdir), '--config')
  usage = vidlang('evaluate', '--workdir', workdir)
  assert usage.status == 1
  assert 'usage: vidlang {train|eval|compile|data|export|convert|generate}' in usage.error


def test_unknown_dataset_and_missing_checkpoint_are_one_line(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / 'never_trained')
  assert_error(vidlang('train', '--config', TWO_TOWER, '--workdir', workdir, *SMALL,
                       '--config.data.name=moving_shape/tiny'), "'dataset.moving_shape'")
  assert_error(vidlang('eval', '--config', TWO_TOWER, '--workdir', workdir, *SMALL,
                       '--data_dir', tiny_data_dir), f'No checkpoint to evaluate in {workdir}')
  world = f'configs/world_model.py:tiny,tokenizer={tmp_path}/tok'
  missing = str(tmp_path / 'missing')
  assert_error(vidlang('generate', '--config', world, '--workdir', missing, '--prompt', 'a'),
               f'Checkpoint {missing!r} does not exist')
  assert_error(vidlang('generate', '--config', world, '--workdir', workdir, '--prompt', 'a'),
               f"No checkpoints found in '{workdir}'")
  assert_error(vidlang('generate', '--config', world, '--workdir', workdir),
               'exactly one of --prompt')
  assert_error(vidlang('generate', '--config', TWO_TOWER, '--workdir', workdir, '--prompt', 'a'),
               "needs a world_model config, got objective='contrastive'")


def test_only_this_packages_errors_become_one_line():
  """A ValueError raised here (a config the mesh cannot take) ends the command with its
  message; one raised inside a library (a bug, say) keeps its traceback."""
  with pytest.raises(SystemExit, match=re.escape('error: Mesh {')):
    with main.user_errors():
      sharding.make_mesh(dict(data=3))
  with pytest.raises(ValueError, match='reshape'):
    with main.user_errors():
      np.zeros(3).reshape(2)


def test_entry_point_prints_one_line_and_exits_1(tmp_path):
  """The installed command (absl's app.run): the message on stderr, no traceback."""
  result = subprocess.run(
      [sys.executable, '-m', 'vidlang_jax', 'eval', '--config', 'configs/two_tower.py:tiny',
       '--workdir', str(tmp_path / 'none')], cwd=ROOT, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  assert f'error: No checkpoint to evaluate in {tmp_path / "none"}' in result.stderr
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]


# ------------------------------------------------------------------------------------------
# vidlang generate


def _save_random_params(directory, model, *inputs):
  """A checkpoint of `model`'s params at step 1, random normal values of the init's shapes
  (not `model.init` itself: compiling the tokenizer's convolutions takes seconds)."""
  shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), *inputs)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (0.05 * rng.normal(size=s.shape)).astype(s.dtype),
                        shapes['params'])
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(directory, 'checkpoints'),
                                             async_save=False)
  checkpointer.save(1, {'params': params}, None, {})
  checkpointer.close()


def test_generate_both_directions(tiny_data_dir, tmp_path):
  """From untrained runs (a tokenizer and a one-block LM, random params): clips for a prompt
  are written as mp4 + PNG, and an mp4 gets a caption line."""
  tokenizer_dir, lm_dir = str(tmp_path / 'tok'), str(tmp_path / 'lm')
  tok_config = config_lib.load('configs/video_tokenizer.py:tiny')
  tokenizer = train.build_model(tok_config)
  os.makedirs(tokenizer_dir)
  with open(os.path.join(tokenizer_dir, 'config.json'), 'w', encoding='utf-8') as f:
    f.write(tok_config.to_json())
  _save_random_params(tokenizer_dir, tokenizer, jnp.zeros((1, 2, 32, 32, 3)))
  spec = f'configs/world_model.py:tiny,tokenizer={tokenizer_dir}'
  lm = train.build_model(config_lib.load(spec, ['model.depth=1']))
  _save_random_params(lm_dir, lm.clone(attention='dot_product'), jnp.zeros((1, 8), jnp.int32))
  args = ('--config', spec, '--workdir', lm_dir, '--config.model.depth=1',
          '--config.data.name=moving_shapes/tiny', '--data_dir', tiny_data_dir)

  result = vidlang('generate', *args, '--prompt', 'a big red star moves left',
                   '--num_samples', '2', '--top_k', '5')
  assert result.status == 0, result
  assert f"2 clips for 'a big red star moves left' from {lm_dir}/checkpoints/1" in result.out
  written = sorted(os.listdir(os.path.join(lm_dir, 'generate')))
  slug = 'a_big_red_star_moves_left'
  assert written == [f'{slug}.png', f'{slug}_0.mp4', f'{slug}_1.mp4']
  with open(os.path.join(lm_dir, 'generate', f'{slug}_0.mp4'), 'rb') as f:
    clip = video.decode_mp4(f.read())
  assert clip.shape == (4, 32, 32, 3)  # 8 frames at the LM's frame stride of 2

  mp4 = tmp_path / 'clip.mp4'
  mp4.write_bytes(ms.generate_example(0, 3, 16, 32, 32)['video'])
  result = vidlang('generate', *args, '--video', str(mp4))
  assert result.status == 0, result
  assert result.out.startswith(f'{mp4}: ')
