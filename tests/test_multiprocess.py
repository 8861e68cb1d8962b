"""Two local processes x 4 CPU devices = one 8-device mesh: the multi-host code path."""

import json
import os
import socket
import subprocess
import sys


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_train_checkpoint_and_eval(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  worker = os.path.join(os.path.dirname(__file__), 'multiprocess_worker.py')
  port = str(free_port())
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  procs = [subprocess.Popen([sys.executable, worker, str(i), '2', port, tiny_data_dir, workdir],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
           for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  losses = [line.split('loss=')[1] for out in outputs for line in out.splitlines()
            if 'devices=8' in line]
  assert len(losses) == 2 and losses[0] == losses[1]  # one global computation, one loss
  data_state = os.listdir(os.path.join(workdir, 'checkpoints', '2', 'data'))
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(data_state)
  with open(os.path.join(workdir, 'eval', '2.json')) as f:
    assert json.load(f)['chance_r1'] == 1 / 64  # every test clip evaluated exactly once
