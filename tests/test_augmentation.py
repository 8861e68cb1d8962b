"""Train-time augmentation applies the choices it draws: a frame stride from `data.strides`, a
start inside the clip, and one crop box (of `data.crop_scale` of the frame's largest square,
near-square) for every frame; evaluation takes evenly spaced frames from the start and the
centre square.

The clips are built so that the output says what was taken: every frame a flat grey level that
encodes its index, or a grey ramp down the rows (across the columns) that encodes position.
Bilinear resizing keeps a ramp a ramp, so a line fit to the output gives the box's top and
height (left and width). Decoded with the same seed, the three clips get the same draws.
"""

import numpy as np
import pytest

from vidlang_jax import pixels
from vidlang_jax.data import pipeline, video

from helpers import tiny_config

LENGTH, HEIGHT, WIDTH = 24, 32, 48  # not square: a height / width mix-up shows
NUM_FRAMES, SIZE = 8, 16
STEP = {'frames': 10, 'rows': 7, 'cols': 5}  # grey levels per frame / row / column, from 10


@pytest.fixture(scope='module')
def clips():
  """{'frames' | 'rows' | 'cols': mp4 bytes} of LENGTH frames of HEIGHT x WIDTH."""
  t, r, c = np.meshgrid(np.arange(LENGTH), np.arange(HEIGHT), np.arange(WIDTH), indexing='ij')
  index = {'frames': t, 'rows': r, 'cols': c}
  return {kind: video.encode_mp4(np.repeat(10 + STEP[kind] * index[kind][..., None], 3,
                                           axis=-1).astype(np.uint8))
          for kind in STEP}


def grey(out_video):
  """The pipeline's normalised `[time, size, size, 3]` -> grey levels 0..255 `[time, s, s]`."""
  return (np.asarray(pixels.pixels_01(np.asarray(out_video))) * 255).mean(axis=-1)


def frames_taken(levels):
  """Clip frame index of every output frame of the 'frames' clip."""
  return np.round((levels.mean(axis=(1, 2)) - 10) / STEP['frames']).astype(int)


def box_side(levels, kind):
  """(start, extent) of the box along rows or columns, fit to the 'rows' / 'cols' clip's ramp:
  output pixel i samples `start + (i + 0.5) * extent / SIZE - 0.5` (clipped to the frame)."""
  profile = levels.mean(axis=(0, 2) if kind == 'rows' else (0, 1))
  centres = (profile - 10) / STEP[kind]
  limit = HEIGHT if kind == 'rows' else WIDTH
  inside = (centres > 0.5) & (centres < limit - 1.5)  # not clipped at the frame's edges
  slope, intercept = np.polyfit(np.arange(SIZE)[inside], centres[inside], 1)
  return intercept + 0.5 - 0.5 * slope, slope * SIZE


def decode(mp4, seed, train=True, **kwargs):
  decoder = pipeline.DecodeVideo(NUM_FRAMES, SIZE, train=train, **kwargs)
  return grey(decoder.random_map({'video': mp4, 'video_id': b'clip'},
                                 np.random.default_rng(seed))['video'])


def test_train_crops_and_samples_what_it_draws(clips, monkeypatch):
  drawn = []
  real_random_box = pipeline.random_box

  def spy(*args, **kwargs):
    drawn.append(real_random_box(*args, **kwargs))
    return drawn[-1]

  monkeypatch.setattr(pipeline, 'random_box', spy)
  strides, offsets, tops, lefts = set(), set(), set(), set()
  for seed in range(12):
    drawn.clear()
    taken = frames_taken(decode(clips['frames'], seed, strides=(1, 2)))
    stride, offset = taken[1] - taken[0], taken[0]
    np.testing.assert_array_equal(taken, offset + stride * np.arange(NUM_FRAMES))
    assert stride in (1, 2) and 0 <= offset < LENGTH - stride * (NUM_FRAMES - 1), taken
    top, box_h = box_side(decode(clips['rows'], seed, strides=(1, 2)), 'rows')
    left, box_w = box_side(decode(clips['cols'], seed, strides=(1, 2)), 'cols')
    # The box applied is the box drawn (the same for the three clips: the same draws).
    assert len(drawn) == 3 and drawn[0] == drawn[1] == drawn[2]
    np.testing.assert_allclose((top, left, box_h, box_w), drawn[0], atol=0.3)
    # A box inside the frame, 0.8-1.0 of the largest square's area, aspect 0.9-1.1.
    assert -0.3 < top and top + box_h < HEIGHT + 0.3, (top, box_h)
    assert -0.3 < left and left + box_w < WIDTH + 0.3, (left, box_w)
    assert 0.8 - 0.03 < box_h * box_w / HEIGHT**2 < 1.0 + 0.03
    assert 0.9 - 0.03 < box_w / box_h < 1.1 + 0.03
    strides.add(stride), offsets.add(offset), tops.add(round(top)), lefts.add(round(left))
  # The draws vary from clip to clip (not the centre crop, not always the first frames).
  assert strides == {1, 2} and len(offsets) >= 5, (strides, offsets)
  assert len(tops) >= 2 and len(lefts) >= 4, (tops, lefts)


def test_train_boxes_vary_on_frames_that_are_not_square():
  """On a 32x48 frame the box must be able to move across the width."""
  rng = np.random.default_rng(0)
  boxes = np.array([pipeline.random_box(rng, HEIGHT, WIDTH, (0.8, 1.0), (0.9, 1.1))
                    for _ in range(50)])
  centre = pipeline.center_box(HEIGHT, WIDTH)
  assert (np.abs(boxes - centre).max(axis=1) > 1).mean() > 0.9
  assert boxes[:, 1].min() < 4 and boxes[:, 1].max() > 12  # left: from near 0 to near 16


def test_eval_takes_evenly_spaced_frames_and_the_centre(clips):
  np.testing.assert_array_equal(frames_taken(decode(clips['frames'], 0, train=False)),
                                3 * np.arange(NUM_FRAMES))  # stride LENGTH // NUM_FRAMES
  top, box_h = box_side(decode(clips['rows'], 0, train=False), 'rows')
  left, box_w = box_side(decode(clips['cols'], 0, train=False), 'cols')
  np.testing.assert_allclose((top, left, box_h, box_w), (0, 8, 32, 32), atol=0.3)


def test_train_pipeline_takes_strides_and_crop_scale_from_the_config(clips, tiny_data_dir):
  """`data.strides` and `data.crop_scale` reach the decoder of the training pipeline."""
  config = tiny_config()
  config.data.update(name='moving_shapes/tiny', data_dir=tiny_data_dir, num_workers=0,
                     num_frames=NUM_FRAMES, image_size=SIZE, strides=(3,),
                     crop_scale=(0.5, 0.6))
  records = [dict(video=clips[kind], caption=b'a clip', video_id=kind.encode())
             for kind in ('frames', 'rows', 'cols')]
  ds = pipeline.train_dataset(records, config.data, global_batch_size=1, seed=0,
                              tokenizer_file=pipeline.tokenizer_path(config.data))
  seen = set()
  for batch, _ in zip(ds, range(12)):  # 4 passes over the 3 clips, reshuffled each pass
    levels = grey(batch['video'][0])
    if np.ptp(levels.mean(axis=(1, 2))) > 20:  # the 'frames' clip
      taken = frames_taken(levels)
      np.testing.assert_array_equal(np.diff(taken), 3)
      assert 0 <= taken[0] < LENGTH - 3 * (NUM_FRAMES - 1)
      seen.add('frames')
    else:
      by_row, by_col = levels.mean(axis=(0, 2)), levels.mean(axis=(0, 1))
      kind = 'rows' if np.ptp(by_row) > np.ptp(by_col) else 'cols'
      _, extent = box_side(levels, kind)
      # sqrt(area / aspect) or sqrt(area * aspect), area 0.5-0.6 of 32 x 32, aspect 0.9-1.1
      assert np.sqrt(0.5 * 32**2 / 1.1) - 0.3 < extent < np.sqrt(0.6 * 32**2 * 1.1) + 0.3, extent
      seen.add(kind)
  assert seen == {'frames', 'rows', 'cols'}
