"""video_text_folder: a TFDS builder for your own clips, a folder of videos plus captions.

The annotation file is the WebVid / MSR-VTT shape: a CSV with a header row, or JSONL lines,
with a video path and a caption per row. The columns default to `path` and `caption`;
`path_column` / `caption_column` name others (WebVid `contentUrl,name`, MSR-VTT
`video_id,sentence`). Paths are relative to the folder (or absolute). A path may appear on
several rows (several captions per video, as in MSR-VTT); each row becomes one example and all
captions of a video land in the same split.

`label_columns` (e.g. `('action', 'scene')`) adds class labels, Kinetics / SSv2-style: each is
a CSV column, or in JSONL a key of the object or of its `labels` object. They are stored as
TFDS `ClassLabel` features `<column>_label` (ids of the sorted distinct values; the names are
in the dataset's metadata), which the classification fine-tune and the linear probe read.

Real folders contain broken files. Missing, empty, unreadable or undecodable videos are skipped
and counted rather than failing the build; the counts and the first reasons are printed and
saved as `build_summary.json` next to the data.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import os
import re
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from etils import epath

from vidlang_jax.data import video as video_lib

SPLITS = ('train', 'validation', 'test')
SUMMARY_FILE = 'build_summary.json'
_DEFAULT_ANNOTATIONS = ('captions.csv', 'captions.jsonl')
_REASONS_KEPT = 20  # Skip reasons stored in the summary (the count covers all).


@dataclasses.dataclass(eq=False)
class VideoTextFolderConfig(tfds.core.BuilderConfig):
  """Where the data comes from and how it is stored; see `VideoTextFolder`."""
  source_dir: str | None = None
  annotations: str | None = None
  split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
  resize: tuple[int, int] | None = None  # (height, width); re-encodes when set.
  max_frames: int | None = None  # Keeps the first max_frames frames; re-encodes when set.
  fps: float | None = None  # Of re-encoded clips; None keeps the source's rate.
  path_column: str = 'path'
  caption_column: str = 'caption'
  label_columns: tuple[str, ...] = ()


def default_annotations(source_dir: str) -> str:
  """`captions.csv` or `captions.jsonl` inside `source_dir`."""
  for name in _DEFAULT_ANNOTATIONS:
    path = os.path.join(source_dir, name)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(
      f'No annotation file in {source_dir!r}: expected one of {list(_DEFAULT_ANNOTATIONS)}, '
      'or pass annotations=<path to a .csv with columns path,caption or a .jsonl>.')


@dataclasses.dataclass(frozen=True)
class Annotation:
  """One row of an annotation file."""
  path: str
  caption: str
  labels: dict[str, str] = dataclasses.field(default_factory=dict)


def read_annotations(path: str, *, path_column: str = 'path', caption_column: str = 'caption',
                     label_columns: Sequence[str] = ()) -> list[Annotation]:
  """The rows of a CSV (with a header row) or JSONL annotation file.

  Missing columns fail naming them and the ones found; a row may leave a label empty (it is
  skipped at build time, and counted).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'Annotation file not found: {path!r}.')
  wanted = [path_column, caption_column, *label_columns]
  hint = ('pass path_column= / caption_column= (--path_column / --caption_column) to name '
          'other columns')
  rows = []
  with open(path, newline='', encoding='utf-8') as f:
    if path.endswith('.jsonl') or path.endswith('.json'):
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f'{path}, line {number}: not valid JSON ({e}).') from e
        fields = {**record.get('labels', {}), **record} if isinstance(
            record.get('labels'), dict) else record
        missing = [k for k in wanted if k not in fields]
        if missing:
          raise ValueError(f'{path}, line {number}: missing key(s) {missing} '
                           f'(found {sorted(fields)}); {hint}.')
        rows.append(Annotation(str(fields[path_column]), str(fields[caption_column]),
                               {k: str(fields[k]).strip() for k in label_columns}))
    else:
      reader = csv.DictReader(f)
      missing = [k for k in wanted if k not in (reader.fieldnames or [])]
      if missing:
        raise ValueError(f'{path}: missing column(s) {missing} in the header row '
                         f'(found {reader.fieldnames}); expected a header '
                         f'"{",".join(wanted)}", or {hint}.')
      rows = [Annotation(r[path_column] or '', r[caption_column] or '',
                         {k: (r[k] or '').strip() for k in label_columns}) for r in reader]
  return rows


def label_names(rows: Sequence[Annotation], label_columns: Sequence[str]) -> dict[str, list[str]]:
  """Each label column's sorted distinct non-empty values: class id i is names[i]."""
  return {column: sorted({row.labels[column] for row in rows if row.labels[column]})
          for column in label_columns}


def split_of(path: str, fractions: tuple[float, float, float]) -> str:
  """Deterministic split for a video path: stable across machines and file orders."""
  u = int.from_bytes(hashlib.sha256(path.encode('utf-8')).digest()[:8], 'big') / 2.0**64
  edges = np.cumsum(fractions) / np.sum(fractions)
  return SPLITS[min(int(np.searchsorted(edges, u, side='right')), len(SPLITS) - 1)]


def _config_name(source_dir: str, annotations: str | None, settings: tuple) -> str:
  """`<folder>_<hash>`: different folders or settings never share a data dir."""
  key = repr((os.path.abspath(source_dir), annotations and os.path.abspath(annotations),
              settings))
  stem = re.sub(r'[^a-z0-9]+', '_', os.path.basename(os.path.abspath(source_dir)).lower())
  return f"{stem.strip('_')[:40] or 'videos'}_{hashlib.sha256(key.encode()).hexdigest()[:8]}"


class VideoTextFolder(tfds.core.GeneratorBasedBuilder):
  """Your videos + captions (+ labels) as TFDS (array_record). After building, see
  `build_summary`."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  code_path = epath.Path(__file__)  # See MovingShapes.code_path.
  CONFIG_NAME_ARG = 'name'  # `video_text_folder/<name>`: a folder built under that name.

  def __init__(self, *, source_dir: str | None = None, annotations: str | None = None,
               split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
               resize: tuple[int, int] | None = None, max_frames: int | None = None,
               fps: float | None = None, path_column: str = 'path',
               caption_column: str = 'caption', label_columns: Sequence[str] = (),
               name: str | None = None, **kwargs):
    """`name` (optional) names the config; otherwise it is derived from the folder + settings.

    Reading an already built dataset needs only the same `name` (its label features are read
    from the stored metadata), or the same `source_dir` and settings; building needs
    `source_dir`.
    """
    source_dir = source_dir and os.path.expanduser(source_dir)
    annotations = annotations and os.path.expanduser(annotations)
    if isinstance(label_columns, str):
      label_columns = [c for c in label_columns.split(',') if c]
    label_columns = tuple(c.strip() for c in label_columns)
    if 'config' not in kwargs:
      if source_dir is None and name is None:
        raise ValueError('VideoTextFolder needs source_dir=<folder of videos> (or the name= '
                         'of an already built dataset).')
      if resize is not None and (len(resize) != 2 or resize[0] % 2 or resize[1] % 2):
        raise ValueError(f'resize must be (height, width) with even sizes, got {resize}.')
      if len(split_fractions) != 3 or min(split_fractions) < 0 or sum(split_fractions) <= 0:
        raise ValueError(f'split_fractions must be 3 non-negative numbers (train, validation, '
                         f'test), got {split_fractions}.')
      bad = [c for c in label_columns if not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*', c)]
      if bad:
        raise ValueError(f'label_columns {bad} are not identifiers (letters, digits, _).')
      settings = (tuple(split_fractions), resize and tuple(resize), max_frames, fps)
      columns = (path_column, caption_column, label_columns)
      if columns != ('path', 'caption', ()):  # Folders built before keep their names.
        settings += columns
      kwargs['config'] = VideoTextFolderConfig(
          name=name or _config_name(source_dir, annotations, settings),
          source_dir=source_dir, annotations=annotations,
          split_fractions=tuple(split_fractions), resize=resize and tuple(resize),
          max_frames=max_frames, fps=fps, path_column=path_column,
          caption_column=caption_column, label_columns=label_columns,
          description=f'Videos from {source_dir}.')
    kwargs.setdefault('file_format', 'array_record')  # TFRecord would need TensorFlow.
    self._summary = None
    self._rows = None
    super().__init__(**kwargs)

  def _annotation_rows(self) -> list[Annotation]:
    if self._rows is None:
      c = self.builder_config
      self._annotations_path = c.annotations or default_annotations(c.source_dir)
      self._rows = read_annotations(self._annotations_path, path_column=c.path_column,
                                    caption_column=c.caption_column,
                                    label_columns=c.label_columns)
    return self._rows

  def _label_features(self) -> dict[str, tfds.features.ClassLabel]:
    """`<column>_label` ClassLabels: named from the annotations when building, from the stored
    metadata when reading a built dataset."""
    c = self.builder_config
    stored = epath.Path(self.data_dir) / 'features.json'
    if not c.label_columns:
      if not stored.exists():
        return {}
      features = tfds.features.FeatureConnector.from_config(self.data_dir)
      return {k: v for k, v in features.items() if isinstance(v, tfds.features.ClassLabel)}
    if stored.exists() or not c.source_dir:  # Names come back from `<key>.labels.txt`.
      return {f'{column}_label': tfds.features.ClassLabel() for column in c.label_columns}
    names = label_names(self._annotation_rows(), c.label_columns)
    empty = [column for column, values in names.items() if not values]
    if empty:
      raise ValueError(f'label column(s) {empty} of {self._annotations_path} have no values.')
    return {f'{column}_label': tfds.features.ClassLabel(names=values)
            for column, values in names.items()}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Video files + captions (+ class labels) from a local folder.',
        features=tfds.features.FeaturesDict({
            'video': tfds.features.Tensor(shape=(), dtype=np.object_),  # Encoded video bytes.
            'caption': tfds.features.Text(),
            'video_id': tfds.features.Text(),  # Path as annotated; '#k' for its k-th caption.
            **self._label_features(),
        }),
    )

  @property
  def build_summary(self) -> dict | None:
    """Examples per split and skipped files (with reasons), or None if never built here."""
    if self._summary is None:
      path = os.path.join(self.data_dir, SUMMARY_FILE)
      if os.path.exists(path):
        with open(path) as f:
          self._summary = json.load(f)
    return self._summary

  def _download_and_prepare(self, dl_manager, download_config=None):
    self._written = collections.Counter()
    self._skipped = []
    result = super()._download_and_prepare(dl_manager, download_config)
    self._summary = {
        'source_dir': self.builder_config.source_dir,
        'annotations': self._annotations_path,
        'examples': {s: self._written[s] for s in SPLITS},
        'num_skipped': len(self._skipped),
        'skipped': [{'path': p, 'reason': r} for p, r in self._skipped[:_REASONS_KEPT]],
    }
    with open(os.path.join(self.data_dir, SUMMARY_FILE), 'w') as f:  # The temporary dir.
      json.dump(self._summary, f, indent=2)
    print(format_summary(self._summary))
    return result

  def _skip(self, path: str, reason: str) -> None:
    self._skipped.append((path, reason))

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    c = self.builder_config
    if not c.source_dir:
      raise ValueError(f'Dataset {c.name!r} is not built yet and building needs source_dir.')
    if not os.path.isdir(c.source_dir):
      raise FileNotFoundError(f'source_dir is not a directory: {c.source_dir!r}.')
    examples = collections.defaultdict(list)  # path -> (caption, labels), in file order.
    for row in self._annotation_rows():
      empty = [column for column, value in row.labels.items() if not value]
      if not row.path.strip():
        self._skip(row.path, 'empty path')
      elif not row.caption.strip():
        self._skip(row.path, 'empty caption')
      elif empty:
        self._skip(row.path, f'empty label {", ".join(empty)}')
      else:
        examples[row.path.strip()].append((row.caption.strip(), row.labels))
    # Verify up front (cheap: header + first frame) so that splits are known to be non-empty.
    by_split = collections.defaultdict(list)
    for path in tqdm.tqdm(examples, desc='Checking videos', unit=' videos'):
      if self._load(path) is not None:
        by_split[split_of(path, c.split_fractions)].append((path, examples[path]))
    if not by_split:
      raise ValueError(
          f'No usable video in {c.source_dir!r} (annotations {self._annotations_path!r}); '
          f'skipped {len(self._skipped)}, e.g. {self._skipped[:3]}.')
    return {split: self._generate_examples(split, by_split[split])
            for split in SPLITS if by_split[split]}

  def _load(self, path: str, full: bool = False) -> bytes | None:
    """The bytes to store for `path`, or None (and a recorded reason) if it is unusable."""
    c = self.builder_config
    file = os.path.join(c.source_dir, path)
    try:
      with open(file, 'rb') as f:
        data = f.read()
    except FileNotFoundError:
      return self._skip(path, f'missing file {file}')
    except OSError as e:
      return self._skip(path, f'unreadable: {e}')
    if not data:
      return self._skip(path, 'empty file')
    try:
      if not full:
        video_lib.decode_mp4(data, num_frames=1)
        return data
      if c.resize is None and c.max_frames is None:
        return data  # Verified in _split_generators.
      info = video_lib.video_info(data)
      n = info['num_frames'] if c.max_frames is None else min(info['num_frames'], c.max_frames)
      frames = video_lib.decode_mp4(data, num_frames=max(int(n), 1), resize=c.resize)
      if frames.shape[1] % 2 or frames.shape[2] % 2:  # Odd source size, no resize: crop.
        frames = frames[:, :frames.shape[1] // 2 * 2, :frames.shape[2] // 2 * 2]
      return video_lib.encode_mp4(frames, fps=round(c.fps or info['fps'] or 8))
    except (video_lib.VideoDecodeError, ValueError) as e:
      return self._skip(path, f'cannot decode: {e}')

  def _generate_examples(self, split: str, videos: list) -> Iterator[tuple[str, dict]]:
    for path, captions in videos:
      data = self._load(path, full=True)
      if data is None:
        continue
      for k, (caption, labels) in enumerate(captions):
        video_id = path if k == 0 else f'{path}#{k}'
        self._written[split] += 1
        yield video_id, {'video': data, 'caption': caption, 'video_id': video_id,
                         **{f'{column}_label': value for column, value in labels.items()}}


def format_summary(summary: dict) -> str:
  """Human-readable build summary."""
  lines = [f"video_text_folder: wrote {summary['examples']} examples; "
           f"skipped {summary['num_skipped']}."]
  lines += [f"  skipped {s['path']!r}: {s['reason']}" for s in summary['skipped'][:5]]
  return '\n'.join(lines)
