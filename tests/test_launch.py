"""launch/: what each launcher would run on a cluster (SLURM's srun line, a TPU pod's commands
with --dry-run), that its XLA flags exist in this jaxlib, and that the environments the
launchers create make `vidlang` join one multi-process run."""

import os
import random
import shlex
import subprocess
import sys

import pytest

from vidlang_jax import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBATCH = os.path.join(ROOT, 'launch', 'gpu_slurm.sbatch')


@pytest.mark.parametrize('environ, kind', [
    ({}, 'single'),
    ({'VIDLANG_COORDINATOR_ADDRESS': '10.0.0.2:1234'}, 'explicit'),
    ({'SLURM_NTASKS': '16', 'SLURM_STEP_ID': '0'}, 'slurm'),
    ({'SLURM_NTASKS': '16'}, 'single'),  # the batch script itself, outside srun
    ({'SLURM_NTASKS': '1', 'SLURM_STEP_ID': '0'}, 'single'),
    ({'VIDLANG_DISTRIBUTED': '1'}, 'tpu'),
    ({'TPU_WORKER_HOSTNAMES': 't1k-w-0,t1k-w-1'}, 'tpu'),
    ({'TPU_WORKER_HOSTNAMES': 'localhost'}, 'single'),  # a single-host TPU VM
    ({'MEGASCALE_COORDINATOR_ADDRESS': '10.0.0.2'}, 'tpu'),
])
def test_launch_kind(environ, kind):
  assert distributed.launch_kind(environ) == kind


def test_coordinator_without_process_count_is_a_clear_error(monkeypatch):
  monkeypatch.setenv('VIDLANG_COORDINATOR_ADDRESS', '127.0.0.1:1')
  monkeypatch.delenv('VIDLANG_NUM_PROCESSES', raising=False)
  with pytest.raises(ValueError, match='needs --num_processes and --process_id'):
    distributed.initialize()


def run_sbatch(tmp_path, *args):
  """The batch script under bash with a fake `srun` that records what it was asked to run."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  record = tmp_path / 'srun.txt'
  (bin_dir / 'srun').write_text(
      '#!/bin/bash\n'
      f'printf "%s\\n" "$@" > {record}\n'
      f'printf "%s\\n" "$XLA_FLAGS" > {record}.xla_flags\n')
  (bin_dir / 'srun').chmod(0o755)
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}')
  env.pop('XLA_FLAGS', None)
  done = subprocess.run(['bash', SBATCH, *args], capture_output=True, text=True, env=env)
  return done, record


def test_sbatch_runs_one_training_process_per_gpu(tmp_path):
  done, record = run_sbatch(tmp_path, 'configs/two_tower.py:base', 'gs://bucket/runs/vt',
                            '--config.mesh.fsdp=-1', '--config.mesh.data=1')
  assert done.returncode == 0, done.stderr
  srun_args = record.read_text().splitlines()
  assert srun_args[:srun_args.index('vidlang')] == ['--kill-on-bad-exit=1']
  assert srun_args[srun_args.index('vidlang'):] == [
      'vidlang', 'train', '--config', 'configs/two_tower.py:base', '--workdir',
      'gs://bucket/runs/vt', '--config.mesh.fsdp=-1', '--config.mesh.data=1']
  text = open(SBATCH).read()
  assert '#SBATCH --ntasks-per-node=8' in text and '#SBATCH --gpus-per-node=8' in text

  # XLA aborts on a flag it does not know: every flag the script sets exists in this jaxlib.
  xla_flags = ' '.join(shlex.split(record.with_suffix('.txt.xla_flags').read_text()))
  assert '--xla_gpu_enable_latency_hiding_scheduler=true' in xla_flags
  assert '--xla_gpu_all_gather_combine_threshold_bytes=' in xla_flags
  assert '--xla_gpu_enable_command_buffer=' in xla_flags
  check = subprocess.run([sys.executable, '-c', 'import jax; jax.devices()'],
                         capture_output=True, text=True,
                         env=dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS='cpu'))
  assert check.returncode == 0, check.stderr[-2000:]


def test_sbatch_without_arguments_says_how_to_call_it(tmp_path):
  done, _ = run_sbatch(tmp_path)
  assert done.returncode == 2 and 'usage: sbatch' in done.stderr


def test_slurm_tasks_join_one_run():
  """Two local processes with the environment srun gives its tasks: jax's SLURM detection
  (coordinator from SLURM_STEP_NODELIST, port from SLURM_JOB_ID) makes them one run."""
  job_id = str(random.randrange(10_000, 20_000))
  code = ('from vidlang_jax import distributed; kind = distributed.initialize(); import jax; '
          'print(kind, jax.process_index(), jax.process_count(), jax.device_count())')
  procs = [subprocess.Popen(
      [sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=dict(os.environ, SLURM_JOB_ID=job_id, SLURM_STEP_NODELIST='localhost',
               SLURM_NTASKS='2', SLURM_PROCID=str(i), SLURM_LOCALID=str(i), SLURM_STEP_ID='0',
               JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=2'))
           for i in range(2)]
  outputs = [p.communicate(timeout=120)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  assert [out.strip().splitlines()[-1] for out in outputs] == ['slurm 0 2 4', 'slurm 1 2 4']
