"""grain pipeline: shapes and dtypes, exact resume from iterator state, corrupt clips skipped."""

import numpy as np
import pytest

from vidlang_jax import pixels
from vidlang_jax.data import builders, faults, pipeline
from vidlang_jax.data import caption_tokenizer as tokenizer_lib

from helpers import tiny_config


def data_config(data_dir, **overrides):
  config = tiny_config()
  config.data.name = 'moving_shapes/tiny'
  config.data.data_dir = data_dir
  config.data.num_workers = 0
  config.data.update(overrides)
  return config.data


def test_train_batches_shapes_and_dtypes(tiny_data_dir):
  dc = data_config(tiny_data_dir)
  batch = next(pipeline.train_iterator(dc, global_batch_size=8, seed=0))
  assert set(batch) == {'video', 'text', 'data_faults'}
  assert batch['video'].shape == (8, dc.num_frames, dc.image_size, dc.image_size, 3)
  assert batch['video'].dtype == np.float32
  assert batch['text'].shape == (8, dc.max_text_len) and batch['text'].dtype == np.int32
  assert (batch['text'][:, 0] == tokenizer_lib.BOS_ID).all()
  assert ((batch['text'] == tokenizer_lib.EOS_ID).sum(axis=1) == 1).all()
  assert batch['data_faults'].shape == (8, len(faults.COUNTED))
  assert batch['data_faults'].sum() == 0
  # Normalised pixels: black background is (0 - mean) / std, shapes are brighter.
  background = (0 - pixels.MEAN_RGB) / pixels.STD_RGB
  np.testing.assert_allclose(np.median(batch['video'], axis=(0, 1, 2, 3)), background, atol=0.05)
  assert batch['video'].max() > 1.0


def test_eval_batches_cover_split_once_with_mask(tiny_data_dir):
  dc = data_config(tiny_data_dir)
  batches = list(pipeline.eval_batches(dc, 'test', batch_size=24, keys=('shape_label',)))
  assert [b['video'].shape[0] for b in batches] == [24, 24, 24]
  assert sum(b['mask'].sum() for b in batches) == 64  # 64 test clips, the last batch padded
  assert 'shape_label' in batches[0]
  again = list(pipeline.eval_batches(dc, 'test', batch_size=24))
  np.testing.assert_array_equal(batches[1]['video'], again[1]['video'])  # deterministic


@pytest.mark.parametrize('num_workers', [0, 1])
def test_iterator_state_resumes_exactly(tiny_data_dir, num_workers):
  dc = data_config(tiny_data_dir, num_workers=num_workers)
  iterator = pipeline.train_iterator(dc, global_batch_size=8, seed=3)
  next(iterator), next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(2)]
  resumed = pipeline.train_iterator(dc, global_batch_size=8, seed=3)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got['video'], want['video'])
    np.testing.assert_array_equal(got['text'], want['text'])
  for it in (iterator, resumed):
    if hasattr(it, 'close'):
      it.close()


def test_corrupt_clips_are_skipped_and_counted(tiny_data_dir):
  dc = data_config(tiny_data_dir)
  source = builders.data_source(dc.name, 'validation', dc.data_dir)
  good = [dict(source[i]) for i in range(8)]
  corrupt = [dict(good[0], video=b'not an mp4 at all'), dict(good[1], video=b''),
             dict(good[2], video=good[2]['video'][:40])]  # truncated inside the header
  ds = pipeline.train_dataset(good + corrupt, dc, global_batch_size=4, seed=0,
                              tokenizer_file=pipeline.tokenizer_path(dc))
  batches = [batch for batch, _ in zip(ds, range(4))]  # 16 good clips = two passes
  counts = dict(zip(faults.COUNTED, sum(b['data_faults'].sum(axis=0) for b in batches)))
  # Every corrupt clip of the first pass, maybe some of the second; each by its kind.
  assert 2 <= counts['corrupt_video'] <= 4 and 1 <= counts['empty_video'] <= 2, counts
  assert sum(counts.values()) == counts['corrupt_video'] + counts['empty_video']
  for batch in batches:
    assert (batch['video'].reshape(4, -1).std(axis=1) > 0.1).all()  # nothing zero-filled


def naive_resize_crop(frames, box, size):
  top, left, box_h, box_w = box
  t, h, w, c = frames.shape
  out = np.zeros((t, size, size, c), np.float32)
  for i in range(size):
    for j in range(size):
      y = min(max(top + (i + 0.5) * box_h / size - 0.5, 0), h - 1)
      x = min(max(left + (j + 0.5) * box_w / size - 0.5, 0), w - 1)
      y0, x0 = int(np.floor(y)), int(np.floor(x))
      y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
      fy, fx = y - y0, x - x0
      out[:, i, j] = ((1 - fy) * ((1 - fx) * frames[:, y0, x0] + fx * frames[:, y0, x1])
                      + fy * ((1 - fx) * frames[:, y1, x0] + fx * frames[:, y1, x1]))
  return out


@pytest.mark.parametrize('box,size', [((1.3, 2.2, 27.5, 28.1), 32), ((0, 0, 32, 32), 16),
                                      ((4, 0, 24, 32), 20)])
def test_resize_crop_is_bilinear(box, size):
  frames = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3)).astype(np.uint8)
  np.testing.assert_allclose(pipeline.resize_crop(frames, box, size),
                             naive_resize_crop(frames.astype(np.float32), box, size), atol=1e-3)
  # The identity box at the same size returns the frames unchanged.
  np.testing.assert_allclose(pipeline.resize_crop(frames, (0, 0, 32, 32), 32), frames, atol=1e-3)
