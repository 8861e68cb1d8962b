"""Bad data at training time: a folder of faults stored unchecked gives, through the input
pipeline, the per-kind counts the checked build reported; short clips and long captions are
fixed (or skipped) by policy; the trainer writes the counts per kind into metrics.jsonl and
stops with a clear error when more than `data.max_bad_fraction` of a window was bad."""

import json
import os

import grain
import numpy as np
import pytest
from test_bad_data_build import GOOD, VIDEO_KINDS, _clip, _jsonl_folder, _row, _write_clips

from vidlang_jax import config as config_lib
from vidlang_jax import guards, pixels, train
from vidlang_jax.data import builders, faults, pipeline, video
from vidlang_jax.data import caption_tokenizer as tokenizer_lib

MAX_PIXELS = 32 * 32  # The 64x64 clip of the folder is too_large.
# Kinds only a build can meet: an annotation row, or a file that is not there.
BUILD_ONLY = ('bad_row', 'missing_column', 'missing_file', 'empty_path', 'unreadable_file',
              'empty_label')
LONG_CAPTION = ' '.join(['a red square moves left then'] * 10)  # 60 words > 30 tokens of room


def _folder_kwargs(src, **extra):
  return dict(source_dir=str(src), max_pixels=MAX_PIXELS, split_fractions=(1, 0, 0), **extra)


def _data_config(data_dir, builder_kwargs, **overrides):
  """The tiny two-tower data config on a video_text_folder, read in this process."""
  config = config_lib.load('configs/two_tower.py:tiny')
  data = config.data
  data.update(name='video_text_folder', data_dir=data_dir, num_workers=0,
              max_pixels=MAX_PIXELS, **overrides)
  data.builder_kwargs = builder_kwargs
  return data


def _counts(rows):
  """`{kind: count}` of `data_faults` rows (COUNTED order)."""
  return dict(zip(faults.COUNTED, np.asarray(rows).sum(axis=0).tolist()))


def _eval_pass(data_config, batch_size=4):
  """One deterministic pass over train: the real rows of video, text and data_faults."""
  batches = list(pipeline.eval_batches(data_config, 'train', batch_size))
  return {key: np.concatenate([b[key][b['mask']] for b in batches])
          for key in ('video', 'text', pipeline.FAULTS_KEY)}


def _tokenizer(data_config):
  return tokenizer_lib.load_tokenizer(pipeline.tokenizer_path(data_config))


@pytest.fixture(scope='module')
def fault_folder(tmp_path_factory):
  """tests/test_bad_data_build.py's JSONL folder (each fault kind on its own line) built twice,
  checked and unchecked, all of it in train."""
  root = tmp_path_factory.mktemp('faults')
  _jsonl_folder(root / 'src')
  data_dir = str(root / 'data')
  checked = builders.prepare('video_text_folder', data_dir, **_folder_kwargs(root / 'src'))
  unchecked_kwargs = _folder_kwargs(root / 'src', check_videos=False)
  unchecked = builders.prepare('video_text_folder', data_dir, **unchecked_kwargs)
  return data_dir, checked, unchecked, unchecked_kwargs


def test_training_counts_what_the_checked_build_counted(fault_folder):
  """Per kind: checked build = unchecked build + one pass of the training pipeline. The video
  kinds move from the build to the pipeline; the build-only kinds, and empty captions (the
  builder skips them whether or not it checks videos), stay with the build."""
  data_dir, checked, unchecked, kwargs = fault_folder
  source = builders.data_source('video_text_folder', 'train', data_dir, **kwargs)
  # A skip is counted on the next kept record; the split's last one must be good (see
  # test_skips_at_the_end_of_a_pass_are_counted).
  assert source[len(source) - 1]['video_id'].decode() in GOOD
  data_config = _data_config(data_dir, kwargs)
  got = _eval_pass(data_config)
  counts = _counts(got[pipeline.FAULTS_KEY])
  assert {k: n for k, n in counts.items() if n} == {
      'corrupt_video': 2, 'empty_video': 1, 'no_frames': 1, 'too_large': 1}
  built, stored = checked.build_summary, unchecked.build_summary
  for kind in faults.RECORD_SKIPS + BUILD_ONLY:
    assert (built['skipped_by_kind'].get(kind, 0)
            == stored['skipped_by_kind'].get(kind, 0) + counts.get(kind, 0)), kind
  assert all(built['skipped_by_kind'][kind] == counts[kind] for kind in VIDEO_KINDS)
  assert stored['skipped_by_kind']['empty_caption'] == 1
  assert not any(kind in counts for kind in BUILD_ONLY)  # Not even a name in COUNTED.
  # The good examples: the checked build's, frame for frame and token for token.
  assert len(got['video']) == sum(built['examples'].values()) == len(GOOD)
  data_config.tokenizer = pipeline.tokenizer_path(data_config)  # The same ids for both.
  reference = _eval_pass(_data_config(data_dir, _folder_kwargs(checked.builder_config.source_dir),
                                      tokenizer=data_config.tokenizer))
  assert not reference[pipeline.FAULTS_KEY].any()
  by_text = {tuple(t): v for t, v in zip(reference['text'], reference['video'])}
  assert sorted(by_text) == sorted(tuple(t) for t in got['text'])
  for text, clip in zip(got['text'], got['video']):
    np.testing.assert_array_equal(clip, by_text[tuple(text)])


def test_skips_at_the_end_of_a_pass_are_counted(fault_folder, monkeypatch):
  data_dir, _, _, kwargs = fault_folder
  source = builders.data_source('video_text_folder', 'train', data_dir, **kwargs)
  records = [dict(source[i]) for i in range(len(source))]
  good = [r for r in records if r['video_id'].decode() in GOOD]
  monkeypatch.setattr(builders, 'data_source',
                      lambda *args, **kw: good + [dict(good[0], video=b'')])
  got = _eval_pass(_data_config(data_dir, kwargs))
  assert len(got['video']) == len(good)
  assert _counts(got[pipeline.FAULTS_KEY])['empty_video'] == 1


@pytest.fixture(scope='module')
def short_folder(tmp_path_factory):
  """Four 8-frame clips, one of them captioned with LONG_CAPTION, and one 5-frame clip."""
  root = tmp_path_factory.mktemp('short')
  (root / 'src' / 'clips').mkdir(parents=True)
  rng = np.random.default_rng(0)
  lines = []
  for i, caption in enumerate(['one', 'two', 'three', LONG_CAPTION]):
    (root / 'src' / 'clips' / f'c{i}.mp4').write_bytes(_clip(i))
    lines.append(_row(f'clips/c{i}.mp4', caption))
  short = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  (root / 'src' / 'clips' / 'short.mp4').write_bytes(video.encode_mp4(short))
  lines.append(_row('clips/short.mp4', 'short'))
  (root / 'src' / 'captions.jsonl').write_bytes(b'\n'.join(lines) + b'\n')
  data_dir = str(root / 'data')
  kwargs = _folder_kwargs(root / 'src')
  builders.prepare('video_text_folder', data_dir, **kwargs)
  source = builders.data_source('video_text_folder', 'train', data_dir, **kwargs)
  ids = [r['video_id'].decode() for r in source]
  assert ids[-1] != 'clips/short.mp4', ids  # Its skip is counted on a later record.
  return data_dir, kwargs, source, ids


def test_short_clips_are_padded_with_their_last_frame(short_folder):
  data_dir, kwargs, source, ids = short_folder
  data_config = _data_config(data_dir, kwargs)
  assert data_config.short_clips == 'pad' and data_config.num_frames == 8
  got = _eval_pass(data_config)
  assert len(got['video']) == len(ids)  # Nothing skipped: row i is record i.
  expected = np.zeros((len(ids), len(faults.COUNTED)), np.int32)
  short, long = ids.index('clips/short.mp4'), ids.index('clips/c3.mp4')
  expected[short, faults.COUNTED.index('short_clip')] = 1
  expected[long, faults.COUNTED.index('long_caption')] = 1
  np.testing.assert_array_equal(got[pipeline.FAULTS_KEY], expected)
  frames = video.decode_mp4(source[short]['video'])  # All 5 frames, 32x32: no resize needed.
  assert frames.shape == (5, 32, 32, 3)
  want = pixels.normalize(frames[[0, 1, 2, 3, 4, 4, 4, 4]].astype(np.float32) / 255.0)
  np.testing.assert_allclose(got['video'][short], want, atol=1e-4)
  assert np.abs(got['video'][short][3] - got['video'][short][4]).max() > 0.1  # Not padding.
  # The long caption: cut to max_text_len, BOS first and EOS last, no padding.
  text = got['text'][long]
  ids_of_caption = _tokenizer(data_config).encode(LONG_CAPTION, add_special_tokens=False).ids
  assert len(ids_of_caption) > data_config.max_text_len
  np.testing.assert_array_equal(
      text, [tokenizer_lib.BOS_ID, *ids_of_caption[:data_config.max_text_len - 2],
             tokenizer_lib.EOS_ID])
  assert ((got['text'] == tokenizer_lib.EOS_ID).sum(axis=1) == 1).all()


def test_short_clips_skip_policy(short_folder):
  data_dir, kwargs, _, ids = short_folder
  got = _eval_pass(_data_config(data_dir, kwargs, short_clips='skip'))
  assert len(got['video']) == len(ids) - 1
  assert {k: n for k, n in _counts(got[pipeline.FAULTS_KEY]).items() if n} == {
      'too_short': 1, 'long_caption': 1}
  with pytest.raises(ValueError, match=r"data.short_clips='loop'; expected one of \['pad', "
                                       r"'skip'\]"):
    _eval_pass(_data_config(data_dir, kwargs, short_clips='loop'))


def _expected_skips(num_records, bad, seed, num_kept):
  """How many of the `bad` indices the shuffled, repeated stream of train_dataset reads
  before its `num_kept`-th good record: grain's shuffle, replayed on indices."""
  stream = grain.MapDataset.source(list(range(num_records))).shuffle(seed=seed).repeat()
  kept, skipped, i = 0, 0, 0
  while kept < num_kept:
    if stream[i] in bad:
      skipped += 1
    else:
      kept += 1
    i += 1
  return skipped


def test_non_utf8_and_empty_captions_reaching_the_pipeline_are_skipped(fault_folder):
  data_dir, checked, _, _ = fault_folder
  kwargs = _folder_kwargs(checked.builder_config.source_dir)
  good = [dict(r) for r in builders.data_source('video_text_folder', 'train', data_dir,
                                                **kwargs)]
  records = good + [dict(good[0], caption=b'caf\xff\xfe'), dict(good[1], caption=b' \t')]
  data_config = _data_config(data_dir, kwargs)
  ds = pipeline.train_dataset(records, data_config, global_batch_size=4, seed=0,
                              tokenizer_file=pipeline.tokenizer_path(data_config))
  num_batches = 6  # 24 good records: nearly 5 passes
  batches = [batch for batch, _ in zip(ds, range(num_batches))]
  counts = _counts(np.concatenate([b[pipeline.FAULTS_KEY] for b in batches]))
  utf8 = _expected_skips(len(records), {len(good)}, 0, 4 * num_batches)
  both = _expected_skips(len(records), {len(good), len(good) + 1}, 0, 4 * num_batches)
  assert utf8 >= 4 and both - utf8 >= 4  # At least 4 full passes of each.
  assert {k: n for k, n in counts.items() if n} == {'caption_not_utf8': utf8,
                                                    'empty_caption': both - utf8}
  for batch in batches:
    assert ((batch['text'] == tokenizer_lib.EOS_ID).sum(axis=1) == 1).all()


# ------------------------------------------------------------------------------------------
# Training on the unchecked folder


@pytest.fixture(scope='module')
def train_folder(tmp_path_factory):
  """Mostly bad: four good clips, and seven records of bad videos (each video kind, two of them
  with a second caption), stored unchecked."""
  root = tmp_path_factory.mktemp('train')
  _write_clips(root / 'src')
  rows = [_row(f'clips/g{i}.mp4', f'clip number {i}') for i in range(4)]
  rows += [_row(f'clips/{name}.mp4', name) for name in ('corrupt', 'empty', 'cut', 'audio',
                                                          'big')]
  rows += [_row('clips/corrupt.mp4', 'corrupt again'), _row('clips/big.mp4', 'big again')]
  (root / 'src' / 'captions.jsonl').write_bytes(b'\n'.join(rows) + b'\n')
  kwargs = _folder_kwargs(root / 'src', check_videos=False)
  data_dir = str(root / 'data')
  builder = builders.prepare('video_text_folder', data_dir, **kwargs)
  assert builder.build_summary['examples']['train'] == 11
  return data_dir, kwargs


def _train_config(data_dir, kwargs, steps, **data):
  config = config_lib.load(f'configs/two_tower.py:tiny,steps={steps}')
  config.update(log_every=1, checkpoint_every=100, batch_size=8, peak_flops_per_device=1e11)
  config.model.video.depth = 1
  config.model.text.depth = 1
  config.evals = {}
  config.data.update(name='video_text_folder', data_dir=data_dir, num_workers=0,
                     max_pixels=MAX_PIXELS, **data)
  config.data.builder_kwargs = kwargs
  return config


def _replayed_counts(config, steps):
  """Per step, the per-kind counts the pipeline attaches to the run's batches."""
  iterator = pipeline.train_iterator(config.data, global_batch_size=config.batch_size,
                                     seed=config.seed)
  return [next(iterator)[pipeline.FAULTS_KEY].sum(axis=0) for _ in range(steps)]


def test_training_writes_cumulative_counts_per_kind(train_folder, tmp_path):
  steps = 3
  config = _train_config(*train_folder, steps, max_bad_fraction=1.0)
  per_step = _replayed_counts(config, steps)
  assert sum(bool(c.any()) for c in per_step) >= 2  # So that cumulative != per step.
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  with open(os.path.join(tmp_path / 'run', 'metrics.jsonl')) as f:
    logged = [r for r in map(json.loads, f) if 'loss' in r]
  assert [r['step'] for r in logged] == list(range(1, steps + 1))
  total = np.zeros(len(faults.COUNTED), np.int64)
  for record, counts in zip(logged, per_step):
    total += counts
    assert {k: record[k] for k in faults.metric_names()} == dict(
        zip(faults.metric_names(), total.tolist())), record['step']
    assert record['data_skipped'] == total[:len(faults.RECORD_SKIPS)].sum()
  final = dict(zip(faults.COUNTED, total.tolist()))
  assert all(final[kind] for kind in VIDEO_KINDS) and final['corrupt_video'] >= 2 * steps
  assert not any(final[kind] for kind in ('too_short', 'empty_caption', 'caption_not_utf8',
                                          'short_clip', 'long_caption'))


def test_too_many_bad_records_stop_the_run(train_folder, tmp_path):
  config = _train_config(*train_folder, 3, max_bad_fraction=0.05)
  first = dict(zip(faults.COUNTED, _replayed_counts(config, 1)[0].tolist()))
  skipped = sum(first[k] for k in faults.RECORD_SKIPS)
  assert skipped / (skipped + config.batch_size) > 0.05
  kinds = ', '.join(f'{k} {first[k]}' for k in faults.RECORD_SKIPS if first[k])
  with pytest.raises(guards.DataFaultError) as error:
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert str(error.value).startswith(
      f'{skipped} of the {skipped + config.batch_size} records read up to step 1 were bad '
      f'({kinds}): more than data.max_bad_fraction=0.05.')
  assert 'corrupt_video' in kinds and 'too_large' in kinds
