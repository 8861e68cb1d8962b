"""Token sequences for the world model: (video tokens, caption) -> documents -> packed rows.

A document is a clip in one of two orders, as in LWM:
  captioning  (video -> text): <vision> f1 <eof> f2 <eof> ... fT <eov> </vision> [BOS] caption [EOS]
  generation  (text -> video): [BOS] caption [EOS] <vision> f1 <eof> ... fT <eov> </vision>
or a needle-in-a-haystack document: captions as filler, facts `<fact> key v1 v2` hidden at
random depths and questions `<fact> key` at the end, where the model must answer `v1 v2`.

Every document becomes next-token pairs (`inputs`, `targets`) with per-target `weights` (the
modality's loss weight; 0 on the conditioning part unless configured) and `modality` (0 text,
1 video), then grain's first-fit packing fills fixed-length rows, adding `segment_ids` (0 is
padding, which therefore carries no loss) and `positions` that restart in every document.
Needle documents fill their own rows (`NeedleRow`), a fixed share of every batch, so that
their haystack lengths can follow a schedule over training steps.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import grain
import jax
import ml_collections
import numpy as np

from vidlang_jax.data import caption_tokenizer as tokenizer_lib
from vidlang_jax.data import faults, pipeline
from vidlang_jax.sharding import batch_sharding

TEXT, VIDEO = 0, 1
SPECIALS = ('vision_start', 'vision_end', 'end_of_frame', 'end_of_video', 'fact')
ORDERS = ('video_text', 'text_video')
# Needle keys and values are drawn from the text ids after the special ones (PAD, UNK, BOS, EOS).
FIRST_PLAIN_TEXT_ID = len(tokenizer_lib.SPECIAL_TOKENS)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """One id space: text ids [0, text_size), video codes next, then the structural tokens."""

  text_size: int
  num_codes: int

  @property
  def video_offset(self) -> int:
    return self.text_size

  def special(self, name: str) -> int:
    return self.text_size + self.num_codes + SPECIALS.index(name)

  @property
  def size(self) -> int:
    return self.text_size + self.num_codes + len(SPECIALS)

  def is_video(self, ids: np.ndarray) -> np.ndarray:
    return (ids >= self.video_offset) & (ids < self.video_offset + self.num_codes)


def vocabulary(data_config: ml_collections.ConfigDict) -> Vocabulary:
  return Vocabulary(text_size=data_config.vocab_size, num_codes=data_config.num_codes)


def video_part(vocab: Vocabulary, video_tokens: np.ndarray) -> np.ndarray:
  """`[time, h, w]` codes -> <vision> frame <eof> ... frame <eov> </vision> (1D ids)."""
  frames = video_tokens.reshape(video_tokens.shape[0], -1) + vocab.video_offset
  ends = np.full((frames.shape[0], 1), vocab.special('end_of_frame'))
  ends[-1] = vocab.special('end_of_video')
  return np.concatenate([[vocab.special('vision_start')],
                         np.concatenate([frames, ends], axis=1).reshape(-1),
                         [vocab.special('vision_end')]]).astype(np.int32)


def frame_layout(vocab: Vocabulary, num_frames: int, tokens_per_frame: int) -> np.ndarray:
  """The video part's structure as ids, with -1 where a code goes (constrained generation)."""
  return video_part(vocab, np.full((num_frames, tokens_per_frame), -1 - vocab.video_offset))


def caption_ids(tokenizer, caption: str) -> np.ndarray:
  """[BOS] caption [EOS], unpadded."""
  return np.asarray([tokenizer_lib.BOS_ID, *tokenizer.encode(caption, add_special_tokens=False).ids,
                     tokenizer_lib.EOS_ID], np.int32)


def next_token_pairs(parts: Sequence[tuple[np.ndarray, int, float]]) -> dict[str, np.ndarray]:
  """Concatenated (ids, modality, weight) parts -> {'inputs', 'targets', 'weights', 'modality'}
  of length n - 1; each target carries the weight and modality of the part it belongs to."""
  ids = np.concatenate([p[0] for p in parts]).astype(np.int32)
  modality = np.concatenate([np.full(len(p[0]), p[1], np.int32) for p in parts])
  weights = np.concatenate([np.full(len(p[0]), p[2], np.float32) for p in parts])
  return {'inputs': ids[:-1], 'targets': ids[1:], 'weights': weights[1:],
          'modality': modality[1:]}


def clip_document(vocab: Vocabulary, video_tokens: np.ndarray, text: np.ndarray, order: str,
                  *, text_weight: float = 1.0, video_weight: float = 1.0,
                  condition_weight: float = 0.0) -> dict[str, np.ndarray]:
  """A clip in `order` ('video_text' = captioning, 'text_video' = generation); the first part
  is the condition and its tokens are weighted by `condition_weight` x their modality's."""
  video = (video_part(vocab, video_tokens), VIDEO, video_weight)
  caption = (text, TEXT, text_weight)
  if order == 'video_text':
    first, second = video, caption
  elif order == 'text_video':
    first, second = caption, video
  else:
    raise ValueError(f'order must be one of {ORDERS}, got {order!r}.')
  return next_token_pairs([(first[0], first[1], first[2] * condition_weight), second])


def needle_document(vocab: Vocabulary, filler: Sequence[np.ndarray], length: int,
                    facts: Sequence[tuple[int, np.ndarray]], depths: Sequence[float],
                    queries: Sequence[int], *, weight: float = 1.0) -> dict[str, np.ndarray]:
  """A haystack of exactly `length` tokens: filler text with the facts `<fact> key value`
  hidden at `depths` (0 = start, 1 = end of the filler), then one question `<fact> key` per
  index in `queries`, each followed by its answer `value`; only the answers carry loss.

  This is LWM's keyed needle ("the special magic <city> number is ..."). One fact and one
  question is the classic needle; several of each give training many answers per haystack.
  `filler` is a sequence of tokenized captions, used in order and cycled.
  """
  fact = vocab.special('fact')
  hidden = [np.asarray([fact, key, *value], np.int32) for key, value in facts]
  asked = [(np.asarray([fact, facts[q][0]], np.int32), np.asarray(facts[q][1], np.int32))
           for q in queries]
  filler_len = length - sum(map(len, hidden)) - sum(len(q) + len(a) for q, a in asked)
  if filler_len < 1:
    raise ValueError(f'A needle document of {length} tokens has no room for filler around '
                     f'{len(facts)} facts and {len(queries)} questions.')
  pieces, total = [], 0
  for i in range(filler_len):  # enough captions, cycled
    piece = filler[i % len(filler)]
    pieces.append(piece)
    total += len(piece)
    if total >= filler_len:
      break
  haystack = np.concatenate(pieces)[:filler_len]
  cuts = [int(round(d * filler_len)) for d in depths]
  parts, previous = [], 0
  for at, needle in sorted(zip(cuts, range(len(hidden)))):
    parts += [haystack[previous:at], hidden[needle]]
    previous = at
  parts.append(haystack[previous:])
  pairs = [(np.concatenate(parts), TEXT, 0.0)]
  for question, answer in asked:
    pairs += [(question, TEXT, 0.0), (answer, TEXT, weight)]
  return next_token_pairs(pairs)


def random_needle_document(vocab: Vocabulary, tokenizer, captions: Sequence[str],
                           rng: np.random.Generator, length: int, *, num_facts: int = 1,
                           depth: float | None = None, value_len: int = 2,
                           weight: float = 1.0, edge_fraction: float = 0.0
                           ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """A needle document of random captions with `num_facts` random facts (distinct keys,
  random depths unless `depth` is given) asked in random order; returns it and the answers
  `[num_facts, value_len]` in the order asked. Training and the needle evaluator both draw
  their haystacks here.

  A random depth is exactly 0 or 1 with probability `edge_fraction` (half each): uniform
  depths almost never put a fact first in the document or right before the questions, two
  depths the evaluator asks. The fact at depth 1 is asked first, so that training holds the
  evaluator's depth-1 case, the fact right before its own question. Depth 1 is still the one
  depth not learned (docs/results.md, "Needle curriculum"): in the questions the token 3
  before an answer is the previous answer, never the right one, and at depth 1 it is the right
  one.

  Keys are text ids that occur nowhere in the filler, as LWM's city names do not occur in its
  essays: a key that is also a caption word would make `<fact> key` the only unambiguous cue.
  """
  text_vocab_size = tokenizer.get_vocab_size()
  starts = rng.integers(len(captions), size=length // 8 + 1)
  filler = [caption_ids(tokenizer, captions[int(i)]) for i in starts]
  unused = np.setdiff1d(np.arange(FIRST_PLAIN_TEXT_ID, text_vocab_size), np.concatenate(filler))
  if len(unused) < num_facts:
    raise ValueError(f'The caption tokenizer has {len(unused)} text ids that the filler does '
                     f'not use, fewer than the {num_facts} needle keys asked for.')
  keys = rng.choice(unused, size=num_facts, replace=False)
  facts = [(int(k), needle_value(rng, text_vocab_size, value_len)) for k in keys]
  if depth is None:
    depths = rng.random(num_facts)
    at_edge = rng.random(num_facts) < edge_fraction
    depths[at_edge] = rng.integers(0, 2, size=at_edge.sum())
  else:
    depths = np.full(num_facts, depth)
  queries = rng.permutation(num_facts)
  if depth is None and (depths == 1).any():
    last = np.flatnonzero(depths == 1).max()  # placed last (ties keep the order of facts)
    queries = np.concatenate([[last], queries[queries != last]])
  doc = needle_document(vocab, filler, length, facts, depths, queries, weight=weight)
  return doc, np.stack([facts[q][1] for q in queries])


@dataclasses.dataclass
class _TextTransform(grain.transforms.RandomMap):
  """A grain transform that writes text: it loads the caption tokenizer once per worker."""

  vocab: Vocabulary
  tokenizer_path: str

  @functools.cached_property
  def tokenizer(self):
    return tokenizer_lib.load_tokenizer(self.tokenizer_path)


@dataclasses.dataclass
class MakeDocument(_TextTransform):
  """A cached clip -> one document in a random order (`video_text_fraction` of them
  captioning)."""

  frame_stride: int = 1
  video_text_fraction: float = 0.5
  text_weight: float = 1.0
  video_weight: float = 1.0
  condition_weight: float = 0.0

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    order = 'video_text' if rng.random() < self.video_text_fraction else 'text_video'
    return clip_document(self.vocab, element['video_tokens'][::self.frame_stride],
                         caption_ids(self.tokenizer, element['caption']), order,
                         text_weight=self.text_weight, video_weight=self.video_weight,
                         condition_weight=self.condition_weight)


def needle_max_length(step: int, max_length: int,
                      schedule: Sequence[tuple[int, int]] = ()) -> int:
  """The longest training haystack at `step`: `schedule` is ((until_step, max_length), ...)
  in increasing steps, then `max_length`. Short haystacks first form the retrieval circuit
  cheaply (many answers per token); the long ones then extend it to every depth."""
  for until_step, length in schedule:
    if step < until_step:
      return min(length, max_length)
  return max_length


@dataclasses.dataclass
class NeedleRow(_TextTransform):
  """A row index -> one packed row of needle documents (same keys as the packed clip rows).

  Needle rows are built whole, not packed with the clips, so that the row index gives the
  training step exactly (`rows_per_step` needle rows in every batch) and the haystack lengths
  can follow `max_length_schedule`. Lengths are log-uniform in [`min_length`, the step's
  maximum], a haystack longer than the room left is shortened to fit, and a remainder under
  `min_length` is padding.
  """

  captions: Sequence[str]
  row_length: int
  rows_per_step: int
  min_length: int = 256
  max_length: int = 2048
  max_length_schedule: Sequence[tuple[int, int]] = ()
  num_facts: int = 1
  value_len: int = 2
  weight: float = 1.0
  edge_fraction: float = 0.0

  def random_map(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    longest = max(self.min_length, needle_max_length(
        int(index) // self.rows_per_step, self.max_length, self.max_length_schedule))
    docs, free = [], self.row_length
    while free + 1 >= self.min_length:  # a document of n tokens takes n - 1 pairs
      # Log-uniform: at every scale the same share of haystacks.
      length = int(np.exp(rng.uniform(np.log(self.min_length), np.log(longest))))
      length = min(length, free + 1)
      # Up to `num_facts` facts, fewer in short haystacks: facts and questions take at most
      # half of the document.
      num_facts = int(np.clip(length // (4 * (self.value_len + 2)), 1, self.num_facts))
      doc, _ = random_needle_document(
          self.vocab, self.tokenizer, self.captions, rng, length, num_facts=num_facts,
          value_len=self.value_len, weight=self.weight, edge_fraction=self.edge_fraction)
      docs.append(doc)
      free -= len(doc['inputs'])
    row = {k: np.zeros(self.row_length, np.float32 if k == 'weights' else np.int32)
           for k in (*DOCUMENT_KEYS, 'segment_ids', 'positions')}
    start = 0
    for segment, doc in enumerate(docs, start=1):
      end = start + len(doc['inputs'])
      for k in DOCUMENT_KEYS:
        row[k][start:end] = doc[k]
      row['segment_ids'][start:end] = segment
      row['positions'][start:end] = np.arange(end - start)
      start = end
    return row


def needle_value(rng: np.random.Generator, text_vocab_size: int, length: int) -> np.ndarray:
  """Random text ids, never the special ones (PAD, UNK, BOS, EOS)."""
  return rng.integers(FIRST_PLAIN_TEXT_ID, text_vocab_size, size=length).astype(np.int32)


DOCUMENT_KEYS = ('inputs', 'targets', 'weights', 'modality')


def _to_row(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """grain's packed features -> the model's batch keys (one set of segment ids / positions)."""
  row = {k: packed[k] for k in DOCUMENT_KEYS}
  row['segment_ids'] = packed['inputs_segment_ids'].astype(np.int32)
  row['positions'] = packed['inputs_positions'].astype(np.int32)
  return row


def _check_fits(element: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
  if len(element['inputs']) > length:
    raise ValueError(f'A document of {len(element["inputs"])} tokens does not fit in '
                     f'data.sequence_length={length}; raise it or use fewer frames.')
  return element


def packed_dataset(documents: grain.IterDataset, sequence_length: int, *, num_bins: int,
                   seed: int) -> grain.IterDataset:
  """Documents -> rows of exactly `sequence_length` tokens (first-fit packing)."""
  documents = documents.map(functools.partial(_check_fits, length=sequence_length))
  packed = grain.experimental.FirstFitPackIterDataset(
      documents, length_struct={k: sequence_length for k in DOCUMENT_KEYS},
      num_packing_bins=num_bins, seed=seed, shuffle_bins=True)
  return packed.map(_to_row)


def make_document_transform(data_config: ml_collections.ConfigDict,
                            tokenizer_file: str) -> MakeDocument:
  lm = data_config.lm
  return MakeDocument(
      vocab=vocabulary(data_config), tokenizer_path=tokenizer_file,
      frame_stride=lm.frame_stride, video_text_fraction=lm.video_text_fraction,
      text_weight=lm.text_weight, video_weight=lm.video_weight,
      condition_weight=lm.condition_weight)


def needle_rows_per_batch(data_config: ml_collections.ConfigDict, batch_size: int) -> int:
  """`data.lm.needle_fraction` of a (process's) batch's rows, at least one if it is > 0."""
  fraction = data_config.lm.needle_fraction
  if not 0 <= fraction <= 1:
    raise ValueError(f'data.lm.needle_fraction={fraction} must be in [0, 1].')
  return 0 if fraction == 0 else int(np.clip(round(fraction * batch_size), 1, batch_size))


def make_needle_row_transform(data_config: ml_collections.ConfigDict, tokenizer_file: str,
                              captions: Sequence[str], rows_per_step: int) -> NeedleRow:
  lm = data_config.lm
  length = data_config.sequence_length
  return NeedleRow(
      vocab=vocabulary(data_config), tokenizer_path=tokenizer_file, captions=captions,
      row_length=length, rows_per_step=rows_per_step, min_length=lm.needle_min_length,
      max_length=min(lm.needle_max_length or length, length),
      max_length_schedule=tuple(tuple(p) for p in lm.needle_max_length_schedule),
      num_facts=lm.needle_facts, value_len=lm.needle_value_len, weight=lm.needle_weight,
      edge_fraction=lm.needle_edge_fraction)


def packed_rows(data_config: ml_collections.ConfigDict, cache: Any,
                tokenizer_file: str, *, global_batch_size: int,
                seed: int) -> grain.DatasetIterator:
  """Infinite, checkpointable iterator of packed rows for this process: rows of clip
  documents, then `needle_fraction` of each batch's rows filled with needle documents.

  `cache` is a random-access source of tokenized clips (`video_tokens.TokenCache`), which the
  caller builds with a video tokenizer: data code never runs a model.
  """
  batch_size = pipeline.process_batch_size(global_batch_size)
  needle_rows = needle_rows_per_batch(data_config, batch_size)
  read = grain.ReadOptions(num_threads=data_config.num_threads,
                           prefetch_buffer_size=data_config.prefetch)
  streams = []
  if needle_rows < batch_size:
    ds = grain.MapDataset.source(cache)[jax.process_index()::jax.process_count()]
    ds = ds.shuffle(seed=seed).repeat()
    ds = ds.random_map(make_document_transform(data_config, tokenizer_file), seed=seed + 1)
    ds = packed_dataset(ds.to_iter_dataset(read), data_config.sequence_length,
                        num_bins=data_config.lm.packing_bins, seed=seed + 2)
    streams.append(ds.batch(batch_size - needle_rows, drop_remainder=True))
  if needle_rows:
    # Row index r is in the batch of step r // needle_rows: the length schedule follows steps.
    ds = grain.MapDataset.range(0, 1 << 62).random_map(
        make_needle_row_transform(data_config, tokenizer_file, cache.captions, needle_rows),
        seed=seed + 3 + jax.process_index())
    streams.append(ds.to_iter_dataset(read).batch(needle_rows, drop_remainder=True))
  ds = grain.experimental.ZipIterDataset(streams).map(
      lambda parts: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
  ds = ds.map(lambda batch: {**batch, pipeline.FAULTS_KEY: np.zeros(
      (len(batch['inputs']), len(faults.COUNTED)), np.int32)})  # cached tokens: none to count
  return iter(ds)


def batch_spec(data_config: ml_collections.ConfigDict, global_batch_size: int,
               mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  pipeline.check_batch_divides(global_batch_size, mesh)
  shape = (global_batch_size, data_config.sequence_length)
  dtypes = dict(inputs=np.int32, targets=np.int32, weights=np.float32, modality=np.int32,
                segment_ids=np.int32, positions=np.int32)
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(mesh, 2))
          for k, dtype in dtypes.items()}
