"""Metrics to `workdir/metrics.jsonl` (one JSON object per logged step) and TensorBoard."""

from __future__ import annotations

import json
from typing import Any, Mapping

import jax
import numpy as np

from vidlang_jax import paths


def to_python(value: Any) -> Any:
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()
  return value


def _step_of(line: str) -> float:
  """A record's step; a line cut short by a killed process is dropped (its step is redone)."""
  try:
    return json.loads(line)['step']
  except (json.JSONDecodeError, KeyError):
    return float('inf')


class MetricWriter:
  """Writes from process 0 only; other processes get a no-op writer.

  A local metrics.jsonl is appended to; an object store (`gs://`) has no append, so there the
  whole file, kept in memory, is written again on each write (one line per logged step).
  """

  def __init__(self, workdir: paths.PathLike):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    from tensorboardX import SummaryWriter

    self.path = paths.path(workdir) / 'metrics.jsonl'
    self.remote = paths.is_remote(self.path)
    self.lines = self.path.read_text(encoding='utf-8').splitlines(keepends=True) if (
        self.remote and self.path.exists()) else []
    self.jsonl = None if self.remote else self.path.open('a', encoding='utf-8')
    self.tensorboard = SummaryWriter(str(paths.path(workdir) / 'tensorboard'))

  def drop_after(self, step: int) -> None:
    """Forgets logged records past `step` (a resumed run redoes those steps)."""
    if not self.enabled:
      return
    if not self.remote:
      self.jsonl.close()
      self.lines = self.path.read_text(encoding='utf-8').splitlines(keepends=True)
    self.lines = [line for line in self.lines if _step_of(line) <= step]
    self.path.write_text(''.join(self.lines), encoding='utf-8')
    if not self.remote:
      self.jsonl = self.path.open('a', encoding='utf-8')

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), **{k: to_python(v) for k, v in metrics.items()}}
    line = json.dumps(record) + '\n'
    if self.remote:
      self.lines.append(line)
      self.path.write_text(''.join(self.lines), encoding='utf-8')
    else:
      self.jsonl.write(line)
      self.jsonl.flush()
    for key, value in record.items():
      if key != 'step' and isinstance(value, (int, float)):
        self.tensorboard.add_scalar(key, value, step)
    self.tensorboard.flush()

  def close(self) -> None:
    if self.enabled:
      if self.jsonl is not None:
        self.jsonl.close()
      self.tensorboard.close()
