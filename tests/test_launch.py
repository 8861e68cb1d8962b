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


TPU_POD = os.path.join(ROOT, 'launch', 'tpu_pod.sh')


def tpu_dry_run(*args):
  done = subprocess.run([TPU_POD, 'run', '--dry-run', '--zone', 'us-west4-a', *args],
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  return [shlex.split(line[2:]) for line in done.stdout.splitlines() if line.startswith('+ ')]


def on_workers(commands, node):
  """The --command of every `tpu-vm ssh NODE --worker=all`."""
  return [c[-2].removeprefix('--command=') for c in commands
          if c[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh'] and c[5] == node
          and '--worker=all' in c]


def check_starts_training(worker_commands, config, workdir):
  install = [c for c in worker_commands if 'pip install' in c]
  assert install and "pip install -q -c constraints.txt -e '.[tpu]'" in install[0]
  start = [c for c in worker_commands if 'vidlang train' in c]
  assert len(start) == 1
  assert start[0].index('/tmp/libtpu_lockfile') < start[0].index('vidlang train')
  assert 'lsof -t /dev/accel* /dev/vfio/*' in start[0] and 'kill -9' in start[0]
  assert f'vidlang train --config {config} --workdir {workdir}' in start[0]
  assert 'VIDLANG_DISTRIBUTED=1' in start[0]
  return start[0]


def test_tpu_pod_dry_run_v5e_16():
  commands = tpu_dry_run('--name', 'vt', '--tpu', 'v5e-16', '--config',
                         'configs/two_tower.py:base', '--workdir', 'gs://bucket/runs/vt')
  create = [c for c in commands if c[3:5] == ['tpu-vm', 'create']]
  assert create == [['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'vt',
                     '--accelerator-type=v5litepod-16', '--version=v2-alpha-tpuv5-lite',
                     '--zone=us-west4-a']]
  copy = [c for c in commands if c[3:5] == ['tpu-vm', 'scp']]
  assert len(copy) == 1 and '--worker=all' in copy[0]
  start = check_starts_training(on_workers(commands, 'vt'), 'configs/two_tower.py:base',
                                'gs://bucket/runs/vt')
  assert 'MEGASCALE' not in start
  assert commands[-1][5:7] == ['vt', '--worker=0'] and 'tail' in commands[-1][7]  # worker 0's log


def test_tpu_pod_dry_run_two_v5e_256_slices():
  commands = tpu_dry_run('--name', 'big', '--tpu', 'v5e-256', '--num-slices', '2', '--spot',
                         '--config', 'configs/two_tower.py:base', '--workdir',
                         'gs://bucket/runs/big', '--', '--config.mesh.dcn.data=2')
  create = [c for c in commands if c[3:5] == ['queued-resources', 'create']]
  assert len(create) == 1
  assert {'--node-count', '2', '--node-prefix', 'big', '--accelerator-type=v5litepod-256',
          '--spot'} <= set(create[0])
  for slice_id, node in enumerate(('big-0', 'big-1')):
    start = check_starts_training(on_workers(commands, node), 'configs/two_tower.py:base',
                                  'gs://bucket/runs/big')
    assert f'MEGASCALE_NUM_SLICES=2 MEGASCALE_SLICE_ID={slice_id}' in start
    assert start.rstrip(' &').split(' < /dev/null')[0].endswith('--config.mesh.dcn.data=2')


def test_tpu_pod_refuses_a_local_workdir_and_an_unknown_tpu():
  done = subprocess.run([TPU_POD, 'train', '--dry-run', '--name', 'vt', '--tpu', 'v5e-16',
                         '--zone', 'z', '--config', 'c.py', '--workdir', 'runs/vt'],
                        capture_output=True, text=True)
  assert done.returncode != 0 and 'must be gs://' in done.stderr
  done = subprocess.run([TPU_POD, 'up', '--dry-run', '--name', 'vt', '--tpu', 'v7x-8',
                         '--zone', 'z'], capture_output=True, text=True)
  assert done.returncode != 0 and "--tpu 'v7x-8' is not a TPU type" in done.stderr


def test_constraints_pin_what_the_tests_run_with():
  """constraints.txt (used by make and by every launcher) holds the versions installed here:
  refreshed with `make lock`, never drifting by accident."""
  from importlib import metadata

  pins = dict(line.strip().split('==') for line in open(os.path.join(ROOT, 'constraints.txt'))
              if '==' in line)
  for package in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain'):
    assert pins[package] == metadata.version(package), package
  assert 'libtpu' in pins  # what TPU workers install with the [tpu] extra
