"""grain input pipelines: TFDS array_record -> decode -> sample -> augment -> tokenize -> batch.

Training iterators are infinite, reshuffled every epoch, sharded per process and checkpointable
(`get_state` / `set_state`, saved by the trainer beside the model). Bad records are skipped or
fixed by the policies of data/faults.py, and every batch carries `data_faults`: per kind, how
many were dropped while it was assembled and how many of its examples were fixed.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import threading
import time
from typing import Any, Iterator

import grain
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from vidlang_jax import pixels
from vidlang_jax.data import builders, faults
from vidlang_jax.data import caption_tokenizer as tokenizer_lib
from vidlang_jax.data import video as video_lib
from vidlang_jax.sharding import BATCH_AXES, batch_sharding

log = logging.getLogger(__name__)

def _interpolation_matrix(start: float, extent: float, size: int, limit: int) -> np.ndarray:
  """`[size, limit]` bilinear weights sampling `extent` pixels from `start` at `size` points."""
  centres = start + (np.arange(size, dtype=np.float32) + 0.5) * extent / size - 0.5
  centres = np.clip(centres, 0, limit - 1)
  low = np.floor(centres).astype(np.int32)
  high = np.minimum(low + 1, limit - 1)
  frac = centres - low
  weights = np.zeros((size, limit), np.float32)
  np.add.at(weights, (np.arange(size), low), 1 - frac)
  np.add.at(weights, (np.arange(size), high), frac)
  return weights


def resize_crop(frames: np.ndarray, box: tuple[float, float, float, float],
                size: int) -> np.ndarray:
  """Bilinear crop-and-resize of `[time, height, width, c]` frames to `[time, size, size, c]`.

  `box` is (top, left, box_height, box_width) in pixels; the same box for every frame so that
  motion is preserved. Bilinear sampling is separable: two small matmuls, no gathers.
  """
  top, left, box_h, box_w = box
  height, width = frames.shape[1:3]
  rows = _interpolation_matrix(top, box_h, size, height)   # [size, height]
  cols = _interpolation_matrix(left, box_w, size, width)   # [size, width]
  time, _, _, channels = frames.shape
  out = rows @ frames.astype(np.float32).reshape(time, height, width * channels)
  return cols @ out.reshape(time, size, width, channels)  # [time, size, size, channels]


def random_box(rng: np.random.Generator, height: int, width: int,
               scale: tuple[float, float], ratio: tuple[float, float]) -> tuple[float, ...]:
  """Inception-style random resized crop box (aspect `ratio`, width / height).

  The area fraction `scale` is of the largest square in the frame, not of the whole frame: the
  output is square and `ratio` stays near 1, so on a frame that is not square (e.g. 32x48) a
  box of 0.8-1.0 of the frame's area would never fit and every clip would get the centre crop.
  """
  for _ in range(10):
    area = min(height, width) ** 2 * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    box_w, box_h = np.sqrt(area * aspect), np.sqrt(area / aspect)
    if box_w <= width and box_h <= height:
      return rng.uniform(0, height - box_h), rng.uniform(0, width - box_w), box_h, box_w
  side = min(height, width)
  return (height - side) / 2, (width - side) / 2, side, side


def center_box(height: int, width: int) -> tuple[float, ...]:
  side = min(height, width)
  return (height - side) / 2, (width - side) / 2, side, side


@dataclasses.dataclass
class DecodeVideo(grain.transforms.RandomMap):
  """mp4 bytes -> normalised `[num_frames, size, size, 3]` float32, or a skip marker.

  Training samples a random stride from `strides` and a random start, and crops a random box
  with a mild scale range: captions name sizes, so aggressive zoom would contradict them, and
  there is no horizontal flip because captions say "moves left". Evaluation samples frames
  uniformly over the clip and takes the central square. Bad videos follow data/faults.py:
  skipped by kind; a clip shorter than `num_frames` is padded with its last frame or skipped
  (`short_clips`).
  """

  num_frames: int
  size: int
  train: bool
  strides: tuple[int, ...] = (1, 2)
  crop_scale: tuple[float, float] = (0.8, 1.0)
  crop_ratio: tuple[float, float] = (0.9, 1.1)
  short_clips: str = 'pad'
  max_pixels: int = faults.DEFAULT_MAX_PIXELS

  def __post_init__(self):
    if self.short_clips not in faults.SHORT_CLIP_POLICIES:
      raise ValueError(f'data.short_clips={self.short_clips!r}; expected one of '
                       f'{list(faults.SHORT_CLIP_POLICIES)}.')

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    data = element['video']
    try:
      info = video_lib.video_info(data)
      faults.check_frame_size(info['height'], info['width'], self.max_pixels)
      length = int(info['num_frames'])
      short = length < self.num_frames
      if short and self.short_clips == 'skip':
        raise faults.BadRecord('too_short', f'{length} frames, the clip needs {self.num_frames}')
      if self.train:
        stride = int(rng.choice([s for s in self.strides if s * (self.num_frames - 1) < length]
                                or [1]))
        offset = int(rng.integers(0, max(1, length - stride * (self.num_frames - 1))))
      else:
        stride, offset = max(1, length // self.num_frames), 0
      frames = video_lib.decode_mp4(data, num_frames=self.num_frames, stride=stride,
                                    offset=offset)
    except video_lib.VideoDecodeError as e:
      return _skip(element, e.kind, e)
    except faults.BadRecord as e:
      return _skip(element, e.kind, e.detail)
    height, width = frames.shape[1:3]
    box = (random_box(rng, height, width, self.crop_scale, self.crop_ratio) if self.train
           else center_box(height, width))
    frames = resize_crop(frames, box, self.size) / 255.0
    out = {k: v for k, v in element.items() if k != 'video'}
    out['video'] = pixels.normalize(frames)
    out['_fixed'] = ('short_clip',) if short else ()
    return out

  @classmethod
  def from_config(cls, data_config: ml_collections.ConfigDict, train: bool) -> DecodeVideo:
    policy = dict(short_clips=data_config.get('short_clips', 'pad'),
                  max_pixels=data_config.get('max_pixels', faults.DEFAULT_MAX_PIXELS))
    if not train:
      return cls(data_config.num_frames, data_config.image_size, train=False, **policy)
    return cls(data_config.num_frames, data_config.image_size, train=True,
               strides=tuple(data_config.strides), crop_scale=tuple(data_config.crop_scale),
               **policy)


def _skip(element: dict[str, Any], kind: str, why: Any) -> dict[str, Any]:
  log.warning('Skipping %s (%s): %s', _video_id(element), kind, why)
  return {'_skipped': kind}


def _video_id(element: dict[str, Any]) -> str:
  video_id = element.get('video_id', b'?')
  return video_id.decode(errors='replace') if isinstance(video_id, bytes) else str(video_id)


@dataclasses.dataclass
class Tokenize(grain.transforms.Map):
  """caption bytes -> `text` int32 `[max_len]`; loads the tokenizer lazily in each worker.
  The special ids are the text tower's (a converted CLIP's are not our tokenizer's). Empty and
  non-UTF-8 captions are skipped; longer ones are cut, keeping EOS (data/faults.py)."""

  tokenizer_path: str
  max_len: int
  bos_id: int | None = tokenizer_lib.BOS_ID
  eos_id: int = tokenizer_lib.EOS_ID
  pad_id: int = tokenizer_lib.PAD_ID

  @classmethod
  def from_config(cls, tokenizer_path: str, data_config: ml_collections.ConfigDict) -> Tokenize:
    get = lambda key, default: data_config.get(key, default)
    return cls(tokenizer_path, data_config.max_text_len,
               bos_id=get('bos_id', tokenizer_lib.BOS_ID),
               eos_id=get('eos_id', tokenizer_lib.EOS_ID),
               pad_id=get('pad_id', tokenizer_lib.PAD_ID))

  @functools.cached_property
  def tokenizer(self):
    return tokenizer_lib.load_tokenizer(self.tokenizer_path)

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    if element.get('_skipped'):
      return element
    try:
      caption = faults.decode_caption(element['caption'])
    except faults.BadRecord as e:
      return _skip(element, e.kind, e.detail)
    ids, truncated = tokenizer_lib.tokenize(
        self.tokenizer, [caption], self.max_len, bos_id=self.bos_id, eos_id=self.eos_id,
        pad_id=self.pad_id, with_truncated=True)
    element['text'] = ids[0]
    element['caption'] = caption
    if truncated[0]:
      element['_fixed'] = (*element.get('_fixed', ()), 'long_caption')
    return element


class _FaultCountingIterator(grain.DatasetIterator):

  def __next__(self) -> dict[str, Any]:
    counts = np.zeros((len(faults.COUNTED),), np.int32)
    while True:
      element = next(self._parent)
      kind = element.get('_skipped')
      if not kind:
        element[FAULTS_KEY] = counts + faults.counts_vector(fixed=element.pop('_fixed', ()))
        return element
      counts += faults.counts_vector(kind)

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class CountFaults(grain.IterDataset):
  """Drops elements marked `_skipped` and puts on the next kept element the per-kind counts
  (`faults.COUNTED` order) of what was dropped before it and of what was fixed in it, so that
  the counts survive batching and worker processes."""

  def __iter__(self) -> grain.DatasetIterator:
    return _FaultCountingIterator(self._parent.__iter__())


FAULTS_KEY = 'data_faults'  # int32 [batch, len(faults.COUNTED)] in every batch

NUMERIC_KEYS = ('video', 'text', FAULTS_KEY)


def _keep_numeric(element: dict[str, Any], extra: tuple[str, ...]) -> dict[str, Any]:
  """The model's inputs; int64 dataset fields (labels) become int32, as JAX uses."""
  out = {k: np.asarray(v) for k, v in element.items() if k in NUMERIC_KEYS + extra}
  return {k: v.astype(np.int32) if v.dtype == np.int64 else v for k, v in out.items()}


def exit_with_parent(worker_index: int, worker_count: int) -> None:
  """grain's worker init: the worker exits once its parent is gone. A trainer killed with
  SIGKILL (the OOM killer, `kill -9`) runs no clean-up, and its workers, reparented, would
  otherwise wait on their queues for ever, holding their memory."""
  del worker_index, worker_count
  parent = os.getppid()

  def watch() -> None:
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(0)

  threading.Thread(target=watch, name='exit_with_parent', daemon=True).start()


def _ensure_absl_flags_parsed() -> None:
  """grain's multiprocessing reads absl flags; outside `app.run` they are not parsed yet."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def tokenizer_path(data_config: ml_collections.ConfigDict) -> str:
  """`data.tokenizer` if set (a release's, to fine-tune its text tower on other data), else
  the dataset's own: builds the dataset and its tokenizer if needed (process 0 only, the
  others wait), and returns the tokenizer's path."""
  if data_config.get('tokenizer'):
    if not os.path.exists(data_config.tokenizer):
      raise FileNotFoundError(f'data.tokenizer={data_config.tokenizer!r} does not exist.')
    return data_config.tokenizer
  kwargs = data_config.get('builder_kwargs', {})
  if jax.process_index() == 0:
    builder = builders.prepare(data_config.name, data_config.get('data_dir'), **kwargs)
    builders.tokenizer_for(builder, vocab_size=data_config.vocab_size)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('vidlang_jax: dataset and tokenizer ready')
  builder = builders.get_builder(data_config.name, data_config.get('data_dir'), **kwargs)
  return f'{builder.data_dir}/tokenizer.json'


def check_split(data_config: ml_collections.ConfigDict, split: str, what: str) -> None:
  """Fails early, naming the splits there are, when `split` is not one of the dataset's.

  Call after `tokenizer_path`, which builds the dataset if needed.
  """
  builder = builders.get_builder(data_config.name, data_config.get('data_dir'),
                                 **data_config.get('builder_kwargs', {}))
  splits = sorted(builder.info.splits)
  if split not in splits:
    raise ValueError(f'{what}={split!r} is not a split of {data_config.name} (it has {splits}).')


def process_batch_size(global_batch_size: int) -> int:
  if global_batch_size % jax.process_count():
    raise ValueError(f'batch_size={global_batch_size} is not divisible by the '
                     f'{jax.process_count()} processes.')
  return global_batch_size // jax.process_count()


class ProcessShare(grain.MapDataset):
  """This process's rows of each global batch of `parent`, in order, from batch `start_step`.

  Global batch `s` is `parent[s * global_batch_size : (s + 1) * global_batch_size]` and
  process `p` of `n` reads its `p`-th equal slice of it, so the global batches (and the random
  augmentations, drawn per `parent` index) are the same for any number of processes: a run can
  resume on another topology at any step.
  """

  def __init__(self, parent: grain.MapDataset, global_batch_size: int, *,
               num_processes: int, process_index: int, start_step: int = 0):
    super().__init__(parent)
    self._global, self._local = global_batch_size, global_batch_size // num_processes
    self._offset = start_step * global_batch_size + process_index * self._local
    self._length = (len(parent) - start_step * global_batch_size) // num_processes

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    step, row = divmod(index, self._local)
    return self._parent[self._offset + step * self._global + row]

  def __str__(self) -> str:
    return f'ProcessShare(global={self._global}, local={self._local}, offset={self._offset})'


def train_dataset(source: Any, data_config: ml_collections.ConfigDict, *, global_batch_size: int,
                  seed: int, tokenizer_file: str, start_step: int = 0) -> grain.IterDataset:
  """Random-access `source` -> infinite, reshuffled, decoded, tokenized batches of this
  process's share of each global batch (see `ProcessShare`)."""
  local_batch_size = process_batch_size(global_batch_size)
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
  ds = ds.random_map(DecodeVideo.from_config(data_config, train=True), seed=seed + 1)
  ds = ds.map(Tokenize.from_config(tokenizer_file, data_config))
  ds = ProcessShare(ds, global_batch_size, num_processes=jax.process_count(),
                    process_index=jax.process_index(), start_step=start_step)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=data_config.num_threads,
                                            prefetch_buffer_size=data_config.prefetch))
  ds = CountFaults(ds).map(functools.partial(
      _keep_numeric, extra=tuple(data_config.get('label_keys', ()))))
  ds = ds.batch(local_batch_size, drop_remainder=True)
  if data_config.num_workers > 0:
    _ensure_absl_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.num_workers),
                        worker_init_fn=exit_with_parent)
  return ds


def train_iterator(data_config: ml_collections.ConfigDict, *, global_batch_size: int,
                   seed: int, start_step: int = 0) -> grain.DatasetIterator:
  """An infinite, checkpointable iterator of this process's share of each global batch, from
  global batch `start_step` on (for a run resumed on another number of processes)."""
  process_batch_size(global_batch_size)  # before any process waits for the others
  tokenizer_file = tokenizer_path(data_config)
  check_split(data_config, data_config.train_split, 'data.train_split')
  source = builders.data_source(data_config.name, data_config.train_split,
                                data_config.get('data_dir'),
                                **data_config.get('builder_kwargs', {}))
  return iter(train_dataset(source, data_config, global_batch_size=global_batch_size,
                            seed=seed, tokenizer_file=tokenizer_file, start_step=start_step))


def eval_batches(data_config: ml_collections.ConfigDict, split: str, batch_size: int,
                 keys: tuple[str, ...] = (), max_examples: int | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """One deterministic pass over a split (every process sees all of it), in fixed-size batches.

  The last batch is padded by repeating examples and `mask` marks the real ones, so that one
  compiled eval step serves every batch. `keys` adds fields (e.g. labels) to the batch;
  `max_examples` stops after the split's first that many.
  """
  tokenizer_file = tokenizer_path(data_config)
  source = builders.data_source(data_config.name, split, data_config.get('data_dir'),
                                **data_config.get('builder_kwargs', {}))
  ds = grain.MapDataset.source(source)
  if max_examples is not None:
    ds = ds[:max_examples]
  ds = ds.random_map(DecodeVideo.from_config(data_config, train=False), seed=0)
  ds = ds.map(Tokenize.from_config(tokenizer_file, data_config))
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=data_config.num_threads,
                                            prefetch_buffer_size=data_config.prefetch))
  # Counted here rather than by CountFaults: a finite pass must also count the records
  # skipped after its last kept one (they go to the last real row).
  rows, counts, previous = [], np.zeros((len(faults.COUNTED),), np.int32), None
  for element in ds:
    if element.get('_skipped'):
      counts += faults.counts_vector(element['_skipped'])
      continue
    row = _keep_numeric({**element, FAULTS_KEY: counts + faults.counts_vector(
        fixed=element.get('_fixed', ()))}, keys)
    rows, counts = rows + [row], np.zeros_like(counts)
    if len(rows) == batch_size:
      if previous is not None:
        yield previous
      previous, rows = _padded_batch(rows, batch_size), []
  if rows:
    if previous is not None:
      yield previous
    previous = _padded_batch(rows, batch_size)
  if previous is not None:
    previous[FAULTS_KEY][previous['mask'].sum() - 1] += counts
    yield previous


def _padded_batch(rows: list[dict[str, np.ndarray]], batch_size: int) -> dict[str, np.ndarray]:
  """Stacked rows padded to `batch_size` by repeating the last (with no fault counts); `mask`
  marks the real ones."""
  padding = batch_size - len(rows)
  blank = {**rows[-1], FAULTS_KEY: np.zeros_like(rows[-1][FAULTS_KEY])}
  batch = {k: np.stack([r[k] for r in rows + [blank] * padding]) for k in rows[0]}
  batch['mask'] = np.arange(batch_size) < len(rows)
  return batch


def check_batch_divides(global_batch_size: int, mesh: jax.sharding.Mesh) -> None:
  """Every device of the batch axes (data x fsdp) takes an equal share of the batch."""
  data_parallel = {axis: mesh.shape[axis] for axis in BATCH_AXES}
  if global_batch_size % math.prod(data_parallel.values()):
    raise ValueError(f'batch_size={global_batch_size} is not divisible by the '
                     f'{math.prod(data_parallel.values())} devices of the batch mesh axes '
                     f'{data_parallel}: each takes an equal share of the batch.')


def batch_spec(data_config: ml_collections.ConfigDict, global_batch_size: int,
               mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes, dtypes and shardings of one global training batch, without reading any data."""
  check_batch_divides(global_batch_size, mesh)
  size, frames = data_config.image_size, data_config.num_frames
  shapes = {'video': ((global_batch_size, frames, size, size, 3), np.float32),
            'text': ((global_batch_size, data_config.max_text_len), np.int32)}
  for key in data_config.get('label_keys', ()):  # e.g. 'shape_label' for classification
    shapes[key] = ((global_batch_size,), np.int32)
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(mesh, len(shape)))
          for k, (shape, dtype) in shapes.items()}
