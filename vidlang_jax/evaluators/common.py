"""What every evaluator shares: set-up, the one eval loop, pictures and text on process 0.

An evaluator is registered as `evaluator.<name>`, built once per run with
`(model=, config=, eval_config=, mesh=, name=)`, and called as `run(params, step=, workdir=)
-> {metric: value}`. Clip evaluators subclass `Evaluator`, which checks the splits, builds the
dataset if needed and runs `outputs()`: the split in fixed-size batches -> this process's slice
-> a sharded jit-ed function -> outputs gathered from every process, with the padding mask.
An evaluator that the dataset cannot feed (labels it does not have) raises `Unavailable` when
built; the trainer leaves it out with a one-line notice and runs the others.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image

from vidlang_jax import paths, sharding
from vidlang_jax.data import builders, pipeline


class Unavailable(Exception):
  """This evaluator cannot run on this dataset (the message says why)."""


def process_slice(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's contiguous share of a batch that every process holds whole."""
  count, index = jax.process_count(), jax.process_index()
  return {k: np.array_split(v, count)[index] for k, v in batch.items()}


def gather(tree: Any) -> Any:
  """Global arrays (sharded over processes) -> numpy arrays, whole on every process."""
  return multihost_utils.process_allgather(tree, tiled=True)


def save_image(workdir: paths.PathLike, folder: str, step: int, image: np.ndarray) -> str:
  """Writes `workdir/folder/<step>.png` on process 0; returns the path."""
  path = paths.path(workdir) / folder / f'{step}.png'
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open('wb') as f:
      Image.fromarray(image).save(f, format='PNG')
  return str(path)


def save_text(workdir: paths.PathLike, folder: str, step: int, lines: Sequence[str]) -> str:
  """Writes `workdir/folder/<step>.txt` (one line each) on process 0; returns the path."""
  path = paths.path(workdir) / folder / f'{step}.txt'
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
  return str(path)


class Evaluator:
  """Set-up shared by the evaluators that read clips of the run's dataset.

  `split_keys` names the eval-config keys that hold split names (checked when built).
  `subset_fields` are the dataset fields `eval_config.subset` ({field: value}) selects on.
  """

  split_keys: tuple[str, ...] = ('split',)

  def __init__(self, *, model, config: ml_collections.ConfigDict,
               eval_config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               name: str = ''):
    self.model, self.config, self.eval_config, self.mesh = model, config, eval_config, mesh
    self.name = name or eval_config.type
    self.data = config.data
    pipeline.tokenizer_path(config.data)  # builds the dataset (and tokenizer) if needed
    for key in self.split_keys:
      pipeline.check_split(config.data, eval_config[key], f'evals.{self.name}.{key}')
    self.batch_size = eval_config.get('batch_size', config.batch_size)
    self.builder = builders.get_builder(config.data.name, config.data.get('data_dir'),
                                        **config.data.get('builder_kwargs', {}))
    self.subset_fields = tuple(dict(eval_config.get('subset') or {}))
    self.require_fields(self.subset_fields)

  @staticmethod
  def format_results(results: dict[str, Any]) -> tuple[list[str], set[str]]:
    """Summary lines of this evaluator's results: none by default (the caller prints
    `key: value`); evaluators with a better table return (lines, the keys they printed)."""
    del results
    return [], set()

  def label_classes(self, labels: Sequence[str]) -> dict[str, list[str]]:
    """`{label: class names}` for `labels`, from the dataset's features; `Unavailable` naming
    what is missing when the dataset lacks any of them."""
    known = builders.label_classes(self.builder)
    missing = [label for label in labels if label not in known]
    if missing:
      raise Unavailable(f'{self.config.data.name} has no label feature(s) '
                        f'{[f"{x}_label" for x in missing]} (its labels: {sorted(known)})')
    return {label: known[label] for label in labels}

  def require_fields(self, fields: Sequence[str]) -> None:
    """`Unavailable` when the dataset lacks any of the integer `fields` (e.g. a subset key)."""
    known = builders.integer_fields(self.builder)
    missing = [f for f in fields if f not in known]
    if missing:
      raise Unavailable(f'{self.config.data.name} has no field(s) {missing}')

  def outputs(self, fn: Callable[[Any, dict[str, jax.Array], int], Any], params: Any,
              split: str, *, inputs: Sequence[str] = ('video',), keys: Sequence[str] = (),
              max_examples: int | None = None
              ) -> Iterator[tuple[Any, dict[str, np.ndarray], np.ndarray]]:
    """The one eval loop: yields (outputs of `fn`, the host batch, mask of real examples).

    `fn(params, batch, index)` runs on the batch's `inputs`, sharded over the mesh; its outputs
    (a pytree of global arrays) come back whole on every process. `keys` adds dataset fields
    (labels, ids) to the host batch; the last batch is padded and `mask` marks the real rows.
    """
    batches = pipeline.eval_batches(self.data, split, self.batch_size, keys=tuple(keys),
                                    max_examples=max_examples)
    for index, batch in enumerate(batches):
      local = sharding.shard_batch(process_slice({k: batch[k] for k in inputs}), self.mesh)
      yield gather(fn(params, local, index)), batch, batch['mask']

  def subset(self, fields: dict[str, np.ndarray]) -> np.ndarray:
    """Mask of the examples matching `eval_config.subset` ({field: value}; all when unset)."""
    where = dict(self.eval_config.get('subset') or {})
    size = len(next(iter(fields.values())))
    keep = np.ones(size, bool)
    for field, value in where.items():
      keep &= fields[field] == value
    return keep
