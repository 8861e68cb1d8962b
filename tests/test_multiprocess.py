"""Several processes as one run, the way users launch them: `vidlang train` under
launch/local_multiprocess.sh (2 processes x 4 CPU devices) computes what 1 process x 8 devices
computes, and a checkpoint it wrote resumes in 1 process."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(ROOT, 'launch', 'local_multiprocess.sh')


def train_command(data_dir, workdir, total_steps=4):
  return [sys.executable, '-m', 'vidlang_jax', 'train', '--config',
          os.path.join(ROOT, 'configs/two_tower.py:tiny'), '--workdir', workdir,
          '--data_dir', data_dir, '--config.data.name=moving_shapes/tiny',
          f'--config.total_steps={total_steps}', '--config.log_every=1',
          '--config.checkpoint_every=2', '--config.eval_every=100', '--config.batch_size=16',
          '--config.model.video.depth=1', '--config.model.text.depth=1',
          '--config.mesh.data=2', '--config.mesh.fsdp=4', '--config.data.num_workers=0',
          '--config.evals.retrieval.batch_size=32', '--config.peak_flops_per_device=1e11']


def run(command, devices=8):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
  assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
  return done.stdout + done.stderr


def logged_losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


def test_two_processes_match_one_and_resume_in_one(tiny_data_dir, tmp_path):
  one, two, moved = (str(tmp_path / name) for name in ('one', 'two', 'moved'))
  run(train_command(tiny_data_dir, one))
  output = run([LAUNCHER, '-n', '2', '-d', '4', '--'] + train_command(tiny_data_dir, two))

  # One global computation on the same global batches: the losses of 1 x 8 devices.
  single, multi = logged_losses(one), logged_losses(two)
  assert sorted(multi) == [1, 2, 3, 4]
  np.testing.assert_allclose([multi[s] for s in range(1, 5)], [single[s] for s in range(1, 5)],
                             rtol=0, atol=1e-5)
  assert 'Process 0 of 2 (explicit launch), 4 local of 8 devices.' in output
  assert not [line for line in output.splitlines()  # only process 0 logs and shows progress
              if line.startswith('[1/2]') and (' INFO ' in line or 'train:' in line)]
  data_state = os.listdir(os.path.join(two, 'checkpoints', '2', 'data'))
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(data_state)
  with open(os.path.join(two, 'eval', '4.json')) as f:
    assert json.load(f)['chance_r1'] == 1 / 64  # every test clip evaluated exactly once

  # Killed after its step-2 checkpoint, resumed as 1 process x 8 devices: the train state is
  # restored onto the new topology and the input restarts at global batch 2, so steps 3-4
  # are those of the uninterrupted runs.
  shutil.copytree(two, moved)
  shutil.rmtree(os.path.join(moved, 'checkpoints', '4'))
  os.remove(os.path.join(moved, 'eval', '4.json'))
  output = run(train_command(tiny_data_dir, moved))
  assert 'was saved by 2 processes and this run has 1' in output
  resumed = logged_losses(moved)
  assert sorted(resumed) == [1, 2, 3, 4]
  np.testing.assert_allclose([resumed[s] for s in (3, 4)], [single[s] for s in (3, 4)],
                             rtol=0, atol=1e-5)


def test_dcn_axis_spans_processes():
  """`config.mesh.dcn` puts an axis across the slow network: on CPU and GPU, across processes
  (TPU slices are read from the devices' slice_index)."""
  code = ('from vidlang_jax import distributed, sharding; distributed.initialize(); '
          'mesh = sharding.make_mesh(dict(data=1, fsdp=4, dcn=dict(data=2))); '
          'print(dict(mesh.shape), [[d.process_index for d in row.flat] '
          'for row in mesh.devices])')
  output = run([LAUNCHER, '-n', '2', '-d', '4', '--', sys.executable, '-c', code])
  for process in range(2):
    line = next(line for line in output.splitlines() if line.startswith(f'[{process}/2] {{'))
    assert line.endswith("{'data': 2, 'fsdp': 4, 'tensor': 1, 'sequence': 1} "
                         '[[0, 0, 0, 0], [1, 1, 1, 1]]')


def processes_of(workdir):
  """{process index: pid} of the `vidlang train` processes writing to `workdir`."""
  found = {}
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        cmdline = f.read().split(b'\0')
      with open(f'/proc/{pid}/environ', 'rb') as f:
        environ = dict(v.split(b'=', 1) for v in f.read().split(b'\0') if b'=' in v)
    except OSError:
      continue
    if workdir.encode() in cmdline and b'VIDLANG_PROCESS_ID' in environ and b'train' in cmdline:
      found[int(environ[b'VIDLANG_PROCESS_ID'])] = int(pid)
  return found


@pytest.mark.faults
def test_sigterm_to_one_process_stops_all_at_one_step(tiny_data_dir, tmp_path):
  """TPU maintenance may signal one host: jax's preemption service tells the others, every
  process stops after the same step, the checkpoint has every process's data state, and the
  launcher exits 0."""
  workdir = str(tmp_path / 'run')
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  command = train_command(tiny_data_dir, workdir, total_steps=200) + [
      '--config.checkpoint_every=50']
  with open(tmp_path / 'run.log', 'w') as log:
    launcher = subprocess.Popen([LAUNCHER, '-n', '2', '-d', '4', '--'] + command, stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    deadline = time.monotonic() + 300
    while not (os.path.exists(os.path.join(workdir, 'metrics.jsonl')) and
               len(logged_losses(workdir)) >= 2):
      assert launcher.poll() is None and time.monotonic() < deadline, 'no step 2'
      time.sleep(0.1)
    os.kill(processes_of(workdir)[1], signal.SIGTERM)
    status = launcher.wait(timeout=300)
  with open(tmp_path / 'run.log') as f:
    output = f.read()
  assert status == 0, output[-4000:]
  stopped = max(logged_losses(workdir))
  assert stopped < 200
  for process in (0, 1):
    assert (f'[{process}/2] ' in output and f'Stopped by SIGTERM after step {stopped}; '
            f'checkpoint {workdir}/checkpoints/{stopped} saved.') in output
  assert output.count(f'Stopped by SIGTERM after step {stopped};') == 2, output[-4000:]
  data_state = os.listdir(os.path.join(workdir, 'checkpoints', str(stopped), 'data'))
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(data_state)


SUM_FAULTS = '''
import numpy as np
from vidlang_jax import distributed, guards
from vidlang_jax.data import faults
distributed.initialize()
import jax
tally = guards.FaultTally(1.0, global_batch_size=16, start_step=0)
process = jax.process_index()
# Each process's batch counts: process p skipped p + 1 corrupt clips and fixed one short clip.
tally.add(np.stack([faults.counts_vector('corrupt_video')] * (process + 1)
                   + [faults.counts_vector(fixed=('short_clip',))]))
tally.flush(step=2)
print('totals', process, tally.metrics()['data/skipped_corrupt_video'],
      tally.metrics()['data/fixed_short_clip'], tally.window_examples)
'''


def test_fault_counts_are_summed_over_processes():
  """Every process logs the same totals: its own counts plus the others' (an all-gather at the
  steps every process flushes)."""
  output = run([LAUNCHER, '-n', '2', '-d', '1', '--', sys.executable, '-c', SUM_FAULTS])
  assert '[0/2] totals 0 3 2 32' in output and '[1/2] totals 1 3 2 32' in output, output
