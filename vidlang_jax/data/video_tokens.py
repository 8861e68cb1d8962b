"""Clips as discrete tokens: a split run once through a trained video tokenizer and cached.

The world model trains on these ids, never on pixels (LWM also computes its VQGAN tokens
offline): tokenizing on the fly would cost more than the LM step itself on small runs. The cache
lives beside the tokenizer's checkpoints, keyed by dataset, split, frames, size and the
tokenizer's step, so a retrained tokenizer never reuses stale tokens.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from vidlang_jax.data import builders, pipeline

log = logging.getLogger(__name__)

# `[batch, time, height, width, 3]` normalised clips -> `[batch, time, h, w]` integer codes.
TokenizeFn = Callable[[np.ndarray], np.ndarray]


def cache_dir(data_config: ml_collections.ConfigDict, split: str, checkpoint_name: str,
              max_examples: int | None) -> str:
  step = os.path.basename(checkpoint_name)
  name = (f'{data_config.name.replace("/", "_")}_{split}_{data_config.num_frames}x'
          f'{data_config.image_size}_step{step}' + (f'_first{max_examples}' if max_examples
                                                      else ''))
  return os.path.join(data_config.video_tokenizer, 'tokens', name)


def build_token_cache(data_config: ml_collections.ConfigDict, split: str, tokenize: TokenizeFn,
                      checkpoint_name: str, max_examples: int | None = None,
                      batch_size: int = 64) -> str:
  """Tokenizes `split` (its first `max_examples` clips) once with `tokenize`, the video
  tokenizer of checkpoint `checkpoint_name`; returns the cache directory.

  The caller brings the tokenizer (data code never builds a model). Frames are sampled as in
  evaluation (uniform over the clip, central crop); the dataset's integer fields (labels,
  counts) are cached beside the codes. Process 0 writes, the others wait for it.
  """
  path = cache_dir(data_config, split, checkpoint_name, max_examples)
  if jax.process_index() == 0 and not os.path.exists(os.path.join(path, 'tokens.npy')):
    pipeline.tokenizer_path(data_config)  # builds the dataset if needed
    pipeline.check_split(data_config, split, 'the token cache split')
    builder = builders.get_builder(data_config.name, data_config.get('data_dir'),
                                   **data_config.get('builder_kwargs', {}))
    label_keys = builders.integer_fields(builder)
    tokens, captions, labels = [], [], {k: [] for k in label_keys}
    total = max_examples or builder.info.splits[split].num_examples
    for batch in tqdm.tqdm(pipeline.eval_batches(data_config, split, batch_size,
                                                 keys=label_keys + ('caption',),
                                                 max_examples=max_examples),
                           total=math.ceil(total / batch_size),
                           desc=f'tokenizing {data_config.name}:{split}'):
      real = batch['mask']
      tokens.append(np.asarray(tokenize(batch['video']))[real].astype(np.int16))
      for key in label_keys:
        labels[key].append(batch[key][real])
      captions.extend(str(batch['caption'][i]) for i in np.flatnonzero(real))
    os.makedirs(path, exist_ok=True)
    np.savez(os.path.join(path, 'labels.npz'), **{k: np.concatenate(v) for k, v in
                                                 labels.items()})
    with open(os.path.join(path, 'captions.json'), 'w', encoding='utf-8') as f:
      json.dump(captions, f)
    np.save(os.path.join(path, 'tokens.tmp.npy'), np.concatenate(tokens))
    os.replace(os.path.join(path, 'tokens.tmp.npy'), os.path.join(path, 'tokens.npy'))
    log.info('Cached %d tokenized clips of %s:%s in %s.', len(captions), data_config.name, split,
             path)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'vidlang_jax: token cache {path}')
  return path


class TokenCache:
  """Random-access source over a cache: element i is {'video_tokens' `[time, h, w]`,
  'caption' str, and the integer labels}."""

  def __init__(self, path: str):
    self.tokens = np.load(os.path.join(path, 'tokens.npy'), mmap_mode='r')
    with open(os.path.join(path, 'captions.json'), encoding='utf-8') as f:
      self.captions = json.load(f)
    with np.load(os.path.join(path, 'labels.npz')) as labels:
      self.labels = {k: labels[k] for k in labels.files}

  def __len__(self) -> int:
    return len(self.captions)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {'video_tokens': np.asarray(self.tokens[index], np.int32),
            'caption': self.captions[index],
            **{k: int(v[index]) for k, v in self.labels.items()}}
