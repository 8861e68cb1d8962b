"""World-model evaluators: perplexity per modality, needle in a haystack, captioning accuracy
and text -> video samples. All read the test split through the token cache (`inputs.token_cache`)
and run the decoder with plain attention and a KV cache (vidlang_jax/generate.py).
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vidlang_jax import generate as generate_lib
from vidlang_jax import inputs, registry
from vidlang_jax.data import builders, sequences, video_tokens
from vidlang_jax.evaluators import common
from vidlang_jax.losses.language_model import MODALITIES
from vidlang_jax.pixels import image_grid


@functools.lru_cache(maxsize=2)
def _session(model, data_config_json: str) -> generate_lib.WorldModelSession:
  """One session (tokenizers loaded, decode loops compiled once) for all the evaluators of a
  model; keyed by the data config's JSON since ConfigDicts are not hashable."""
  return generate_lib.WorldModelSession(
      model, ml_collections.ConfigDict(json.loads(data_config_json)))


class _WorldModelEvaluator(common.Evaluator):
  """Shared set-up: vocabulary, the session (caption + video tokenizers, generator), the test
  split's token cache."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    config = self.config
    self.vocab = sequences.vocabulary(config.data)
    self.stride = config.data.lm.frame_stride
    # Built now (shared, see _session), so that a missing tokenizer run fails before training.
    self.session = _session(self.model, config.data.to_json())
    self.tokenizer = self.session.text_tokenizer

  def cache(self) -> video_tokens.TokenCache:
    return inputs.token_cache(self.config.data, self.eval_config.split,
                              self.eval_config.get('num_examples'))


@registry.register('evaluator.lm_perplexity')
class PerplexityEvaluator(_WorldModelEvaluator):
  """`perplexity_text`: captions given their video; `perplexity_video`: video tokens given
  their caption (exp of the mean NLL per token over the split)."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    model = self.model.clone(attention='dot_product')

    def nll(params, batch):
      """Per-token NLL `[batch, length]`; the host sums it in float64 (a split's fp32 sum on
      device moved with how XLA ordered the reduction)."""
      logits = model.apply({'params': params}, batch['inputs'], batch['positions'],
                           batch['segment_ids'])
      return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                             batch['targets'])

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
      token_nll = np.asarray(jax.device_get(self.nll(params, batch)), np.float64)
      trained = np.asarray(batch['weights']) > 0
      for i, name in enumerate(MODALITIES):
        counted = trained & (np.asarray(batch['modality']) == i)
        totals[name] += float(token_nll[counted].sum())
        counts[name] += int(counted.sum())
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


@registry.register('evaluator.captioning')
class CaptioningEvaluator(_WorldModelEvaluator):
  """Greedy captions of test clips from their video tokens, parsed by the dataset's caption
  parser (`builders.caption_parser`) and scored against its labels: `caption_<label>_acc` for
  every label the parser reads, and `caption_<a>_<b>_acc` (both right) for each pair in
  `eval_config.joint` (default: shape and motion); samples go to `captions/<step>.txt`.

  `subset` ({field: value}) scores only the matching clips; moving_shapes' configs score
  one-object clips, since its labels describe the first-named object, which in a multi-object
  clip the video alone cannot single out.
  """

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.parse = builders.caption_parser(self.builder)
    if self.parse is None:
      raise common.Unavailable(f'{self.config.data.name} has no caption parser to score '
                               'generated captions with')
    self.joint = [tuple(pair) for pair in self.eval_config.get('joint', [('shape', 'motion')])]

  def run(self, params: Any, *, step: int, workdir: str) -> dict[str, float]:
    cache = self.cache()
    chosen = np.flatnonzero(self.subset({k: cache.labels[k] for k in self.subset_fields})
                            if self.subset_fields else np.ones(len(cache), bool))
    batch_size = self.eval_config.get('batch_size', 32)
    scores, lines = {}, []
    for start in range(0, len(chosen), batch_size):
      indices = chosen[start:start + batch_size]
      texts = self.session.captions(params, np.stack([cache[i]['video_tokens']
                                                      for i in indices]))
      for i, text in zip(indices, texts):
        parsed = self.parse(text)
        right = {k: v == int(cache.labels[f'{k}_label'][i]) for k, v in parsed.items()}
        for a, b in self.joint:
          right[f'{a}_{b}'] = right[a] and right[b]
        for k, v in right.items():
          scores.setdefault(k, []).append(v)
        shown = all(right[f'{a}_{b}'] for a, b in self.joint)
        lines.append(f'{"ok " if shown else "   "}{text!r}  <-  {cache.captions[i]!r}')
    common.save_text(workdir, 'captions', step, lines)
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
      grid = image_grid(self.session.frames(real), self.session.frames(samples))
      common.save_image(workdir, 't2v', step, grid)
    common.save_text(workdir, 't2v', step,
                     [f'rows {2 * i}-{2 * i + 1} (real, generated): {cache.captions[i]}'
                      for i in range(count)])
    return {'t2v_code_accuracy': float(np.mean(samples == real))}
