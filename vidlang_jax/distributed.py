"""Multi-process start-up: `jax.distributed.initialize` when the run was launched as several
processes, so that the same `vidlang train` command serves a laptop, a TPU pod and SLURM.

How a launch is recognised, first match wins:
  1. an explicit coordinator: `--coordinator_address host:port --num_processes N --process_id I`
     or `VIDLANG_COORDINATOR_ADDRESS` / `VIDLANG_NUM_PROCESSES` / `VIDLANG_PROCESS_ID`
     (launch/local_multiprocess.sh sets these);
  2. a SLURM step of more than one task (`srun`, see launch/gpu_slurm.sbatch): jax reads
     SLURM's environment;
  3. a TPU pod or multi-slice: `VIDLANG_DISTRIBUTED=1` (launch/tpu_pod.py sets it), several
     `TPU_WORKER_HOSTNAMES` or `MEGASCALE_COORDINATOR_ADDRESS`: jax asks the TPU runtime.
Anything else is one process.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Mapping

import jax
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


def launch_kind(environ: Mapping[str, str], coordinator_address: str | None = None) -> str:
  """'explicit', 'slurm', 'tpu' or 'single' (see the module docstring)."""
  if coordinator_address or environ.get('VIDLANG_COORDINATOR_ADDRESS'):
    return 'explicit'
  if int(environ.get('SLURM_NTASKS', '1') or 1) > 1 and 'SLURM_STEP_ID' in environ:
    return 'slurm'
  if (environ.get('VIDLANG_DISTRIBUTED') == '1'
      or ',' in environ.get('TPU_WORKER_HOSTNAMES', '')
      or environ.get('MEGASCALE_COORDINATOR_ADDRESS')):
    return 'tpu'
  return 'single'


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> str:
  """Joins the other processes of this run, if there are any; returns the launch kind.

  Call before anything touches a device (jax cannot join afterwards).
  """
  kind = launch_kind(os.environ, coordinator_address)
  if kind == 'explicit':
    address = coordinator_address or os.environ['VIDLANG_COORDINATOR_ADDRESS']
    count = num_processes if num_processes is not None else os.environ.get(
        'VIDLANG_NUM_PROCESSES')
    index = process_id if process_id is not None else os.environ.get('VIDLANG_PROCESS_ID')
    if count is None or index is None:
      raise ValueError(f'A coordinator ({address}) needs --num_processes and --process_id (or '
                       'VIDLANG_NUM_PROCESSES and VIDLANG_PROCESS_ID).')
    jax.distributed.initialize(address, num_processes=int(count), process_id=int(index))
  elif kind in ('slurm', 'tpu'):
    jax.distributed.initialize()  # jax's cluster detection reads SLURM's / the TPU's settings
  if kind != 'single' and jax.process_index() == 0:
    log.info('Process %d of %d (%s launch), %d local of %d devices.', jax.process_index(),
             jax.process_count(), kind, jax.local_device_count(), jax.device_count())
  return kind


class PreemptionWatch:
  """Has this run been told to stop (SIGTERM: TPU maintenance, SLURM preemption, `kill`)?

  One process: a SIGTERM handler sets a flag that the loop reads after each step. Several:
  jax's preemption service (started by `jax.distributed.initialize`) catches SIGTERM on any
  process and agrees with the others on one step to stop at, which
  `multihost_utils.reached_preemption_sync_point` reports on every process; call `reached`
  at every step on every process.
  """

  def __init__(self):
    self.multiprocess = jax.process_count() > 1
    self.received = False
    self._previous = None
    if not self.multiprocess and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self.received = True
    log.warning('SIGTERM received: saving a checkpoint after this step, then exiting.')

  def reached(self, step: int) -> bool:
    if self.multiprocess:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
