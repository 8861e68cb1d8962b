"""World-model sequence data: document layout in both orders, loss weights, needle documents,
first-fit packing (segments, restarting positions, padding without loss), caption parsing."""

import grain
import numpy as np
import pytest

from vidlang_jax.data import moving_shapes, sequences
from vidlang_jax.evaluators.world_model import parse_caption

VOCAB = sequences.Vocabulary(text_size=50, num_codes=20)


def clip(frames=3, side=2, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, VOCAB.num_codes, (frames, side, side)), np.array([2, 11, 12, 13, 3])


def test_video_part_layout():
  tokens, _ = clip()
  ids = sequences.video_part(VOCAB, tokens)
  assert ids[0] == VOCAB.special('vision_start') and ids[-1] == VOCAB.special('vision_end')
  frames = ids[1:-1].reshape(3, 5)  # 4 codes + one end marker per frame
  np.testing.assert_array_equal(frames[:, :4], tokens.reshape(3, 4) + VOCAB.video_offset)
  assert list(frames[:, 4]) == [VOCAB.special('end_of_frame')] * 2 + [
      VOCAB.special('end_of_video')]
  assert VOCAB.is_video(frames[:, :4]).all() and not VOCAB.is_video(frames[:, 4]).any()


@pytest.mark.parametrize('order', sequences.ORDERS)
def test_clip_document_orders_and_weights(order):
  tokens, text = clip()
  doc = sequences.clip_document(VOCAB, tokens, text, order, text_weight=1.0, video_weight=0.5)
  video = sequences.video_part(VOCAB, tokens)
  full = np.concatenate([video, text] if order == 'video_text' else [text, video])
  np.testing.assert_array_equal(doc['inputs'], full[:-1])
  np.testing.assert_array_equal(doc['targets'], full[1:])
  condition = len(video) if order == 'video_text' else len(text)
  # Targets inside the condition carry no loss; the rest carry their modality's weight.
  assert (doc['weights'][:condition - 1] == 0).all()
  expected = (1.0, sequences.TEXT) if order == 'video_text' else (0.5, sequences.VIDEO)
  assert (doc['weights'][condition - 1:] == expected[0]).all()
  assert (doc['modality'][condition - 1:] == expected[1]).all()


def test_condition_weight_trains_the_condition_too():
  tokens, text = clip()
  doc = sequences.clip_document(VOCAB, tokens, text, 'video_text', condition_weight=0.1)
  assert np.allclose(doc['weights'][:len(sequences.video_part(VOCAB, tokens)) - 1], 0.1)


@pytest.mark.parametrize('depth', [0.0, 0.5, 1.0])
def test_needle_document(depth):
  filler = [np.array([2, 20, 21, 22, 3]), np.array([2, 30, 31, 3])]
  value = np.array([7, 9])
  doc = sequences.needle_document(VOCAB, filler, 100, depth, value)
  ids = np.concatenate([doc['inputs'], doc['targets'][-1:]])
  assert len(ids) == 100
  fact = VOCAB.special('fact')
  where = np.flatnonzero(ids == fact)
  assert len(where) == 2 and where[1] == 97  # <fact> v1 v2 at the end
  np.testing.assert_array_equal(ids[where[0] + 1:where[0] + 3], value)
  np.testing.assert_array_equal(ids[-2:], value)
  assert abs(where[0] - depth * (100 - 6)) <= 1
  assert np.flatnonzero(doc['weights']).tolist() == [97, 98]  # only the answer is trained


def test_packing_keeps_documents_whole_and_separate():
  tokens, text = clip()
  docs = [sequences.clip_document(VOCAB, tokens[:n], text, order)
          for n in (1, 2, 3, 1, 2) for order in sequences.ORDERS]
  ds = grain.MapDataset.source(docs).to_iter_dataset()
  rows = list(sequences.packed_dataset(ds, 48, num_bins=2, seed=0))
  seen = []
  for row in rows:
    assert all(len(v) == 48 for v in row.values())
    pad = row['segment_ids'] == 0
    assert (row['weights'][pad] == 0).all()
    for segment in np.unique(row['segment_ids'][~pad]):
      where = row['segment_ids'] == segment
      assert (row['positions'][where] == np.arange(where.sum())).all()  # restart per doc
      seen.append(tuple(row['inputs'][where]))
  assert sorted(seen) == sorted(tuple(d['inputs']) for d in docs)


def test_too_long_document_names_the_setting():
  tokens, text = clip(frames=8, side=4)
  ds = grain.MapDataset.source([sequences.clip_document(VOCAB, tokens, text, 'video_text')])
  with pytest.raises(ValueError, match='sequence_length'):
    list(sequences.packed_dataset(ds.to_iter_dataset(), 64, num_bins=1, seed=0))


def test_parse_caption_recovers_the_labels_of_the_first_object():
  rng = np.random.default_rng(0)
  for _ in range(300):
    scene = moving_shapes.sample_scene(rng, 32, 32)
    parsed = parse_caption(moving_shapes.describe(scene, rng))
    assert parsed == {'shape': scene[0].shape, 'colour': scene[0].colour,
                      'motion': scene[0].motion}
  assert parse_caption('a red') == {'shape': None, 'colour': 0, 'motion': None}
