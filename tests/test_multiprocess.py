"""Two local processes x 4 CPU devices = one 8-device mesh: the multi-host code path, saving
and resuming, read back in one process."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np

from vidlang_jax import checkpoint as checkpoint_lib


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_two_processes(data_dir, workdir, total_steps):
  worker = os.path.join(os.path.dirname(__file__), 'multiprocess_worker.py')
  port = str(free_port())
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  procs = [subprocess.Popen([sys.executable, worker, str(i), '2', port, data_dir, workdir,
                             str(total_steps)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
           for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  losses = [line.split('loss=')[1] for out in outputs for line in out.splitlines()
            if 'devices=8' in line]
  assert len(losses) == 2 and losses[0] == losses[1]  # one global computation, one loss


def logged_losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


def test_two_processes_train_checkpoint_resume_and_eval(tiny_data_dir, tmp_path):
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  run_two_processes(tiny_data_dir, straight, 4)
  data_state = os.listdir(os.path.join(straight, 'checkpoints', '2', 'data'))
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(data_state)
  with open(os.path.join(straight, 'eval', '4.json')) as f:
    assert json.load(f)['chance_r1'] == 1 / 64  # every test clip evaluated exactly once

  # A run killed after its step-2 checkpoint: new processes restore the train state and each
  # process's data iterator, and redo steps 3-4 as the uninterrupted run did.
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '4'))
  run_two_processes(tiny_data_dir, resumed, 4)
  first, again = logged_losses(straight), logged_losses(resumed)
  assert sorted(again) == [1, 2, 3, 4]
  np.testing.assert_allclose([again[s] for s in (3, 4)], [first[s] for s in (3, 4)], rtol=1e-6)

  # What the two processes wrote, read in this one process (another topology), leaf by leaf.
  params, name = checkpoint_lib.read_params(straight)
  params_resumed, name_resumed = checkpoint_lib.read_params(resumed)
  assert name.endswith('4') and name_resumed.endswith('4')
  assert params.keys() == params_resumed.keys() and len(params) > 10
  for path in params:
    np.testing.assert_allclose(params_resumed[path], params[path], rtol=1e-5, atol=1e-7,
                               err_msg=path)
