"""`vidlang train` on a Cloud TPU VM slice, or several slices over DCN, driven from your machine
with `gcloud` (installed and logged in: `gcloud auth login`, `gcloud config set project P`).

  # Everything at once: create (or reuse) the slice, copy and install this checkout on every
  # worker, start training on every host, stream worker 0's log (Ctrl-C stops only the stream).
  launch/tpu_pod.sh run --name vt --tpu v5e-16 --zone us-west4-a \
      --config configs/two_tower.py:base --workdir gs://BUCKET/runs/vt -- --config.total_steps=1000

  # Or step by step; the same flags each time.
  launch/tpu_pod.sh up|setup|train|logs|stop|down --name vt --tpu v5e-16 --zone us-west4-a ...

  --spot: spot capacity (preemptible; `train` again resumes from the workdir's checkpoint);
  --queued [--reserved]: a queued resource; --num-slices N: N slices over DCN (always queued).
  --dry-run: print every command instead of running it.

Every worker installs exactly the versions our tests ran with (`constraints.txt`, refreshed on
purpose with `make lock`), plus the `[tpu]` extra. Before starting, each worker frees the TPU
from stale holders (`/tmp/libtpu_lockfile`, processes holding `/dev/accel*` or `/dev/vfio/*`).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REMOTE_CODE = '~/vidlang'
REMOTE_VENV = '~/vidlang-venv'
REMOTE_LOG = '~/vidlang-train.log'
MEGASCALE_PORT = 8080

# Generation -> (accelerator-type prefix, TPU VM runtime version). Accelerator types count chips
# for v5e / v6e and TensorCores for v4 / v5p (v4-8 and v5p-8 are 4 chips), as gcloud names them.
GENERATIONS = {
    'v4': ('v4', 'tpu-ubuntu2204-base'),
    'v5e': ('v5litepod', 'v2-alpha-tpuv5-lite'),
    'v5p': ('v5p', 'v2-alpha-tpuv5'),
    'v6e': ('v6e', 'v2-alpha-tpuv6e'),
}

FREE_TPU = ('sudo rm -f /tmp/libtpu_lockfile; '
            'pids=$(sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null | sort -u); '
            'if [ -n "$pids" ]; then echo "freeing the TPU from $pids"; sudo kill -9 $pids; fi')


@dataclasses.dataclass
class Slice:
  """Where to run: one TPU VM slice, or `num_slices` of them made by one queued resource."""

  name: str
  zone: str
  accelerator_type: str  # as gcloud names it, e.g. v5litepod-16
  runtime_version: str
  num_slices: int = 1
  spot: bool = False
  queued: bool = False
  reserved: bool = False
  project: str | None = None

  @property
  def nodes(self) -> list[str]:
    """The TPU VM names: a multi-slice queued resource names its nodes `<name>-<i>`."""
    if self.num_slices == 1:
      return [self.name]
    return [f'{self.name}-{i}' for i in range(self.num_slices)]

  def gcloud(self, *args: str) -> list[str]:
    return ['gcloud', 'compute', 'tpus', *args, f'--zone={self.zone}'] + (
        [f'--project={self.project}'] if self.project else [])


def parse_tpu(tpu: str) -> tuple[str, str]:
  """'v5e-16' / 'v5litepod-16' / 'v5p-512' / 'v6e-256' / 'v4-32' -> (accelerator type,
  runtime version)."""
  match = re.fullmatch(r'(v4|v5e|v5litepod|v5p|v6e)-(\d+)', tpu)
  if not match:
    raise SystemExit(f'error: --tpu {tpu!r} is not a TPU type such as v5e-16, v5litepod-16, '
                     f'v5p-512, v6e-256 or v4-32.')
  generation = 'v5e' if match.group(1) == 'v5litepod' else match.group(1)
  prefix, runtime = GENERATIONS[generation]
  return f'{prefix}-{match.group(2)}', runtime


class Runner:
  """Runs commands, or with `dry_run` prints them (one shell-quoted line each)."""

  def __init__(self, dry_run: bool):
    self.dry_run = dry_run

  def __call__(self, command: list[str], check: bool = True) -> int:
    print('+ ' + shlex.join(command), flush=True)
    if self.dry_run:
      return 0
    return subprocess.run(command, check=check).returncode

  def output(self, command: list[str], dry_run_value: str) -> str:
    print('+ ' + shlex.join(command), flush=True)
    if self.dry_run:
      return dry_run_value
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def ssh(tpu: Slice, node: str, command: str, worker: str = 'all') -> list[str]:
  return tpu.gcloud('tpu-vm', 'ssh', node, f'--worker={worker}', f'--command={command}')


def up(tpu: Slice, run: Runner) -> None:
  """Creates the slice(s), or reuses them when they exist."""
  if tpu.queued or tpu.num_slices > 1:
    exists = run(tpu.gcloud('queued-resources', 'describe', tpu.name), check=False) == 0
    if not run.dry_run and exists:
      print(f'Reusing queued resource {tpu.name}.')
    else:
      nodes = (['--node-id', tpu.name] if tpu.num_slices == 1 else
               ['--node-count', str(tpu.num_slices), '--node-prefix', tpu.name])
      capacity = ['--spot'] if tpu.spot else ['--reserved'] if tpu.reserved else []
      run(tpu.gcloud('queued-resources', 'create', tpu.name, *nodes,
                     f'--accelerator-type={tpu.accelerator_type}',
                     f'--runtime-version={tpu.runtime_version}', *capacity))
    wait_until_active(tpu, run)
    return
  exists = run(tpu.gcloud('tpu-vm', 'describe', tpu.name), check=False) == 0
  if not run.dry_run and exists:
    print(f'Reusing TPU VM {tpu.name}.')
    return
  run(tpu.gcloud('tpu-vm', 'create', tpu.name, f'--accelerator-type={tpu.accelerator_type}',
                 f'--version={tpu.runtime_version}', *(['--spot'] if tpu.spot else [])))


def wait_until_active(tpu: Slice, run: Runner, poll_s: int = 30) -> None:
  while True:
    state = run.output(tpu.gcloud('queued-resources', 'describe', tpu.name,
                                  '--format=value(state.state)'), 'ACTIVE')
    if state == 'ACTIVE':
      return
    if state in ('FAILED', 'SUSPENDED'):
      raise SystemExit(f'error: queued resource {tpu.name} is {state}; delete it with `down`.')
    print(f'Queued resource {tpu.name}: {state}; waiting.', flush=True)
    time.sleep(poll_s)


def setup(tpu: Slice, run: Runner) -> None:
  """This checkout's committed code on every worker of every slice, installed with the
  versions of `constraints.txt`."""
  dirty = subprocess.run(['git', '-C', str(ROOT), 'status', '--porcelain', '--untracked-files=no'],
                         capture_output=True, text=True).stdout.strip()
  if dirty:
    print('warning: uncommitted changes are not copied (the workers get HEAD).', flush=True)
  archive = '/tmp/vidlang-code.tar.gz'
  run(['git', '-C', str(ROOT), 'archive', '--format=tar.gz', f'--output={archive}', 'HEAD'])
  install = (f'mkdir -p {REMOTE_CODE} && tar xzf ~/vidlang-code.tar.gz -C {REMOTE_CODE} && '
             f'cd {REMOTE_CODE} && (test -x {REMOTE_VENV}/bin/python || python3 -m venv '
             f'{REMOTE_VENV}) && {REMOTE_VENV}/bin/pip install -q --upgrade pip && '
             f"{REMOTE_VENV}/bin/pip install -q -c constraints.txt -e '.[tpu]'")
  for node in tpu.nodes:
    run(tpu.gcloud('tpu-vm', 'scp', archive, f'{node}:~/vidlang-code.tar.gz', '--worker=all'))
    run(ssh(tpu, node, install))


def train_command(config: str, workdir: str, overrides: list[str]) -> str:
  return f'{REMOTE_VENV}/bin/vidlang ' + shlex.join(
      ['train', '--config', config, '--workdir', workdir, *overrides])


def train(tpu: Slice, run: Runner, config: str, workdir: str, overrides: list[str]) -> None:
  """Frees the TPU, then starts the same `vidlang train` on every host in the background."""
  if not workdir.startswith('gs://'):
    raise SystemExit(f'error: --workdir {workdir!r} must be gs://...: every host writes its '
                     'part of the checkpoints there, and the run outlives the VMs.')
  env = {'VIDLANG_DISTRIBUTED': '1'}
  coordinator = None
  if tpu.num_slices > 1:  # slices talk over DCN through worker 0 of slice 0
    coordinator = run.output(
        tpu.gcloud('tpu-vm', 'describe', tpu.nodes[0],
                   '--format=value(networkEndpoints[0].ipAddress)'), '<worker 0 of slice 0>')
  for slice_id, node in enumerate(tpu.nodes):
    if coordinator is not None:
      env.update(MEGASCALE_COORDINATOR_ADDRESS=f'{coordinator}:{MEGASCALE_PORT}',
                 MEGASCALE_NUM_SLICES=str(tpu.num_slices), MEGASCALE_SLICE_ID=str(slice_id),
                 MEGASCALE_PORT=str(MEGASCALE_PORT))
    exports = ' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items())
    start = (f'{FREE_TPU}; cd {REMOTE_CODE} && {exports} nohup '
             f'{train_command(config, workdir, overrides)} < /dev/null > {REMOTE_LOG} 2>&1 &')
    run(ssh(tpu, node, start))


def logs(tpu: Slice, run: Runner) -> None:
  run(ssh(tpu, tpu.nodes[0], f'tail -n +1 -F {REMOTE_LOG}', worker='0'), check=False)


def stop(tpu: Slice, run: Runner) -> None:
  for node in tpu.nodes:
    run(ssh(tpu, node, "pkill -INT -f 'bin/vidlang train' || true"))


def down(tpu: Slice, run: Runner) -> None:
  if tpu.queued or tpu.num_slices > 1:
    run(tpu.gcloud('queued-resources', 'delete', tpu.name, '--force', '--quiet'))
  else:
    run(tpu.gcloud('tpu-vm', 'delete', tpu.name, '--quiet'))


def main(argv: list[str]) -> None:
  argv, overrides = (argv[:argv.index('--')], argv[argv.index('--') + 1:]) if '--' in argv \
      else (argv, [])
  parser = argparse.ArgumentParser(prog='launch/tpu_pod.sh', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('action', choices=('run', 'up', 'setup', 'train', 'logs', 'stop', 'down'))
  parser.add_argument('--name', required=True, help='TPU VM (or queued resource) name')
  parser.add_argument('--tpu', required=True, help='e.g. v5e-16, v5p-512, v6e-256, v4-32')
  parser.add_argument('--zone', required=True)
  parser.add_argument('--project', help='default: gcloud config get project')
  parser.add_argument('--runtime-version', help='default: the generation\'s TPU VM image')
  parser.add_argument('--num-slices', type=int, default=1)
  parser.add_argument('--spot', action='store_true')
  parser.add_argument('--queued', action='store_true')
  parser.add_argument('--reserved', action='store_true')
  parser.add_argument('--config', help='e.g. configs/two_tower.py:base (train, run)')
  parser.add_argument('--workdir', help='gs://BUCKET/runs/NAME (train, run)')
  parser.add_argument('--dry-run', action='store_true', help='print the commands only')
  args = parser.parse_args(argv)
  accelerator_type, runtime = parse_tpu(args.tpu)
  tpu = Slice(args.name, args.zone, accelerator_type, args.runtime_version or runtime,
              num_slices=args.num_slices, spot=args.spot, queued=args.queued,
              reserved=args.reserved, project=args.project)
  run = Runner(args.dry_run)
  if args.action in ('run', 'train') and not (args.config and args.workdir):
    parser.error(f'{args.action} needs --config and --workdir')
  if args.action in ('run', 'up'):
    up(tpu, run)
  if args.action in ('run', 'setup'):
    setup(tpu, run)
  if args.action in ('run', 'train'):
    train(tpu, run, args.config, args.workdir, overrides)
  if args.action in ('run', 'logs'):
    logs(tpu, run)
  if args.action == 'stop':
    stop(tpu, run)
  if args.action == 'down':
    down(tpu, run)


if __name__ == '__main__':
  main(sys.argv[1:])
