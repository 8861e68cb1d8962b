"""video_text_folder: a TFDS builder for your own clips, a folder of videos plus captions.

The annotation file is the WebVid / MSR-VTT shape: a CSV with a header row, or JSONL lines,
with a video path and a caption per row; or MSR-VTT's own JSON (`train_val_videodatainfo.json`,
whose `sentences` map each `video_id` to its captions; the clips are `<video_id>.mp4`).
The columns default to `path` and `caption`; `path_column` / `caption_column` name others
(WebVid `contentUrl,name`, MSR-VTT `video_id,sentence`). Paths are relative to the folder
(or absolute). A path may appear on several rows (several captions per video, as in
MSR-VTT); each row becomes one example and all captions of a video land in the same split.

`label_columns` (e.g. `('action', 'scene')`) adds class labels, Kinetics / SSv2-style: each is
a CSV column, or in JSONL a key of the object or of its `labels` object. They are stored as
TFDS `ClassLabel` features `<column>_label` (ids of the sorted distinct values; the names are
in the dataset's metadata), which the classification fine-tune and the linear probe read.

Real folders contain broken files and rows. Each annotation row either becomes an example or
is skipped and counted by a kind of data/faults.py, rather than failing the build:
  bad_row, missing_column   a row that is not UTF-8, not a JSON object, has more CSV fields
                            than the header, or lacks a wanted key / field (with its line);
  empty_path, empty_caption, empty_label, missing_file, unreadable_file;
  empty_video, corrupt_video, no_frames, too_large   from `faults.check_video` (header, frame
                            size within `max_pixels`, first frame), the training-time checks.
A bad video skips each of its rows, as the training pipeline counts each record. With
`check_videos=False` videos are stored unchecked (for web-scale folders; the training pipeline
then skips and counts the same video kinds), unless `resize` / `max_frames` re-encode them:
undecodable ones are then still skipped by kind, but none is too_large. A header without the
wanted columns, or a file with no usable row, still fails, naming them. Counts by kind and the
first skipped rows (path, line, kind, reason) are printed and saved as `build_summary.json`
next to the data.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import sys
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from etils import epath

from vidlang_jax.data import faults
from vidlang_jax.data import video as video_lib

SPLITS = ('train', 'validation', 'test')
SUMMARY_FILE = 'build_summary.json'
_DEFAULT_ANNOTATIONS = ('captions.csv', 'captions.jsonl', 'train_val_videodatainfo.json')
_REASONS_KEPT = 20  # Skipped rows listed in the summary (the counts cover all)...
_REASONS_PER_KIND = 5  # ...at most this many of each kind, so that rare kinds show too.
_SHOWN = 5  # Skipped rows printed by `format_summary`.


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
  max_pixels: int = faults.DEFAULT_MAX_PIXELS  # Larger frames are skipped as too_large.
  check_videos: bool = True  # False: stored unchecked, the training pipeline checks them.


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
  """One row of an annotation file; `line` is its 1-based line number (for skip reports)."""
  path: str
  caption: str
  labels: dict[str, str] = dataclasses.field(default_factory=dict)
  line: int = 0


@dataclasses.dataclass(frozen=True)
class SkippedRow:
  """A row `read_annotations` could not use: `kind` is 'bad_row' or 'missing_column'."""
  line: int
  kind: str
  reason: str


_BOM = b'\xef\xbb\xbf'  # Spreadsheets often start UTF-8 CSVs with it.
_SURROGATE = re.compile('[\udc80-\udcff]')  # Bytes that were not UTF-8 (surrogateescape).
_ERRORS_SHOWN = 3  # Reasons named when no row is usable.


def read_annotations(path: str, *, path_column: str = 'path', caption_column: str = 'caption',
                     label_columns: Sequence[str] = ()
                     ) -> tuple[list[Annotation], list[SkippedRow]]:
  """The usable rows of a CSV (with a header row) or JSONL annotation file, and the skipped ones.

  One bad row (not UTF-8, not JSON, too few or too many CSV fields, a missing key) is skipped
  and reported with its line number instead of failing a large build. A header without the
  wanted columns, or a file with no usable row, is a wrong file or setting and raises naming
  the columns / reasons. A row may leave a label empty (skipped at build time, and counted).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'Annotation file not found: {path!r}.')
  wanted = [path_column, caption_column, *label_columns]
  hint = ('pass path_column= / caption_column= (--path_column / --caption_column) to name '
          'other columns')
  with open(path, 'rb') as f:
    data = f.read()
  data = data[len(_BOM):] if data.startswith(_BOM) else data
  msrvtt = _read_msrvtt(data, path, label_columns) if path.endswith('.json') else None
  if msrvtt is not None:
    rows, skipped = msrvtt
  elif path.endswith('.jsonl') or path.endswith('.json'):
    rows, skipped, missing_keys = _read_jsonl(data, wanted, label_columns)
    if not rows and missing_keys and len(missing_keys) == len(skipped):
      # The same column is absent from every row: a setting to fix, not bad rows.
      line, missing, found = missing_keys[0]
      common = [k for k in wanted if all(k in m for _, m, _ in missing_keys)]
      raise ValueError(f'{path}, line {line}: missing key(s) {common or missing} '
                       f'(found {found}) in every row; {hint}.')
  else:
    reader = csv.DictReader(io.StringIO(data.decode('utf-8', 'surrogateescape'), newline=''))
    missing = [k for k in wanted if k not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f'{path}: missing column(s) {missing} in the header row '
                       f'(found {reader.fieldnames}); expected a header '
                       f'"{",".join(wanted)}", or {hint}.')
    rows, skipped = _read_csv(reader, wanted, label_columns)
  if not rows:
    examples = '; '.join(f'line {s.line}: {s.kind}: {s.reason}'
                         for s in skipped[:_ERRORS_SHOWN])
    raise ValueError(f'{path}: no usable row' + (
        f' ({len(skipped)} skipped, e.g. {examples}).' if skipped else ' (the file has no rows).'))
  return rows, skipped


def _read_msrvtt(data: bytes, path: str, label_columns: Sequence[str]
                 ) -> tuple[list[Annotation], list[SkippedRow]] | None:
  """The rows of an MSR-VTT annotation file (`train_val_videodatainfo.json`), or None if `data`
  is not one: an object whose `sentences` list holds `{video_id, caption}` (20 per video). The
  video of `video_id` is `<video_id>.mp4` (as MSR-VTT ships them) unless it names a file with
  an extension. A sentence's `line` is its 1-based position in `sentences`. MSR-VTT's own
  `split` field is not used: splits come from the hash of the path, as for every folder."""
  try:
    record = json.loads(data.decode('utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError):
    return None  # Not one JSON document: read as JSONL.
  if not isinstance(record, dict) or not isinstance(record.get('sentences'), list):
    return None
  if label_columns:
    raise ValueError(f'{path}: label_columns {list(label_columns)} are not supported for '
                     'MSR-VTT files (their sentences have no labels).')
  rows, skipped = [], []
  for number, sentence in enumerate(record['sentences'], 1):
    if not isinstance(sentence, dict):
      skipped.append(SkippedRow(number, 'bad_row', f'sentence {number} is not a JSON object'))
      continue
    missing = [k for k in ('video_id', 'caption') if k not in sentence]
    if missing:
      skipped.append(SkippedRow(number, 'missing_column', f'sentence {number} lacks '
                                                          f'{missing} (found {sorted(sentence)})'))
      continue
    video_id = str(sentence['video_id'] or '')
    file = video_id if not video_id or os.path.splitext(video_id)[1] else f'{video_id}.mp4'
    rows.append(Annotation(file, '' if sentence['caption'] is None else str(sentence['caption']),
                           {}, number))
  return rows, skipped


def _read_jsonl(data: bytes, wanted: list[str], label_columns: Sequence[str]
                ) -> tuple[list[Annotation], list[SkippedRow], list[tuple]]:
  """Rows, skipped rows and (line, missing keys, found keys) of the rows missing keys."""
  rows, skipped, missing_keys = [], [], []
  for number, raw in enumerate(data.split(b'\n'), 1):
    if not raw.strip():
      continue
    try:
      record = json.loads(raw.decode('utf-8'))
    except UnicodeDecodeError as e:
      skipped.append(SkippedRow(number, 'bad_row', f'not UTF-8 ({e.reason} at byte {e.start} '
                                                   'of the line)'))
      continue
    except json.JSONDecodeError as e:
      skipped.append(SkippedRow(number, 'bad_row', f'not valid JSON ({e.msg} at column '
                                                   f'{e.colno})'))
      continue
    if not isinstance(record, dict):
      skipped.append(SkippedRow(number, 'bad_row', f'not a JSON object (a '
                                                   f'{type(record).__name__})'))
      continue
    labels = record.get('labels')
    fields = {**labels, **record} if isinstance(labels, dict) else record
    missing = [k for k in wanted if k not in fields]
    if missing:
      missing_keys.append((number, missing, sorted(fields)))
      skipped.append(SkippedRow(number, 'missing_column', f'missing key(s) {missing} '
                                                          f'(found {sorted(fields)})'))
      continue
    text = {k: '' if fields[k] is None else str(fields[k]) for k in wanted}
    path_column, caption_column = wanted[:2]
    rows.append(Annotation(text[path_column], text[caption_column],
                           {k: text[k].strip() for k in label_columns}, number))
  return rows, skipped, missing_keys


def _read_csv(reader: csv.DictReader, wanted: list[str],
              label_columns: Sequence[str]) -> tuple[list[Annotation], list[SkippedRow]]:
  """Rows and skipped rows of a CSV whose text was decoded with 'surrogateescape'."""
  rows, skipped = [], []
  path_column, caption_column = wanted[:2]
  for record in reader:
    line = reader.line_num  # The record's last line (a quoted field may span several).
    extra = record.pop(None, None)  # DictReader's key for fields beyond the header's.
    bad = [k for k, v in record.items() if v and _SURROGATE.search(v)]
    if bad or any(_SURROGATE.search(v) for v in extra or ()):
      skipped.append(SkippedRow(line, 'bad_row', f'not UTF-8 (in {bad or "extra fields"})'))
    elif extra is not None:
      skipped.append(SkippedRow(line, 'bad_row', f'{len(extra)} field(s) more than the '
                                                 f'{len(reader.fieldnames)} of the header'))
    elif any(record[k] is None for k in wanted):
      absent = [k for k in wanted if record[k] is None]
      skipped.append(SkippedRow(line, 'missing_column', f'too few fields: no {absent}'))
    else:
      rows.append(Annotation(record[path_column], record[caption_column],
                             {k: record[k].strip() for k in label_columns}, line))
  return rows, skipped


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
               max_pixels: int = faults.DEFAULT_MAX_PIXELS, check_videos: bool = True,
               name: str | None = None, **kwargs):
    """`name` (optional) names the config; otherwise it is derived from the folder + settings.

    `check_videos=False` stores videos without decoding them (only missing or unreadable files
    are skipped): for folders too large to decode twice, where the training input pipeline
    skips and counts the bad ones by the same kinds instead.

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
      if max_pixels < 1:
        raise ValueError(f'max_pixels must be >= 1, got {max_pixels}.')
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
      if not check_videos:
        settings += (('check_videos', False),)
      elif max_pixels != faults.DEFAULT_MAX_PIXELS:
        settings += (('max_pixels', max_pixels),)
      kwargs['config'] = VideoTextFolderConfig(
          name=name or _config_name(source_dir, annotations, settings),
          source_dir=source_dir, annotations=annotations,
          split_fractions=tuple(split_fractions), resize=resize and tuple(resize),
          max_frames=max_frames, fps=fps, path_column=path_column,
          caption_column=caption_column, label_columns=label_columns,
          max_pixels=max_pixels, check_videos=bool(check_videos),
          description=f'Videos from {source_dir}.')
    kwargs.setdefault('file_format', 'array_record')  # TFRecord would need TensorFlow.
    self._summary = None
    self._rows = None
    self._bad_rows = None
    super().__init__(**kwargs)

  def _annotation_rows(self) -> list[Annotation]:
    """The usable rows, read once (the label features need them before the build)."""
    if self._rows is None:
      c = self.builder_config
      self._annotations_path = c.annotations or default_annotations(c.source_dir)
      self._rows, self._bad_rows = read_annotations(
          self._annotations_path, path_column=c.path_column, caption_column=c.caption_column,
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
    """Examples per split and skipped rows by kind (with reasons), or None if never built."""
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
    by_kind = collections.Counter(s['kind'] for s in self._skipped)
    self._summary = {
        'source_dir': self.builder_config.source_dir,
        'annotations': self._annotations_path,
        'examples': {s: self._written[s] for s in SPLITS},
        'num_skipped': len(self._skipped),
        'skipped_by_kind': dict(sorted(by_kind.items())),
        'skipped': _examples_of_each_kind(self._skipped),
    }
    with open(os.path.join(self.data_dir, SUMMARY_FILE), 'w') as f:  # The temporary dir.
      json.dump(self._summary, f, indent=2)
    print(format_summary(self._summary))
    return result

  def _skip(self, kind: str, reason: str, path: str, line: int) -> None:
    """Counts one annotation row that does not become an example."""
    self._skipped.append({'path': path, 'line': line, 'kind': kind, 'reason': reason})

  def _skip_video(self, fault: faults.BadRecord, rows: Sequence[Annotation]) -> None:
    """A bad video skips each of its rows: the training pipeline counts per record too."""
    reason = fault.detail
    if fault.kind == 'empty_video':
      reason = 'empty file'
    elif fault.kind in ('corrupt_video', 'no_frames'):
      reason = f'cannot decode: {fault.detail}'
    for row in rows:
      self._skip(fault.kind, reason, row.path, row.line)

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    c = self.builder_config
    if not c.source_dir:
      raise ValueError(f'Dataset {c.name!r} is not built yet and building needs source_dir.')
    if not os.path.isdir(c.source_dir):
      raise FileNotFoundError(f'source_dir is not a directory: {c.source_dir!r}.')
    rows = self._annotation_rows()
    for bad in self._bad_rows:
      self._skip(bad.kind, bad.reason, os.path.basename(self._annotations_path), bad.line)
    examples = collections.defaultdict(list)  # path -> its rows, in file order.
    for row in rows:
      empty = [column for column, value in row.labels.items() if not value]
      if not row.path.strip():
        self._skip('empty_path', 'empty path', row.path, row.line)
      elif not row.caption.strip():
        self._skip('empty_caption', 'empty caption', row.path, row.line)
      elif empty:
        self._skip('empty_label', f'empty label {", ".join(empty)}', row.path, row.line)
      else:
        examples[row.path.strip()].append(
            dataclasses.replace(row, path=row.path.strip(), caption=row.caption.strip()))
    # Verify up front (cheap: header + first frame) so that splits are known to be non-empty.
    by_split = collections.defaultdict(list)
    for path in tqdm.tqdm(examples, desc='Checking videos', unit=' videos'):
      try:
        self._check(path)
      except faults.BadRecord as e:
        self._skip_video(e, examples[path])
      else:
        by_split[split_of(path, c.split_fractions)].append((path, examples[path]))
    if not by_split:
      shown = '; '.join(f"{s['path']!r} line {s['line']}: {s['kind']}: {s['reason']}"
                        for s in self._skipped[:3])
      raise ValueError(
          f'No usable video in {c.source_dir!r} (annotations {self._annotations_path!r}); '
          f'skipped {len(self._skipped)} rows, e.g. {shown}.')
    return {split: self._generate_examples(split, by_split[split])
            for split in SPLITS if by_split[split]}

  def _read(self, path: str, size: int = -1) -> bytes:
    """The first `size` bytes (all by default) of a video, or BadRecord(missing / unreadable)."""
    file = os.path.join(self.builder_config.source_dir, path)
    try:
      with open(file, 'rb') as f:
        return f.read(size)
    except FileNotFoundError as e:
      raise faults.BadRecord('missing_file', f'missing file {file}') from e
    except OSError as e:
      raise faults.BadRecord('unreadable_file', f'unreadable: {e}') from e

  def _check(self, path: str) -> None:
    """Raises BadRecord if `path` is unusable: the same checks as at training time."""
    c = self.builder_config
    if c.check_videos:
      faults.check_video(self._read(path), c.max_pixels)
    elif c.resize is not None or c.max_frames is not None:
      # Re-encoding decodes each video anyway; checking first keeps any split from ending up
      # empty (TFDS fails on a split that yields nothing). No size limit: none was asked for.
      faults.check_video(self._read(path), max_pixels=sys.maxsize)
    else:
      self._read(path, size=1)  # Opens it: a missing or unreadable file is still skipped.

  def _load(self, path: str) -> bytes:
    """The bytes to store for `path` (re-encoded if asked), or BadRecord."""
    c = self.builder_config
    data = self._read(path)
    if c.resize is None and c.max_frames is None:
      return data  # Checked in _split_generators (if check_videos).
    try:  # Checked in _split_generators; later frames may still fail.
      info = video_lib.video_info(data)
      n = info['num_frames'] if c.max_frames is None else min(info['num_frames'], c.max_frames)
      frames = video_lib.decode_mp4(data, num_frames=max(int(n), 1), resize=c.resize)
    except video_lib.VideoDecodeError as e:
      raise faults.BadRecord(e.kind, str(e)) from e
    if frames.shape[1] % 2 or frames.shape[2] % 2:  # Odd source size, no resize: crop.
      frames = frames[:, :frames.shape[1] // 2 * 2, :frames.shape[2] // 2 * 2]
    return video_lib.encode_mp4(frames, fps=round(c.fps or info['fps'] or 8))

  def _generate_examples(self, split: str, videos: list) -> Iterator[tuple[str, dict]]:
    for path, rows in videos:
      try:
        data = self._load(path)
      except faults.BadRecord as e:
        self._skip_video(e, rows)
        continue
      for k, row in enumerate(rows):
        video_id = path if k == 0 else f'{path}#{k}'
        self._written[split] += 1
        yield video_id, {'video': data, 'caption': row.caption, 'video_id': video_id,
                         **{f'{column}_label': value for column, value in row.labels.items()}}


def _examples_of_each_kind(skipped: list[dict]) -> list[dict]:
  """Up to _REASONS_KEPT skipped rows in line order, at most _REASONS_PER_KIND of a kind."""
  kept, per_kind = [], collections.Counter()
  for s in sorted(skipped, key=lambda s: s['line']):
    if per_kind[s['kind']] < _REASONS_PER_KIND and len(kept) < _REASONS_KEPT:
      per_kind[s['kind']] += 1
      kept.append(s)
  return kept


def format_summary(summary: dict) -> str:
  """Human-readable build summary: counts by kind, then the first skipped rows."""
  by_kind = summary.get('skipped_by_kind')  # Absent in summaries of older builds.
  kinds = f" ({', '.join(f'{n} {k}' for k, n in by_kind.items())})" if by_kind else ''
  lines = [f"video_text_folder: wrote {summary['examples']} examples; "
           f"skipped {summary['num_skipped']}{kinds}."]
  for s in summary['skipped'][:_SHOWN]:
    line = f" line {s['line']}" if s.get('line') else ''
    kind = f"{s['kind']}: " if s.get('kind') else ''
    lines.append(f"  skipped {s['path']!r}{line}: {kind}{s['reason']}")
  return '\n'.join(lines)
