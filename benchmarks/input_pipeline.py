"""The training input against the step it feeds: decoded + augmented clips/s that the input of
`configs/two_tower.py:tiny` delivers over the clips/s its train step consumes, in the same run.

  .venv/bin/python benchmarks/input_pipeline.py   # moving_shapes/small (built if missing)

The input is the trainer's own (`train.train_input`: vidlang_jax/data/pipeline.py
`train_iterator` with the config's grain workers, and with none as a detail); the step is the
trainer's jitted step on a synthetic batch (benchmarks/steps.py): clips/s = batch / step time.
Blocks of each are timed in turns, medians kept. An input prefetches while nobody reads it
(4 batches per worker), so its block first drains that, untimed, and then times batches as the
workers make them; after it the run waits while the buffers refill, so that the workers do not
share the CPU with the next block. `--smoke` builds `moving_shapes/tiny` in a temporary folder
and uses batches of 8.
"""

from __future__ import annotations

import math
import tempfile
import time
from typing import Any

import harness
import steps

from vidlang_jax import train
from vidlang_jax.data import builders

FULL = dict(batches=4, steps=3)  # timed per block; the config's batch size (128)
SMOKE = dict(batches=1, steps=1, batch_size=8)
# What sits ready while nobody reads (grain 0.2.18, measured): per worker a batch in its queue,
# one waiting to be put, one in the reading thread's buffer and one it holds, and in every case
# the read threads' `data.prefetch` elements.
BATCHES_BUFFERED_PER_WORKER = 4


class Input:
  """The trainer's input with `workers` grain workers; `block(n)` returns seconds per batch."""

  def __init__(self, config: Any, workers: int):
    config = config.copy_and_resolve_references()
    config.data.num_workers = workers
    self.workers, self.batch_size = workers, config.batch_size
    self.iterator = train.train_input(config)
    read_ahead = math.ceil(config.data.prefetch / config.batch_size)
    self.buffered = ((BATCHES_BUFFERED_PER_WORKER + read_ahead) * workers if workers
                     else read_ahead)

  def block(self, n: int) -> float:
    for _ in range(self.buffered + 1):  # + 1: the batch being made when the block starts
      next(self.iterator)
    start = time.perf_counter()
    for _ in range(n):
      next(self.iterator)
    seconds = (time.perf_counter() - start) / n
    time.sleep(self.buffered * seconds)  # the refill
    return seconds

  def close(self) -> None:
    train.close_input(self.iterator)


def time_blocks(inputs: dict[str, Input], step: steps.Step, sizes: dict[str, int],
                repeats: int) -> dict[str, list[float]]:
  """Seconds per batch of each input and per step, blocks in turns after a warm-up (the
  workers' start-up, the step's first call)."""

  def step_block() -> float:
    start = time.perf_counter()
    for _ in range(sizes['steps']):
      step.step()
    return (time.perf_counter() - start) / sizes['steps']

  blocks = {name: (lambda x=x: x.block(sizes['batches'])) for name, x in inputs.items()}
  blocks['step'] = step_block
  for x in inputs.values():
    next(x.iterator)
  step.step()
  times: dict[str, list[float]] = {name: [] for name in blocks}
  for _ in range(repeats):
    for name, block in blocks.items():
      times[name].append(block())
  return times


def run(args: Any, overrides: dict[str, Any]) -> None:
  sizes = SMOKE if args.smoke else FULL
  if 'batch_size' in sizes:
    overrides = dict(overrides, batch_size=sizes['batch_size'])
  config = steps.load('two_tower.py:tiny', overrides)
  batch_size, workers = config.batch_size, config.data.num_workers
  builders.prepare(config.data.name, config.data.get('data_dir'))  # before any clock starts
  step = steps.Step(config, vocab=config.data.vocab_size)
  inputs = {f'input, {w} workers': Input(config, w) for w in sorted({workers, 0}, reverse=True)}
  try:
    times = time_blocks(inputs, step, sizes, repeats=1 if args.smoke else args.repeats)
  finally:
    for x in inputs.values():
      x.close()
  clips_per_s = {name: batch_size / harness.median(t) for name, t in times.items()}
  by_workers = {x.workers: clips_per_s[name] for name, x in inputs.items()}
  ours, peer = by_workers[workers], clips_per_s['step']
  figures = [harness.figure(
      'input pipeline clips/s / tiny two-tower step clips/s', ours, peer, goal='>= 3',
      unit='clips/s', lower_is_better=False,
      note=f'{workers} grain workers; with none {by_workers[0] / peer:.2f}x the step; input '
           f'and step share the {harness.machine()["cores"]} CPU cores')]
  harness.write(args, 'input_pipeline', figures, dataset=config.data.name,
                batch_size=batch_size, block_sizes=sizes, times=times, clips_per_s=clips_per_s,
                clips_per_s_by_workers=by_workers,
                clips_per_s_per_worker={w: c / max(w, 1) for w, c in by_workers.items()},
                step_s=harness.median(times['step']), step_flops=step.flops)


def main() -> None:
  args = harness.parser(__doc__.splitlines()[0]).parse_args()
  if not args.smoke:
    run(args, {})
    return
  with tempfile.TemporaryDirectory() as data_dir:  # moving_shapes/tiny builds in seconds
    run(args, {'data.name': 'moving_shapes/tiny', 'data.data_dir': data_dir})


if __name__ == '__main__':  # grain's workers are spawned: they import this file again
  main()
