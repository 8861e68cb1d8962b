"""Metrics to `workdir/metrics.jsonl` (one JSON object per logged step) and TensorBoard."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np


def to_python(value: Any) -> Any:
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()
  return value


class MetricWriter:
  """Writes from process 0 only; other processes get a no-op writer."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    from tensorboardX import SummaryWriter

    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.jsonl = open(self.path, 'a', encoding='utf-8')
    self.tensorboard = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def drop_after(self, step: int) -> None:
    """Forgets logged records past `step` (a resumed run redoes those steps)."""
    if not self.enabled:
      return
    self.jsonl.close()
    with open(self.path, encoding='utf-8') as f:
      kept = [line for line in f if json.loads(line)['step'] <= step]
    with open(self.path, 'w', encoding='utf-8') as f:
      f.writelines(kept)
    self.jsonl = open(self.path, 'a', encoding='utf-8')

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), **{k: to_python(v) for k, v in metrics.items()}}
    self.jsonl.write(json.dumps(record) + '\n')
    self.jsonl.flush()
    for key, value in record.items():
      if key != 'step' and isinstance(value, (int, float)):
        self.tensorboard.add_scalar(key, value, step)
    self.tensorboard.flush()

  def close(self) -> None:
    if self.enabled:
      self.jsonl.close()
      self.tensorboard.close()
