"""Datasets by name: build on first use, then random-access sources and the caption tokenizer.

Names are `<dataset>[/<config>]`: `moving_shapes`, `moving_shapes/small`, `video_text_folder`
(with `source_dir=...`), `video_text_folder/<name>` for a folder built before under that name.
Run `python -m vidlang_jax.data.builders moving_shapes` to build one and print a summary.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any, Sequence

import tensorflow_datasets as tfds
import tokenizers

from vidlang_jax import registry
from vidlang_jax.data import tokenizer as tokenizer_lib
from vidlang_jax.data.moving_shapes import MovingShapes
from vidlang_jax.data.video_text_folder import VideoTextFolder, format_summary

registry.register('dataset.moving_shapes')(MovingShapes)
registry.register('dataset.video_text_folder')(VideoTextFolder)
# Looked up here first so that data code does not import every model (registry.lookup does).
_BUILTIN = {'moving_shapes': MovingShapes, 'video_text_folder': VideoTextFolder}


def default_data_dir() -> str:
  """`$VIDLANG_DATA_DIR`, else `~/.cache/vidlang_jax/datasets`."""
  return os.environ.get('VIDLANG_DATA_DIR') or os.path.expanduser(
      '~/.cache/vidlang_jax/datasets')


def get_builder(name: str, data_dir: str | None = None,
                **builder_kwargs: Any) -> tfds.core.DatasetBuilder:
  """The builder for `<dataset>[/<config>]`, without building anything."""
  dataset, _, config = name.partition('/')
  cls = _BUILTIN.get(dataset) or registry.lookup(dataset, kind='dataset')
  data_dir = data_dir or default_data_dir()
  if config:
    key = 'name' if cls is VideoTextFolder else 'config'
    builder_kwargs[key] = config
  return cls(data_dir=data_dir, **builder_kwargs)


def prepare(name: str, data_dir: str | None = None, **builder_kwargs: Any,
            ) -> tfds.core.DatasetBuilder:
  """`get_builder`, building the dataset first if needed (cheap when already built)."""
  builder = get_builder(name, data_dir, **builder_kwargs)
  if not builder.is_prepared():
    logging.warning('Building %s into %s (one-off).', name, builder.data_dir)
    start = time.perf_counter()
    builder.download_and_prepare()  # TFDS shows a progress bar per split.
    logging.warning('Built %s in %.1f s.', name, time.perf_counter() - start)
  return builder


def data_source(name: str, split: str, data_dir: str | None = None,
                **builder_kwargs: Any) -> Sequence[dict[str, Any]]:
  """Random-access `ArrayRecordDataSource` over `split` (len, [i]); builds first if needed.

  Records are dicts of numpy values; `caption`, `video_id` are bytes, `video` is mp4 bytes.
  """
  return prepare(name, data_dir, **builder_kwargs).as_data_source(split=split)


def tokenizer_for(builder: tfds.core.DatasetBuilder,
                  vocab_size: int = 1000) -> tokenizers.Tokenizer:
  """The caption tokenizer at `<data_dir>/tokenizer.json`, trained on train captions once.

  Ids are always < `vocab_size`: a saved tokenizer with a larger vocabulary is retrained (a
  smaller one is kept; small caption sets cannot fill a large vocabulary).
  """
  path = os.path.join(builder.data_dir, 'tokenizer.json')
  if os.path.exists(path):
    tokenizer = tokenizer_lib.load_tokenizer(path)
    if tokenizer.get_vocab_size() <= vocab_size:
      return tokenizer
    logging.warning('%s has %d tokens > vocab_size=%d: retraining.', path,
                    tokenizer.get_vocab_size(), vocab_size)
  splits = builder.info.splits
  names = ['train'] if 'train' in splits else list(splits)  # A folder may lack train.
  captions = [record['caption'].decode('utf-8')
              for split in names for record in builder.as_data_source(split=split)]
  return tokenizer_lib.train_tokenizer(captions, path, vocab_size)


def summary(builder: tfds.core.DatasetBuilder) -> str:
  """Where the dataset is, split sizes, bytes per clip and one example caption."""
  lines = [f'{builder.info.full_name} at {builder.data_dir}']
  for split, info in builder.info.splits.items():
    lines.append(f'  {split}: {info.num_examples} examples, '
                 f'{info.num_bytes / max(info.num_examples, 1) / 1024:.1f} KiB per example')
  first = next(iter(builder.info.splits))
  record = builder.as_data_source(split=first)[0]
  lines.append(f"  e.g. {record['video_id'].decode()}: {record['caption'].decode()!r}")
  extra = getattr(builder, 'build_summary', None)
  if extra:
    lines.append(format_summary(extra))
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description='Build a vidlang_jax dataset.')
  parser.add_argument('name', help='e.g. moving_shapes, moving_shapes/small, video_text_folder')
  parser.add_argument('--data_dir', default=None, help=f'default: {default_data_dir()}')
  parser.add_argument('--source_dir', help='video_text_folder: the folder of videos')
  parser.add_argument('--annotations', help='video_text_folder: captions .csv/.jsonl')
  parser.add_argument('--resize', type=int, nargs=2, metavar=('HEIGHT', 'WIDTH'))
  parser.add_argument('--max_frames', type=int)
  parser.add_argument('--num_workers', type=int, help='moving_shapes: worker processes')
  parser.add_argument('--save_as', help='video_text_folder: a name to train with later '
                      '(dataset=video_text_folder/NAME)')
  args = parser.parse_args(argv)
  names = ('source_dir', 'annotations', 'resize', 'max_frames', 'num_workers')
  kwargs = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
  if args.save_as:
    args.name = f'{args.name.partition("/")[0]}/{args.save_as}'  # the config name
  if 'resize' in kwargs:
    kwargs['resize'] = tuple(kwargs['resize'])
  print(summary(prepare(args.name, args.data_dir, **kwargs)))


if __name__ == '__main__':
  main()
