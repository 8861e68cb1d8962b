"""What the training loop watches besides the loss: bad input records, updates skipped for
non-finite values, and when to save by the clock. Each keeps running totals that go into the
checkpoint (`counters`), so a resumed run continues them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from vidlang_jax.data import faults

log = logging.getLogger(__name__)


class DataFaultError(ValueError):
  """More of a window's records were bad than `data.max_bad_fraction` allows."""


class NonFiniteError(FloatingPointError):
  """`max_nonfinite_in_a_row` updates in a row were skipped for NaN / inf."""


def _sum_over_processes(counts: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return counts.copy()
  return np.asarray(multihost_utils.process_allgather(counts)).sum(axis=0)


class FaultTally:
  """Per-kind counts of skipped and fixed records (data/faults.py), summed over processes.

  `add` takes each local batch's `data_faults`; `flush` (on every process at the same steps)
  sums the counts since the last flush over the processes into the run's totals.
  """

  def __init__(self, max_bad_fraction: float, global_batch_size: int, start_step: int,
               totals: dict[str, int] | None = None):
    if not 0 <= max_bad_fraction <= 1:
      raise ValueError(f'data.max_bad_fraction={max_bad_fraction} must be in [0, 1].')
    self.max_bad_fraction = max_bad_fraction
    self.global_batch_size = global_batch_size
    self.flushed_step = start_step
    names = faults.metric_names()
    self.totals = np.array([(totals or {}).get(name, 0) for name in names], np.int64)
    self.pending = np.zeros_like(self.totals)
    self.window = np.zeros_like(self.totals)  # since the last `check`, summed over processes
    self.window_examples = 0

  def add(self, batch_counts: np.ndarray) -> None:
    self.pending += np.asarray(batch_counts).sum(axis=0)

  def flush(self, step: int) -> None:
    """Counts everything read up to `step` (the steps since the last flush); a second flush
    at the same step (a logged step that also saves) has nothing to add."""
    if step == self.flushed_step:
      return
    window = _sum_over_processes(self.pending)
    self.pending[:] = 0
    self.totals += window
    self.window += window
    self.window_examples += self.global_batch_size * (step - self.flushed_step)
    self.flushed_step = step

  def check(self, step: int) -> None:
    """Raises DataFaultError when the window's bad fraction exceeds the limit; starts a new
    window."""
    window = dict(zip(faults.RECORD_SKIPS, self.window[:len(faults.RECORD_SKIPS)].tolist()))
    skipped = sum(window.values())
    read = skipped + self.window_examples
    self.window[:], self.window_examples = 0, 0
    if read and skipped / read > self.max_bad_fraction:
      kinds = ', '.join(f'{k} {n}' for k, n in window.items() if n)
      raise DataFaultError(
          f'{skipped} of the {read} records read up to step {step} were bad ({kinds}): more '
          f'than data.max_bad_fraction={self.max_bad_fraction}. Check that data.name names '
          'the dataset you meant (the warnings above name each record), rebuild it, or raise '
          'data.max_bad_fraction.')

  def metrics(self) -> dict[str, int]:
    return {**self.counters(), 'data_skipped': int(self.totals[:len(faults.RECORD_SKIPS)].sum())}

  def counters(self) -> dict[str, int]:
    return dict(zip(faults.metric_names(), self.totals.tolist()))


class NonFiniteGuard:
  """Counts the updates the train step skipped because the loss or the update was NaN / inf,
  and stops the run after `max_in_a_row` in a row.

  Each step's flag is read one step late (`push`), so that checking it never waits for the
  step just dispatched; `resolve` reads the last one too (before a save or the end).
  """

  def __init__(self, max_in_a_row: int, total: int = 0, newest_checkpoint=lambda: None):
    if max_in_a_row < 1:
      raise ValueError(f'max_nonfinite_in_a_row={max_in_a_row} must be at least 1.')
    self.max_in_a_row = max_in_a_row
    self.total = total
    self.in_a_row = 0
    self.first_bad_step = None
    self.newest_checkpoint = newest_checkpoint
    self._pending: tuple[int, jax.Array] | None = None

  def push(self, step: int, skipped: jax.Array) -> None:
    previous, self._pending = self._pending, (step, skipped)
    if previous is not None:
      self._count(*previous)

  def resolve(self) -> None:
    if self._pending is not None:
      self._count(*self._pending)
      self._pending = None

  def _count(self, step: int, skipped: jax.Array) -> None:
    if not bool(jax.device_get(skipped)):
      self.in_a_row, self.first_bad_step = 0, None
      return
    self.total += 1
    self.in_a_row += 1
    self.first_bad_step = self.first_bad_step or step
    log.warning('Step %d: the loss or the update is not finite; the update was skipped '
                '(%d in a row, %d in this run).', step, self.in_a_row, self.total)
    if self.in_a_row >= self.max_in_a_row:
      first, checkpoint = self.first_bad_step, self.newest_checkpoint()
      # A skipped update changes nothing, so every checkpoint holds finite params.
      where = (f'The newest checkpoint, {checkpoint}, holds the last good params and is kept: '
               'rerun the same command to resume from it' if checkpoint else
               'No checkpoint was saved yet: rerun to start again')
      raise NonFiniteError(
          f'The loss or the update was not finite for {self.in_a_row} steps in a row (steps '
          f'{first}-{step}, max_nonfinite_in_a_row={self.max_in_a_row}); each update was '
          f'skipped, so the params are those after step {first - 1}. {where}, after lowering '
          'optimizer.learning_rate or checking the data of those steps.')


class SaveClock:
  """True every `minutes` of wall time (0: never), the same step on every process."""

  def __init__(self, minutes: float):
    self.seconds = 60 * minutes
    self.last = time.monotonic()

  def due(self) -> bool:
    if not self.seconds:
      return False
    due = time.monotonic() - self.last >= self.seconds
    if jax.process_count() > 1:  # process 0's clock decides for all
      due = bool(multihost_utils.broadcast_one_to_all(np.bool_(due)))
    return due

  def saved(self) -> None:
    self.last = time.monotonic()


def counters(tally: FaultTally, guard: NonFiniteGuard) -> dict[str, Any]:
  """The running totals a checkpoint keeps."""
  return {**tally.counters(), 'updates_skipped_nonfinite': guard.total}
