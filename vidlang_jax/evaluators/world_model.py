"""World-model evaluators: perplexity per modality, needle in a haystack, captioning accuracy
and text -> video samples. All read the test split through the token cache (data/video_tokens)
and run the decoder with plain attention and a KV cache (vidlang_jax/generate.py).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from vidlang_jax import generate as generate_lib, registry
from vidlang_jax.data import moving_shapes, sequences
from vidlang_jax.data import video_tokens
from vidlang_jax.evaluators.reconstruction import image_grid
from vidlang_jax.losses.language_model import MODALITIES, weighted_next_token_loss


@functools.lru_cache(maxsize=2)
def _session(model, data_config_json: str) -> generate_lib.WorldModelSession:
  """One session (tokenizers loaded, decode loops compiled once) for all the evaluators of a
  model; keyed by the data config's JSON since ConfigDicts are not hashable."""
  return generate_lib.WorldModelSession(
      model, ml_collections.ConfigDict(json.loads(data_config_json)))


class _WorldModelEvaluator:
  """Shared set-up: vocabulary, the session (caption + video tokenizers, generator), the test
  split's token cache."""

  def __init__(self, *, model, config: ml_collections.ConfigDict,
               eval_config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.model, self.config, self.eval_config, self.mesh = model, config, eval_config, mesh
    self.vocab = sequences.vocabulary(config.data)
    self.stride = config.data.lm.frame_stride
    # Built now (shared, see _session), so that a missing tokenizer run fails before training.
    self.session = _session(model, config.data.to_json())
    self.tokenizer = self.session.text_tokenizer

  def cache(self) -> video_tokens.TokenCache:
    return video_tokens.token_cache(self.config.data, self.eval_config.split,
                                    self.eval_config.get('num_examples'))


@registry.register('evaluator.lm_perplexity')
class PerplexityEvaluator(_WorldModelEvaluator):
  """`perplexity_text`: captions given their video; `perplexity_video`: video tokens given
  their caption (exp of the mean NLL per token over the split)."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    model = self.model.clone(attention='dot_product')

    def nll(params, batch):
      logits = model.apply({'params': params}, batch['inputs'], batch['positions'],
                           batch['segment_ids'])
      _, metrics = weighted_next_token_loss(logits, batch['targets'], batch['weights'],
                                            batch['modality'])
      counts = {name: jnp.sum((batch['modality'] == i) & (batch['weights'] > 0))
                for i, name in enumerate(MODALITIES)}
      return {name: metrics[f'{name}_loss'] * counts[name] for name in MODALITIES}, counts

    self.nll = jax.jit(nll)

  def run(self, params: Any, *, step: int, workdir: str) -> dict[str, float]:
    cache = self.cache()
    totals = {name: 0.0 for name in MODALITIES}
    counts = {name: 0 for name in MODALITIES}
    batch_size = self.eval_config.get('batch_size', 32)
    docs = []
    for i in range(len(cache)):
      clip = cache[i]
      text = sequences.caption_ids(self.tokenizer, clip['caption'])
      for order in sequences.ORDERS:
        docs.append(sequences.clip_document(self.vocab, clip['video_tokens'][::self.stride],
                                            text, order))
    length = 8 * math.ceil(max(len(d['inputs']) for d in docs) / 8)
    for start in range(0, len(docs), batch_size):
      batch = pad_documents(docs[start:start + batch_size], length, batch_size)
      sums, numbers = jax.device_get(self.nll(params, batch))
      for name in MODALITIES:
        totals[name] += float(sums[name])
        counts[name] += int(numbers[name])
    return {f'perplexity_{name}': math.exp(totals[name] / max(counts[name], 1))
            for name in MODALITIES}


def pad_documents(docs: list[dict[str, np.ndarray]], length: int,
                  batch_size: int) -> dict[str, np.ndarray]:
  """One document per row, right-padded to `length` (segment 0, weight 0); missing rows are
  empty padding rows."""
  batch = {k: np.zeros((batch_size, length), np.float32 if k == 'weights' else np.int32)
           for k in sequences.DOCUMENT_KEYS + ('segment_ids', 'positions')}
  for row, doc in enumerate(docs):
    n = len(doc['inputs'])
    for key in sequences.DOCUMENT_KEYS:
      batch[key][row, :n] = doc[key]
    batch['segment_ids'][row, :n] = 1
    batch['positions'][row, :n] = np.arange(n)
  return batch


@registry.register('evaluator.needle')
class NeedleEvaluator(_WorldModelEvaluator):
  """Needle in a haystack: for every context length x depth, `samples` documents of test
  captions hiding one fact `<fact> key v1 v2`; the model must answer `v1 v2` to the final
  question `<fact> key`.
  Writes `needle_<length>_<depth>` (exact-match accuracy), `needle_<length>` and `needle_mean`.
  """

  def run(self, params: Any, *, step: int, workdir: str) -> dict[str, float]:
    value_len = self.config.data.lm.needle_value_len
    rng = np.random.default_rng(self.eval_config.get('seed', 0))
    captions = self.cache().captions
    results, by_length = {}, {}
    for length in self.eval_config.lengths:
      for depth in self.eval_config.depths:
        prompts, answers = [], []
        for _ in range(self.eval_config.samples):
          doc, answer = sequences.random_needle_document(
              self.vocab, self.tokenizer, captions, rng, length, depth=depth,
              value_len=value_len)
          prompts.append(doc['inputs'][:length - value_len])
          answers.append(answer[0])
        generated = self.session.generator(params, np.stack(prompts), value_len,
                                           temperature=0.0)
        accuracy = float(np.mean(np.all(generated == np.stack(answers), axis=1)))
        results[f'needle_{length}_{depth:.2f}'] = accuracy
        by_length.setdefault(length, []).append(accuracy)
    for length, accuracies in by_length.items():
      results[f'needle_{length}'] = float(np.mean(accuracies))
    results['needle_mean'] = float(np.mean([results[f'needle_{n}'] for n in by_length]))
    return results


def parse_caption(text: str) -> dict[str, int | None]:
  """The first-named object's shape, colour and motion label in a moving_shapes caption
  (None where the caption names none)."""
  text = ' '.join(text.lower().split())
  found: dict[str, int | None] = {}
  for key, names in (('shape', moving_shapes.SHAPES), ('colour', moving_shapes.COLOURS)):
    hits = [(m.start(), i) for i, name in enumerate(names)
            for m in [re.search(rf'\b{name}\b', text)] if m]
    found[key] = min(hits)[1] if hits else None
  phrases = [(m.start(), -len(phrase), moving_shapes.MOTIONS.index(motion))
             for motion, verbs in moving_shapes._VERBS.items() for pair in verbs
             for phrase in pair for m in [re.search(rf'\b{re.escape(phrase)}\b', text)] if m]
  found['motion'] = min(phrases)[2] if phrases else None
  return found


@registry.register('evaluator.captioning')
class CaptioningEvaluator(_WorldModelEvaluator):
  """Greedy captions of one-object test clips from their video tokens, scored on the named
  shape / colour / motion (`caption_shape_acc`, `caption_motion_acc`, `caption_colour_acc`,
  `caption_shape_motion_acc` = both right); samples go to `captions/<step>.txt`.

  One-object clips only: the labels describe the first-named object, which in a multi-object
  clip the video alone cannot single out.
  """

  def run(self, params: Any, *, step: int, workdir: str) -> dict[str, float]:
    cache = self.cache()
    single = [i for i in range(len(cache)) if cache.labels['num_objects'][i] == 1]
    batch_size = self.eval_config.get('batch_size', 32)
    scores = {k: [] for k in ('shape', 'colour', 'motion', 'shape_motion')}
    lines = []
    for start in range(0, len(single), batch_size):
      indices = single[start:start + batch_size]
      texts = self.session.captions(params, np.stack([cache[i]['video_tokens']
                                                      for i in indices]))
      for i, text in zip(indices, texts):
        parsed = parse_caption(text)
        right = {k: parsed[k] == int(cache.labels[f'{k}_label'][i])
                 for k in ('shape', 'colour', 'motion')}
        right['shape_motion'] = right['shape'] and right['motion']
        for k, v in right.items():
          scores[k].append(v)
        lines.append(f'{"ok " if right["shape_motion"] else "   "}{text!r}  <-  '
                     f'{cache.captions[i]!r}')
    if jax.process_index() == 0:
      os.makedirs(os.path.join(workdir, 'captions'), exist_ok=True)
      with open(os.path.join(workdir, 'captions', f'{step}.txt'), 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')
    return {f'caption_{k}_acc': float(np.mean(v)) for k, v in scores.items()}


@registry.register('evaluator.text_to_video')
class TextToVideoEvaluator(_WorldModelEvaluator):
  """Samples videos for the first `num_samples` test captions (temperature / top-k from the
  eval config), decodes them with the video tokenizer and saves `t2v/<step>.png`: each
  generated clip under its real one, captions in `t2v/<step>.txt`. Reports
  `t2v_code_accuracy`, the fraction of generated codes equal to the real clip's (a sanity
  number: a caption does not fix where objects start)."""

  def run(self, params: Any, *, step: int, workdir: str) -> dict[str, float]:
    cache = self.cache()
    count = self.eval_config.num_samples
    real = np.stack([cache[i]['video_tokens'][::self.stride] for i in range(count)])
    # Captions differ in length: one prompt per call.
    samples = np.stack([self.session.video_codes(
        params, cache.captions[i], jax.random.key(i),
        temperature=self.eval_config.get('temperature', 1.0),
        top_k=self.eval_config.get('top_k', 0)) for i in range(count)])
    if jax.process_index() == 0:
      os.makedirs(os.path.join(workdir, 't2v'), exist_ok=True)
      Image.fromarray(image_grid(self.session.frames(real), self.session.frames(samples))).save(
          os.path.join(workdir, 't2v', f'{step}.png'))
      with open(os.path.join(workdir, 't2v', f'{step}.txt'), 'w', encoding='utf-8') as f:
        f.write('\n'.join(f'rows {2 * i}-{2 * i + 1} (real, generated): {cache.captions[i]}'
                          for i in range(count)) + '\n')
    return {'t2v_code_accuracy': float(np.mean(samples == real))}
