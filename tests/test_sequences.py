"""World-model sequence data: document layout in both orders, loss weights, needle documents,
first-fit packing (segments, restarting positions, padding without loss), caption parsing."""

import grain
import ml_collections
import numpy as np
import pytest

from vidlang_jax.data import caption_tokenizer as tokenizer_lib
from vidlang_jax.data import moving_shapes, sequences
from vidlang_jax.data.moving_shapes import parse_caption

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
  doc = sequences.needle_document(VOCAB, filler, 100, [(40, value)], [depth], [0])
  ids = np.concatenate([doc['inputs'], doc['targets'][-1:]])
  assert len(ids) == 100
  fact = VOCAB.special('fact')
  where = np.flatnonzero(ids == fact)
  assert len(where) == 2 and where[1] == 96  # <fact> key v1 v2 at the end
  np.testing.assert_array_equal(ids[where[0] + 1:where[0] + 4], [40, 7, 9])
  np.testing.assert_array_equal(ids[-3:], [40, 7, 9])
  assert abs(where[0] - depth * (100 - 8)) <= 1
  assert np.flatnonzero(doc['weights']).tolist() == [97, 98]  # only the answer is trained


def test_needle_document_with_several_facts_asks_each():
  filler = [np.array([2, 20, 21, 22, 3])]
  facts = [(40, np.array([7, 9])), (41, np.array([8, 10])), (42, np.array([11, 12]))]
  doc = sequences.needle_document(VOCAB, filler, 60, facts, [0.9, 0.1, 0.5], [2, 0, 1])
  ids = np.concatenate([doc['inputs'], doc['targets'][-1:]])
  assert len(ids) == 60
  fact = VOCAB.special('fact')
  where = np.flatnonzero(ids == fact)
  # Hidden in depth order (keys 41, 42, 40), then asked in the given order (42, 40, 41).
  assert [ids[i + 1] for i in where] == [41, 42, 40, 42, 40, 41]
  trained = np.flatnonzero(doc['weights'])
  # Each trained target is an answer token, right after its question.
  np.testing.assert_array_equal(doc['targets'][trained], [11, 12, 7, 9, 8, 10])
  for start in where[3:]:
    assert ids[start + 2:start + 4].tolist() == facts[[f[0] for f in facts].index(
        ids[start + 1])][1].tolist()
  with pytest.raises(ValueError, match='no room for filler'):
    sequences.needle_document(VOCAB, filler, 24, facts, [0.1, 0.5, 0.9], [0, 1, 2])


def caption_tokenizer(tmp_path):
  captions = ['a red circle moves left', 'a small blue square sits still']
  path = str(tmp_path / 'tokenizer.json')
  return tokenizer_lib.train_tokenizer(captions * 4, path, vocab_size=64), path, captions


def test_random_needle_document_answers_match_the_facts(tmp_path):
  tokenizer, _, captions = caption_tokenizer(tmp_path)
  doc, answers = sequences.random_needle_document(
      VOCAB, tokenizer, captions, np.random.default_rng(0), 200, num_facts=3)
  assert len(doc['inputs']) == 199 and answers.shape == (3, 2)
  np.testing.assert_array_equal(doc['targets'][doc['weights'] > 0], answers.reshape(-1))
  assert (answers >= sequences.FIRST_PLAIN_TEXT_ID).all()
  # Each key occurs twice (fact and question), right after <fact>, and never in the filler
  # (the captions use 13 of the 60 plain ids: random keys would hit them often).
  fact = VOCAB.special('fact')
  for seed in range(20):
    doc, answers = sequences.random_needle_document(
        VOCAB, tokenizer, captions, np.random.default_rng(seed), 200, num_facts=3)
    tokens = np.append(doc['inputs'], doc['targets'][-1])
    keys = tokens[1:][tokens[:-1] == fact]
    assert len(keys) == 6 and len(set(keys.tolist())) == 3
    for key in keys:
      assert (tokens == key).sum() == 2 + 2 * (answers == key).sum()  # values: fact + answer


def test_edge_fraction_puts_facts_first_or_right_before_the_questions(tmp_path):
  tokenizer, _, captions = caption_tokenizer(tmp_path)
  fact = VOCAB.special('fact')
  for seed in range(10):
    doc, _ = sequences.random_needle_document(
        VOCAB, tokenizer, captions, np.random.default_rng(seed), 100, edge_fraction=1.0)
    tokens = np.append(doc['inputs'], doc['targets'][-1])
    # One fact `<fact> k v1 v2`, one question `<fact> k`, one answer: 4 + 2 + 2 tokens.
    assert tokens[0] == fact or tokens[-8] == fact, tokens
  # With several facts, one at depth 1 is asked first: it sits right before its question.
  ends = 0
  for seed in range(20):
    doc, answers = sequences.random_needle_document(
        VOCAB, tokenizer, captions, np.random.default_rng(seed), 100, num_facts=3,
        edge_fraction=1.0)
    tokens = np.append(doc['inputs'], doc['targets'][-1])
    questions = len(tokens) - 3 * 4  # 3 questions `<fact> k v1 v2`
    if tokens[questions - 4] == fact:  # a fact ends the filler
      ends += 1
      np.testing.assert_array_equal(tokens[questions - 4:questions],
                                    tokens[questions:questions + 4])
  assert ends > 10


def test_needle_max_length_follows_the_schedule():
  schedule = ((100, 128), (300, 512))
  lengths = [sequences.needle_max_length(s, 1024, schedule) for s in (0, 99, 100, 299, 300)]
  assert lengths == [128, 128, 512, 512, 1024]
  assert sequences.needle_max_length(0, 1024) == 1024
  assert sequences.needle_max_length(0, 64, schedule) == 64  # never above the row's maximum


def test_needle_rows_are_full_rows_of_whole_haystacks_following_the_schedule(tmp_path):
  _, path, captions = caption_tokenizer(tmp_path)
  make_row = sequences.NeedleRow(
      VOCAB, path, captions, row_length=512, rows_per_step=2, min_length=32, max_length=512,
      max_length_schedule=((3, 64),), num_facts=2)
  longest = {}
  for index in range(12):
    row = make_row.random_map(index, np.random.default_rng(index))
    assert all(len(v) == 512 for v in row.values())
    segments = row['segment_ids']
    pad = segments == 0
    assert pad.sum() < 32 and not pad[:-pad.sum() or None].any()  # padding only at the end
    assert (row['weights'][pad] == 0).all()
    lengths = []
    for segment in np.unique(segments[~pad]):
      where = segments == segment
      assert (row['positions'][where] == np.arange(where.sum())).all()
      # Loss only on the answers: 2 value ids after each question `<fact> key`.
      assert row['weights'][where].sum() in (2, 4)
      lengths.append(where.sum() + 1)  # a document of n tokens is n - 1 next-token pairs
    longest[index // 2] = max(longest.get(index // 2, 0), max(lengths))
  assert all(longest[step] <= 64 for step in range(3))  # rows 0-5: steps 0-2
  assert max(longest[step] for step in range(3, 6)) > 64


def test_needle_rows_per_batch():
  config = ml_collections.ConfigDict(dict(lm=dict(needle_fraction=0.25)))
  assert sequences.needle_rows_per_batch(config, 8) == 2
  config.lm.needle_fraction = 0.01
  assert sequences.needle_rows_per_batch(config, 8) == 1  # some needle rows were asked for
  config.lm.needle_fraction = 0.0
  assert sequences.needle_rows_per_batch(config, 8) == 0
  config.lm.needle_fraction = 1.5
  with pytest.raises(ValueError, match='needle_fraction'):
    sequences.needle_rows_per_batch(config, 8)


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
      seen.append(tuple(tuple(row[k][where].tolist()) for k in sequences.DOCUMENT_KEYS))
  # Every document's inputs, targets, loss weights and modality, each once and unchanged.
  assert sorted(seen) == sorted(tuple(tuple(d[k].tolist()) for k in sequences.DOCUMENT_KEYS)
                                for d in docs)


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
