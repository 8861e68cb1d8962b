"""Tests for vidlang_jax.data: codec, moving_shapes, video_text_folder, tokenizer, builders."""

import json
import os
import re

import numpy as np
import pytest

from vidlang_jax.data import builders, video
from vidlang_jax.data import caption_tokenizer as tok
from vidlang_jax.data import moving_shapes as ms
from vidlang_jax.data import video_text_folder as vtf


def _tiny(seed=0, **kw):
  kw = dict(name='unit_test', num_frames=16, height=32, width=32, num_train=24, num_validation=8,
            num_test=16, seed=seed, **kw)
  return ms.MovingShapesConfig(**kw)


def _records(builder, split):
  return {r['video_id'].decode(): r for r in builder.as_data_source(split=split)}


@pytest.fixture(scope='module')
def tiny_build(tmp_path_factory):
  builder = builders.prepare('moving_shapes', str(tmp_path_factory.mktemp('a')), config=_tiny())
  return builder


# --- video codec -------------------------------------------------------------------------------


def _ramp(t=16, h=32, w=32):
  """Frame k is flat grey 10 + 15 k: each frame identifiable by its mean."""
  return np.broadcast_to((10 + 15 * np.arange(t, dtype=np.uint8))[:, None, None, None],
                         (t, h, w, 3)).copy()


@pytest.mark.parametrize('size', [32, 64])
def test_roundtrip_rendered_clip(size):
  scene = ms.sample_scene(np.random.default_rng(1), size, size)
  frames = ms.render(scene, 16, size, size)
  data = video.encode_mp4(frames)
  assert data[4:8] == b'ftyp'  # A real mp4 container.
  out = video.decode_mp4(data)
  assert out.shape == (16, size, size, 3) and out.dtype == np.uint8
  assert np.abs(out.astype(int) - frames).mean() < 8
  assert video.video_num_frames(data) == 16


def test_encode_deterministic():
  # x264's mbtree made bytes depend on what was encoded before; datasets must be reproducible.
  clips = [ms.render(ms.sample_scene(np.random.default_rng(i), 32, 32), 16, 32, 32)
           for i in range(40)]
  forward = [video.encode_mp4(c) for c in clips]
  backward = [video.encode_mp4(c) for c in clips[::-1]][::-1]
  assert forward == backward


def test_decode_sampling_and_padding():
  frames = _ramp()
  data = video.encode_mp4(frames)
  means = lambda x: np.round((x.mean(axis=(1, 2, 3)) - 10) / 15).astype(int).tolist()
  assert means(video.decode_mp4(data)) == list(range(16))
  assert means(video.decode_mp4(data, num_frames=4, stride=3, offset=1)) == [1, 4, 7, 10]
  assert means(video.decode_mp4(data, num_frames=2)) == [0, 1]
  # Past the end: the last frame repeats.
  assert means(video.decode_mp4(data, num_frames=5, offset=13)) == [13, 14, 15, 15, 15]
  assert means(video.decode_mp4(data, num_frames=4, stride=6)) == [0, 6, 12, 15]
  assert video.decode_mp4(data, num_frames=3, resize=(16, 8)).shape == (3, 16, 8, 3)


def test_corrupt_bytes_raise():
  data = video.encode_mp4(_ramp())
  for bad in [b'', b'not a video at all' * 20, data[:len(data) // 2], data[:64],
              np.random.default_rng(0).bytes(4000)]:
    with pytest.raises(video.VideoDecodeError):
      video.decode_mp4(bad)
  with pytest.raises(ValueError):  # VideoDecodeError is a ValueError.
    video.video_num_frames(b'\x00' * 100)


def test_odd_size_rejected():
  with pytest.raises(ValueError, match='33'):
    video.encode_mp4(np.zeros((4, 33, 32, 3), np.uint8))


# --- moving_shapes ---------------------------------------------------------------------------


def test_generate_example_deterministic():
  a, b = ms.generate_example(5, 11), ms.generate_example(5, 11)
  assert a == b
  c = ms.generate_example(5, 12)
  assert c['video'] != a['video']


def test_build_deterministic_across_dirs(tiny_build, tmp_path):
  other = builders.prepare('moving_shapes', str(tmp_path), config=_tiny())
  for split, n in [('train', 24), ('validation', 8), ('test', 16)]:
    a, b = _records(tiny_build, split), _records(other, split)
    assert len(a) == n and sorted(a) == sorted(b)
    for vid in a:
      assert a[vid]['video'] == b[vid]['video'] and a[vid]['caption'] == b[vid]['caption']
      assert a[vid]['shape_label'] == b[vid]['shape_label']
  # A different seed gives a different dataset.
  third = builders.prepare('moving_shapes', str(tmp_path / 'c'), config=_tiny(seed=1))
  assert ({r['caption'] for r in _records(third, 'train').values()}
          != {r['caption'] for r in _records(tiny_build, 'train').values()})


def test_built_records_decode_and_match_generator(tiny_build):
  records = _records(tiny_build, 'test')
  vid, record = sorted(records.items())[0]
  split, index = vid.split('/')
  expected = ms.generate_example(0 + 2, int(index), 16, 32, 32)  # test uses seed + 2.
  assert split == 'test' and record['video'] == expected['video']
  assert record['caption'].decode() == expected['caption']
  assert video.decode_mp4(record['video']).shape == (16, 32, 32, 3)


def test_eval_splits_have_distinct_scenes(tiny_build):
  for split in ('validation', 'test'):
    captions = [r['caption'] for r in _records(tiny_build, split).values()]
    assert len(set(captions)) == len(captions)
  # At full size too (cheap: scenes only, no rendering): ≥ 1000 distinct test scenes.
  config = ms.MovingShapes.builder_configs['default']
  indices = ms.split_indices(config, 'test')
  keys = {ms.scene_key(ms.sample_scene(np.random.default_rng([config.seed + 2, i])))
          for i in indices}
  assert len(indices) == config.num_test >= 1000 and len(keys) == len(indices)
  assert indices[-1] >= len(indices)  # Duplicates were really skipped.


def test_labels_match_caption():
  seen_templates = set()
  for index in range(400):
    example = ms.generate_example(0, index) if index < 5 else None
    rng = np.random.default_rng([0, index])
    scene = ms.sample_scene(rng)
    caption = ms.describe(scene, rng)
    if example:
      assert example['caption'] == caption
      assert example['shape_label'] == scene[0].shape
    main = scene[0]
    assert 0 <= main.shape < len(ms.SHAPES) and 0 <= main.colour < len(ms.COLOURS)
    assert 0 <= main.size < len(ms.SIZES) and 0 <= main.motion < len(ms.MOTIONS)
    assert 1 <= len(scene) <= 3
    assert len({(o.shape, o.colour) for o in scene}) == len(scene)
    words = re.findall(r'[a-z]+', caption)
    colours = [w for w in words if w in ms.COLOURS]
    shapes = [w for w in words if w in ms.SHAPES]
    # Every object is named, the main object first.
    assert len(colours) == len(shapes) == len(scene)
    assert colours[0] == ms.COLOURS[main.colour] and shapes[0] == ms.SHAPES[main.shape]
    size_words = {'small': {'small', 'little'}, 'large': {'large', 'big'}}[ms.SIZES[main.size]]
    assert size_words & set(words)
    prefix = re.match(r'(on the screen|we see|a video of|there is|)', caption).group(1)
    seen_templates.add((prefix, ' while ' in caption, caption.endswith('.')))
  assert len(seen_templates) >= 6  # Paraphrases really vary.


def test_rotate_never_for_circle_but_used():
  rotating = set()
  for index in range(3000):
    for obj in ms.sample_scene(np.random.default_rng([9, index])):
      if ms.MOTIONS[obj.motion] == 'rotate':
        rotating.add(ms.SHAPES[obj.shape])
  assert 'circle' not in rotating and len(rotating) == len(ms.SHAPES) - 1


def _obj(shape, motion, **kw):
  return ms.SceneObject(ms.SHAPES.index(shape), 0, 1, ms.MOTIONS.index(motion),
                        **{'x': 0.5, 'y': 0.5, 'radius': 0.17, **kw})


def test_motions_are_visible():
  def centroid_and_area(frames):
    mask = frames.max(-1) > 127  # [time, height, width]
    ys, xs = np.mgrid[:frames.shape[1], :frames.shape[2]]
    area = mask.sum((1, 2))
    return (mask * xs).sum((1, 2)) / area, (mask * ys).sum((1, 2)) / area, area

  x, y, _ = centroid_and_area(ms.render([_obj('square', 'right', x=0.25, dx=0.5)]))
  assert x[-1] - x[0] > 0.4 * 64 and abs(y[-1] - y[0]) < 1
  _, _, area = centroid_and_area(ms.render([_obj('star', 'grow', scale=(0.7, 1.4))]))
  assert area[-1] > 3 * area[0]
  mask = ms.render([_obj('cross', 'rotate', spin=np.pi / 4)]).max(-1) > 127
  assert (mask[0] ^ mask[-1]).sum() > 0.5 * mask[0].sum()  # A '+' became an 'x'.
  frames = ms.render([_obj('circle', 'stay')])
  assert np.array_equal(frames[0], frames[-1]) and frames[0, 32, 32, 0] > 200


def test_objects_stay_inside_frame():
  for index in range(300):
    scene = ms.sample_scene(np.random.default_rng([4, index]))
    frames = ms.render(scene, 16, 32, 32)
    border = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], 1)
    assert (border.max(-1) > 128).mean() < 0.02, ms.scene_key(scene)


# --- tokenizer -----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def trained_tokenizer(tmp_path_factory):
  texts = [ms.describe(ms.sample_scene(rng), rng)
           for rng in (np.random.default_rng([0, i]) for i in range(300))]
  path = str(tmp_path_factory.mktemp('tok') / 'sub' / 'tokenizer.json')
  return tok.train_tokenizer(texts, path, vocab_size=300), path


def test_tokenizer_special_ids_and_layout(trained_tokenizer):
  tokenizer, _ = trained_tokenizer
  assert tok.PAD_ID == 0 and tokenizer.token_to_id('[PAD]') == 0
  assert [tokenizer.token_to_id(t) for t in ('[UNK]', '[BOS]', '[EOS]')] == [1, 2, 3]
  ids = tok.tokenize(tokenizer, ['A small RED circle moves left.', ''], max_len=12)
  assert ids.dtype == np.int32 and ids.shape == (2, 12)
  row = ids[0].tolist()
  assert row[0] == tok.BOS_ID and row[8] == tok.EOS_ID and row[9:] == [tok.PAD_ID] * 3
  words = [tokenizer.id_to_token(i) for i in row[1:8]]
  assert words == ['a', 'small', 'red', 'circle', 'moves', 'left', '.']
  assert tokenizer.decode(row[1:8]) == 'a small red circle moves left.'
  assert ids[1].tolist()[:3] == [tok.BOS_ID, tok.EOS_ID, 0]


def test_tokenizer_truncation_keeps_eos(trained_tokenizer):
  tokenizer, _ = trained_tokenizer
  long = ' '.join(['a big blue square moves left'] * 10)
  ids = tok.tokenize(tokenizer, [long], max_len=8)[0]
  assert ids[0] == tok.BOS_ID and ids[-1] == tok.EOS_ID and tok.PAD_ID not in ids
  assert tokenizer.id_to_token(int(ids[1])) == 'a'


def test_tokenizer_save_reload(trained_tokenizer):
  tokenizer, path = trained_tokenizer
  texts = ['a little cyan star spins while a big white cross falls', 'zebra!']
  reloaded = tok.load_tokenizer(path)
  np.testing.assert_array_equal(tok.tokenize(tokenizer, texts, 16),
                                tok.tokenize(reloaded, texts, 16))
  assert tok.UNK_ID in tok.tokenize(reloaded, ['zebra'], 4)[0]


# --- video_text_folder ----------------------------------------------------------------------


def _make_folder(root, fmt):
  """Five good clips (one with two captions), one corrupt file, one missing path."""
  os.makedirs(root / 'clips')
  rows = []
  for i in range(5):
    frames = ms.render(ms.sample_scene(np.random.default_rng(i), 32, 48), 12, 32, 48)
    (root / 'clips' / f'v{i}.mp4').write_bytes(video.encode_mp4(frames))
    rows.append((f'clips/v{i}.mp4', f'caption number {i}'))
  rows.append(('clips/v0.mp4', 'another caption of v0'))
  (root / 'clips' / 'broken.mp4').write_bytes(b'\x00\x00\x00\x18ftypmp42' + b'x' * 500)
  rows += [('clips/broken.mp4', 'corrupt'), ('clips/gone.mp4', 'missing')]
  if fmt == 'csv':
    text = 'path,caption\n' + ''.join(f'{p},"{c}"\n' for p, c in rows)
    (root / 'captions.csv').write_text(text)
  else:
    text = ''.join(json.dumps({'path': p, 'caption': c}) + '\n' for p, c in rows)
    (root / 'captions.jsonl').write_text(text)


def _all_records(builder):
  return {vid: r for s in builder.info.splits for vid, r in _records(builder, s).items()}


def test_video_text_folder_csv(tmp_path, capsys):
  _make_folder(tmp_path / 'src', 'csv')
  kw = dict(source_dir=str(tmp_path / 'src'))
  builder = builders.prepare('video_text_folder', str(tmp_path / 'data'), **kw)
  summary = builder.build_summary
  assert sum(summary['examples'].values()) == 6 and summary['num_skipped'] == 2
  reasons = {s['path']: s['reason'] for s in summary['skipped']}
  assert 'missing' in reasons['clips/gone.mp4'] and 'decode' in reasons['clips/broken.mp4']
  assert 'skipped 2' in capsys.readouterr().out
  records = _all_records(builder)
  assert sorted(records) == sorted(
      [f'clips/v{i}.mp4' for i in range(5)] + ['clips/v0.mp4#1'])
  assert records['clips/v0.mp4#1']['caption'] == b'another caption of v0'
  original = (tmp_path / 'src' / 'clips' / 'v3.mp4').read_bytes()
  assert records['clips/v3.mp4']['video'] == original  # Stored as is.
  # Both captions of v0 land in the same split.
  split_of = {vid: s for s in builder.info.splits for vid in _records(builder, s)}
  assert split_of['clips/v0.mp4'] == split_of['clips/v0.mp4#1']
  # Reopened later (fresh builder, same arguments): same dir, summary from json.
  again = builders.prepare('video_text_folder', str(tmp_path / 'data'), **kw)
  assert again.data_dir == builder.data_dir and again.build_summary == summary
  assert os.path.exists(os.path.join(builder.data_dir, vtf.SUMMARY_FILE))


def test_video_text_folder_jsonl_reencode(tmp_path):
  _make_folder(tmp_path / 'src', 'jsonl')
  builder = builders.prepare('video_text_folder', str(tmp_path / 'data'),
                             source_dir=str(tmp_path / 'src'), resize=(16, 24), max_frames=4)
  assert builder.build_summary['num_skipped'] == 2
  records = _all_records(builder)
  assert len(records) == 6
  for record in records.values():
    assert video.decode_mp4(record['video']).shape == (4, 16, 24, 3)
  # A different source folder or setting never shares the data dir.
  plain = builders.get_builder('video_text_folder', str(tmp_path / 'data'),
                               source_dir=str(tmp_path / 'src'))
  assert plain.data_dir != builder.data_dir


def test_video_text_folder_annotation_errors(tmp_path):
  (tmp_path / 'src').mkdir()
  with pytest.raises(FileNotFoundError, match='captions.csv'):
    builders.prepare('video_text_folder', str(tmp_path / 'd1'), source_dir=str(tmp_path / 'src'))
  missing = str(tmp_path / 'nope.csv')
  with pytest.raises(FileNotFoundError, match='nope.csv'):
    builders.prepare('video_text_folder', str(tmp_path / 'd2'),
                     source_dir=str(tmp_path / 'src'), annotations=missing)
  (tmp_path / 'src' / 'captions.csv').write_text('file,text\na.mp4,hello\n')
  with pytest.raises(ValueError, match=r"captions.csv.*\['path', 'caption'\]"):
    builders.prepare('video_text_folder', str(tmp_path / 'd3'), source_dir=str(tmp_path / 'src'))


# --- builders ------------------------------------------------------------------------------


def test_default_data_dir(monkeypatch):
  monkeypatch.setenv('VIDLANG_DATA_DIR', '/some/where')
  assert builders.default_data_dir() == '/some/where'
  monkeypatch.delenv('VIDLANG_DATA_DIR')
  assert builders.default_data_dir().endswith(os.path.join('vidlang_jax', 'datasets'))


def test_get_builder_names(tmp_path):
  small = builders.get_builder('moving_shapes/small', str(tmp_path))
  assert small.builder_config.height == 32 and not small.is_prepared()
  assert builders.get_builder('moving_shapes', str(tmp_path)).builder_config.name == 'default'
  from vidlang_jax import registry
  assert registry._REGISTRY['dataset.moving_shapes'] is ms.MovingShapes


def test_data_source_and_tokenizer_for(tiny_build):
  source = builders.data_source('moving_shapes', 'validation',
                                data_dir=os.path.dirname(os.path.dirname(os.path.dirname(
                                    tiny_build.data_dir))), config=_tiny())
  assert len(source) == 8 and isinstance(source[0]['caption'], bytes)
  tokenizer = builders.tokenizer_for(tiny_build, vocab_size=200)
  path = os.path.join(tiny_build.data_dir, 'tokenizer.json')
  assert os.path.exists(path) and tokenizer.get_vocab_size() <= 200
  caption = source[0]['caption'].decode()
  ids = tok.tokenize(tokenizer, [caption], 40)[0]
  assert tok.UNK_ID not in ids.tolist()  # Trained on these captions.
  again = builders.tokenizer_for(tiny_build, vocab_size=200)
  assert again.get_vocab() == tokenizer.get_vocab()
  smaller = builders.tokenizer_for(tiny_build, vocab_size=tokenizer.get_vocab_size() - 10)
  assert smaller.get_vocab_size() <= tokenizer.get_vocab_size() - 10  # Ids fit the model.
