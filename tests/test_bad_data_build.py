"""Bad data at build time: one folder holding each kind of fault (data/faults.py) builds, with
exact counts by kind and line numbers in `build_summary`, and only the good examples stored;
with check_videos=False the bad videos are stored for the training pipeline to count."""

import io
import json

import av
import numpy as np
import pytest

from vidlang_jax.data import builders, faults, video
from vidlang_jax.data import video_text_folder as vtf

GOOD = ('clips/g0.mp4', 'clips/g0.mp4#1', 'clips/g1.mp4', 'clips/g2.mp4', 'clips/g3.mp4')
# The JSONL folder's skipped rows: line -> kind.
JSONL_SKIPS = {4: 'bad_row', 7: 'bad_row', 8: 'missing_column', 10: 'empty_caption',
               11: 'corrupt_video', 12: 'empty_video', 13: 'corrupt_video', 14: 'no_frames',
               15: 'too_large', 16: 'missing_file', 17: 'empty_path', 18: 'bad_row'}
VIDEO_KINDS = ('corrupt_video', 'empty_video', 'no_frames', 'too_large')


def _clip(seed, size=32):
  rng = np.random.default_rng(seed)
  return video.encode_mp4(rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8))


def _audio_only():
  """An mp4 FFmpeg opens that holds no video stream."""
  buffer = io.BytesIO()
  with av.open(buffer, 'w', format='mp4') as container:
    stream = container.add_stream('aac', rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format='fltp',
                                       layout='mono')
    frame.sample_rate = 8000
    for packet in [*stream.encode(frame), *stream.encode(None)]:
      container.mux(packet)
  return buffer.getvalue()


def _write_clips(root):
  (root / 'clips').mkdir(parents=True)
  for i in range(4):
    (root / 'clips' / f'g{i}.mp4').write_bytes(_clip(i))
  bad = {'corrupt': b'not a video', 'empty': b'', 'cut': _clip(9)[:816],
         'audio': _audio_only(), 'big': _clip(8, size=64)}
  for name, data in bad.items():
    (root / 'clips' / f'{name}.mp4').write_bytes(data)


def _row(path, caption):
  return json.dumps({'path': path, 'caption': caption}).encode()


def _jsonl_folder(root):
  """Four good clips (g0 with two captions) and each fault, on the lines of JSONL_SKIPS."""
  _write_clips(root)
  lines = [
      _row('clips/g0.mp4', 'a first caption'),
      _row('clips/g0.mp4', 'a second caption'),
      _row('clips/g1.mp4', 'one'),
      b'{"path": "clips/g2.mp4", "caption": "caf\xff\xfe"}',  # 4: not UTF-8
      _row('clips/g2.mp4', 'two'),
      b'   ',  # 6: blank, ignored
      b'{"path": "clips/g3.mp4", "caption": ',  # 7: not JSON
      json.dumps({'path': 'clips/g3.mp4'}).encode(),  # 8: no caption key
      _row('clips/g3.mp4', 'three'),
      _row('clips/g1.mp4', '  '),  # 10
      _row('clips/corrupt.mp4', 'corrupt'),
      _row('clips/empty.mp4', 'empty'),
      _row('clips/cut.mp4', 'cut'),
      _row('clips/audio.mp4', 'audio'),
      _row('clips/big.mp4', 'big'),
      _row('clips/gone.mp4', 'missing'),
      _row('', 'no path'),  # 17
      b'[1, 2]',  # 18: not an object
  ]
  (root / 'captions.jsonl').write_bytes(b'\n'.join(lines) + b'\n')


def _all_records(builder):
  return {r['video_id'].decode(): r for split in builder.info.splits
          for r in builder.as_data_source(split=split)}


def _kinds(summary):
  return {s['line']: s['kind'] for s in summary['skipped']}


def test_each_fault_is_skipped_and_counted_by_kind(tmp_path, capsys):
  _jsonl_folder(tmp_path / 'src')
  builder = builders.prepare('video_text_folder', str(tmp_path / 'data'),
                             source_dir=str(tmp_path / 'src'), max_pixels=32 * 32)
  summary = builder.build_summary
  assert summary['skipped_by_kind'] == {
      'bad_row': 3, 'corrupt_video': 2, 'empty_caption': 1, 'empty_path': 1, 'empty_video': 1,
      'missing_column': 1, 'missing_file': 1, 'no_frames': 1, 'too_large': 1}
  assert summary['num_skipped'] == len(JSONL_SKIPS) == 12
  assert sum(summary['examples'].values()) == len(GOOD)
  assert _kinds(summary) == JSONL_SKIPS  # Under the cap of 5 per kind: all listed.
  by_line = {s['line']: s for s in summary['skipped']}
  assert by_line[4]['path'] == 'captions.jsonl' and 'not UTF-8' in by_line[4]['reason']
  assert 'not valid JSON' in by_line[7]['reason'] and "['caption']" in by_line[8]['reason']
  assert by_line[16]['path'] == 'clips/gone.mp4' and 'gone.mp4' in by_line[16]['reason']
  assert 'not UTF-8' in by_line[4]['reason'] and 'not a JSON object' in by_line[18]['reason']
  out = capsys.readouterr().out
  assert "skipped 'captions.jsonl' line 4: bad_row: not UTF-8" in out
  assert '3 bad_row' in out and '1 too_large' in out
  records = _all_records(builder)
  assert sorted(records) == sorted(GOOD)
  assert records['clips/g0.mp4#1']['caption'] == b'a second caption'
  assert records['clips/g2.mp4']['caption'] == b'two'
  # Reopened: the summary comes back from build_summary.json.
  again = builders.prepare('video_text_folder', str(tmp_path / 'data'),
                           source_dir=str(tmp_path / 'src'), max_pixels=32 * 32)
  assert again.data_dir == builder.data_dir and again.build_summary == summary


def test_csv_bad_records(tmp_path):
  _write_clips(tmp_path / 'src')
  (tmp_path / 'src' / 'captions.csv').write_bytes(b''.join([
      b'path,caption,action\n',
      b'clips/g0.mp4,first,left\n',
      b'clips/g1.mp4,caf\xe9,left\n',  # 3: latin-1, not UTF-8
      b'clips/g1.mp4,one,right\n',
      b'clips/g2.mp4,"two\nlines",left\n',  # 5-6: one record on two lines
      b'clips/g2.mp4,short\n',  # 7: too few fields
      b'clips/g3.mp4,three,left,extra\n',  # 8: too many
      b'clips/g3.mp4,three,\n',  # 9: empty label
      b'clips/g3.mp4,three,right\n',
      b'clips/gone.mp4,missing,left\n',  # 11
      b'clips/folder.mp4,a folder,left\n',  # 12: exists, cannot be read as a file
  ]))
  (tmp_path / 'src' / 'clips' / 'folder.mp4').mkdir()
  builder = builders.prepare('video_text_folder', str(tmp_path / 'data'),
                             source_dir=str(tmp_path / 'src'), label_columns=('action',))
  summary = builder.build_summary
  assert summary['skipped_by_kind'] == {'bad_row': 2, 'empty_label': 1, 'missing_column': 1,
                                        'missing_file': 1, 'unreadable_file': 1}
  assert _kinds(summary) == {3: 'bad_row', 7: 'missing_column', 8: 'bad_row',
                             9: 'empty_label', 11: 'missing_file', 12: 'unreadable_file'}
  assert sorted(_all_records(builder)) == ['clips/g0.mp4', 'clips/g1.mp4', 'clips/g2.mp4',
                                           'clips/g3.mp4']
  assert _all_records(builder)['clips/g2.mp4']['caption'] == b'two\nlines'


def test_unchecked_videos_are_stored_for_the_pipeline(tmp_path):
  """check_videos=False stores the bad videos (the pipeline's checks then find the kinds the
  checked build counted), still skipping the missing file and the bad rows."""
  _jsonl_folder(tmp_path / 'src')
  kw = dict(source_dir=str(tmp_path / 'src'), max_pixels=32 * 32, split_fractions=(1, 0, 0))
  checked = builders.prepare('video_text_folder', str(tmp_path / 'data'), **kw)
  unchecked = builders.prepare('video_text_folder', str(tmp_path / 'data'), check_videos=False,
                               **kw)
  assert unchecked.data_dir != checked.data_dir
  by_kind = dict(checked.build_summary['skipped_by_kind'])
  video_counts = {k: by_kind.pop(k) for k in VIDEO_KINDS}
  assert unchecked.build_summary['skipped_by_kind'] == by_kind  # missing_file, rows: as before
  records = {r['video_id'].decode(): r for r in unchecked.as_data_source(split='train')}
  bad = {'clips/corrupt.mp4', 'clips/empty.mp4', 'clips/cut.mp4', 'clips/audio.mp4',
         'clips/big.mp4'}
  assert sorted(records) == sorted(set(GOOD) | bad)
  assert records['clips/empty.mp4']['video'] == b''
  found = {}
  for record in records.values():  # The same checks the training pipeline makes.
    try:
      faults.check_video(record['video'], 32 * 32)
    except faults.BadRecord as e:
      found[e.kind] = found.get(e.kind, 0) + 1
  assert found == video_counts


def test_reencode_maps_decode_failures_to_kinds(tmp_path):
  _jsonl_folder(tmp_path / 'src')
  builder = builders.prepare('video_text_folder', str(tmp_path / 'data'),
                             source_dir=str(tmp_path / 'src'), resize=(16, 16),
                             check_videos=False)
  summary = builder.build_summary
  assert {k: summary['skipped_by_kind'].get(k) for k in VIDEO_KINDS} == {
      'corrupt_video': 2, 'empty_video': 1, 'no_frames': 1, 'too_large': None}
  records = _all_records(builder)
  assert sorted(records) == sorted(GOOD + ('clips/big.mp4',))  # No size check: re-encoded.
  assert video.decode_mp4(records['clips/big.mp4']['video']).shape == (8, 16, 16, 3)


def test_config_names_of_default_settings_are_unchanged(tmp_path):
  src = str(tmp_path)
  name = vtf.VideoTextFolder(source_dir=src, data_dir=str(tmp_path / 'd')).builder_config.name
  assert name == vtf._config_name(src, None, ((0.8, 0.1, 0.1), None, None, None))
  names = {vtf.VideoTextFolder(source_dir=src, data_dir=str(tmp_path / 'd'),
                               **kw).builder_config.name
           for kw in ({}, {'max_pixels': 64}, {'check_videos': False})}
  assert len(names) == 3


def test_annotation_files_with_no_usable_row_fail_clearly(tmp_path):
  bad = tmp_path / 'bad.jsonl'
  bad.write_bytes(b'\xff\n{"path": \n')
  with pytest.raises(ValueError, match=r'bad.jsonl: no usable row .*line 1: bad_row: not UTF-8'
                                       r'.*line 2: bad_row'):
    vtf.read_annotations(str(bad))
  keys = tmp_path / 'keys.jsonl'
  keys.write_text(''.join(json.dumps({'file': f'{i}.mp4', 'caption': 'c'}) + '\n'
                          for i in range(2)))
  with pytest.raises(ValueError, match=r"missing key\(s\) \['path'\] \(found \['caption', "
                                       r"'file'\]\) in every row; pass path_column="):
    vtf.read_annotations(str(keys))
  rows, skipped = vtf.read_annotations(str(keys), path_column='file')
  assert [(r.path, r.line) for r in rows] == [('0.mp4', 1), ('1.mp4', 2)] and not skipped


def test_data_command_max_pixels_and_check_videos(tmp_path, capsys):
  """`vidlang data` passes --max_pixels and --check_videos to the folder's build."""
  _jsonl_folder(tmp_path / 'src')
  common = ['video_text_folder', '--source_dir', str(tmp_path / 'src'), '--data_dir',
            str(tmp_path / 'data')]
  builders.main([*common, '--save_as', 'default'])
  builders.main([*common, '--max_pixels', str(32 * 32), '--check_videos', '--save_as', 'small'])
  builders.main([*common, '--max_pixels', str(32 * 32), '--check_videos=false',
                 '--save_as', 'unchecked'])
  out = capsys.readouterr().out
  assert '1 too_large' in out
  summaries = {name: builders.get_builder(f'video_text_folder/{name}',
                                          str(tmp_path / 'data')).build_summary
               for name in ('default', 'small', 'unchecked')}
  by_kind = {name: s['skipped_by_kind'] for name, s in summaries.items()}
  assert 'too_large' not in by_kind['default']  # 64x64 is under the default limit.
  assert by_kind['small'] == {**by_kind['default'], 'too_large': 1}
  assert by_kind['unchecked'] == {k: n for k, n in by_kind['small'].items()
                                  if k not in VIDEO_KINDS}
  assert sum(summaries['unchecked']['examples'].values()) == len(GOOD) + 5  # + the bad videos
  with pytest.raises(SystemExit):
    builders.main([*common, '--check_videos=maybe'])
  assert "--check_videos: expected true or false, got 'maybe'" in capsys.readouterr().err
  with pytest.raises(SystemExit):  # Not a TypeError from the builder.
    builders.main(['moving_shapes/tiny', '--max_pixels', '64', '--check_videos=false'])
  assert ('--max_pixels, --check_videos: not an option of moving_shapes'
          in capsys.readouterr().err)
