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
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow_datasets as tfds
import tokenizers

from vidlang_jax import registry
from vidlang_jax.data import caption_tokenizer as tokenizer_lib
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
    # Builders whose configs are made at run time (a folder's) take the name under their own
    # keyword; TFDS's own builders take `config`.
    builder_kwargs[getattr(cls, 'CONFIG_NAME_ARG', 'config')] = config
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


def label_classes(builder: tfds.core.DatasetBuilder) -> dict[str, list[str]]:
  """`{label: class names}` of the dataset's `<label>_label` ClassLabel features: what a
  classifier head or a probe needs to know about the labels, from the dataset itself."""
  return {key.removesuffix('_label'): list(feature.names)
          for key, feature in builder.info.features.items()
          if isinstance(feature, tfds.features.ClassLabel) and key.endswith('_label')}


def num_classes(builder: tfds.core.DatasetBuilder,
                requested: dict[str, int]) -> dict[str, int]:
  """`{label: count}` with every count of 0 replaced by the dataset's class count; fails naming
  the labels the dataset does not have."""
  known = label_classes(builder)
  missing = [label for label, count in requested.items() if not count and label not in known]
  if missing:
    raise ValueError(f'{builder.info.full_name} has no label feature(s) '
                     f'{[f"{x}_label" for x in missing]}; its labels are {sorted(known)} '
                     '(a video_text_folder gets them from label_columns).')
  return {label: count or len(known[label]) for label, count in requested.items()}


def integer_fields(builder: tfds.core.DatasetBuilder) -> tuple[str, ...]:
  """Scalar integer features (labels, counts such as `num_objects`), in feature order."""
  return tuple(key for key, feature in builder.info.features.items()
               if feature.shape == () and np.issubdtype(feature.np_dtype, np.integer))


def caption_parser(builder: tfds.core.DatasetBuilder) -> Callable[[str], dict] | None:
  """The dataset's `parse_caption(text) -> {label: class id or None}`, if it has one (a
  generated dataset knows how its captions name its labels; a folder of videos does not)."""
  return getattr(builder, 'parse_caption', None)


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


# The options of the built-in datasets (other registered ones get any that are set).
_OPTIONS = {'moving_shapes': ('num_workers',),
            'video_text_folder': ('source_dir', 'annotations', 'resize', 'max_frames',
                                  'path_column', 'caption_column', 'label_columns',
                                  'max_pixels', 'check_videos')}


def _parse_bool(text: str) -> bool:
  """`true` / `false` (also 1 / 0, yes / no), as absl's boolean flags of `vidlang train`."""
  value = {'true': True, '1': True, 'yes': True, 'false': False, '0': False, 'no': False}.get(
      text.strip().lower())
  if value is None:
    raise argparse.ArgumentTypeError(f'expected true or false, got {text!r}')
  return value


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog='vidlang data',
                                   description='Build vidlang_jax datasets (once; cached).')
  parser.add_argument('names', nargs='*', default=['moving_shapes'],
                      help='e.g. moving_shapes, moving_shapes/small, video_text_folder')
  parser.add_argument('--data_dir', default=None, help=f'default: {default_data_dir()}')
  parser.add_argument('--source_dir', help='video_text_folder: the folder of videos')
  parser.add_argument('--annotations', help='video_text_folder: captions .csv/.jsonl')
  parser.add_argument('--path_column', help='video_text_folder: the column of video paths '
                      '(default path; WebVid: contentUrl, MSR-VTT: video_id)')
  parser.add_argument('--caption_column', help='video_text_folder: the column of captions '
                      '(default caption; WebVid: name, MSR-VTT: sentence)')
  parser.add_argument('--label_columns', help='video_text_folder: comma-separated columns '
                      'stored as class labels <column>_label, e.g. action,scene')
  parser.add_argument('--resize', type=int, nargs=2, metavar=('HEIGHT', 'WIDTH'))
  parser.add_argument('--max_frames', type=int)
  parser.add_argument('--max_pixels', type=int, help='video_text_folder: frames with more '
                      'pixels (height * width) are skipped as too_large when checked (default '
                      '3840*2160); train with the same data.max_pixels')
  parser.add_argument('--check_videos', type=_parse_bool, nargs='?', const=True, metavar='BOOL',
                      help='video_text_folder: decode the header and first frame of each video '
                      'and skip bad ones by kind (default true); --check_videos=false stores '
                      'them unchecked, for folders too large to decode twice: training then '
                      'skips and counts them (data/skipped_<kind>)')
  parser.add_argument('--num_workers', type=int, help='moving_shapes: worker processes')
  parser.add_argument('--save_as', help='video_text_folder: a name to train with later '
                      '(dataset=video_text_folder/NAME)')
  args = parser.parse_args(argv)
  names = ('source_dir', 'annotations', 'resize', 'max_frames', 'num_workers', 'path_column',
           'caption_column', 'label_columns', 'max_pixels', 'check_videos')
  kwargs = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
  if 'resize' in kwargs:
    kwargs['resize'] = tuple(kwargs['resize'])
  if kwargs and len(args.names) > 1:
    parser.error('dataset options apply to one dataset: name only one.')
  dataset = args.names[0].partition('/')[0]
  wrong = [f'--{k}' for k in kwargs if k not in _OPTIONS.get(dataset, names)]
  if wrong:  # Else the builder fails with a TypeError naming a keyword.
    parser.error(f'{", ".join(wrong)}: not an option of {dataset}.')
  for name in args.names:
    if args.save_as:
      name = f'{name.partition("/")[0]}/{args.save_as}'  # the config name
    print(summary(prepare(name, args.data_dir, **kwargs)))


if __name__ == '__main__':
  main()
