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
from typing import Any

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tqdm

from vidlang_jax import checkpoint as checkpoint_lib, registry
from vidlang_jax.data import builders, pipeline

log = logging.getLogger(__name__)

LABEL_KEYS = ('shape_label', 'colour_label', 'size_label', 'motion_label', 'num_objects')


def load_tokenizer_run(workdir: str) -> tuple[Any, Any, ml_collections.ConfigDict, str]:
  """(VideoTokenizer module, params tree, the run's config, checkpoint name) of a tokenizer
  run's latest checkpoint."""
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.exists(config_path):
    raise FileNotFoundError(
        f'{config_path} does not exist: data.video_tokenizer must be the workdir of a '
        'finished `vidlang train --config configs/video_tokenizer.py:...` run.')
  with open(config_path, encoding='utf-8') as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.model.name != 'video_tokenizer':
    raise ValueError(f'{workdir} is a {config.model.name!r} run, not a video_tokenizer run.')
  kwargs = {k: tuple(v) if isinstance(v, list) else v
            for k, v in config.model.to_dict().items() if k != 'name'}
  model = registry.lookup('model.video_tokenizer')(**kwargs)
  params, name = checkpoint_lib.read_params_tree(workdir)
  return model, params, config, name


def cache_dir(data_config: ml_collections.ConfigDict, split: str, checkpoint_name: str,
              max_examples: int | None) -> str:
  step = os.path.basename(checkpoint_name)
  name = (f'{data_config.name.replace("/", "_")}_{split}_{data_config.num_frames}x'
          f'{data_config.image_size}_step{step}' + (f'_first{max_examples}' if max_examples
                                                      else ''))
  return os.path.join(data_config.video_tokenizer, 'tokens', name)


def build_token_cache(data_config: ml_collections.ConfigDict, split: str,
                      max_examples: int | None = None, batch_size: int = 64) -> str:
  """Tokenizes `split` (its first `max_examples` clips) once; returns the cache directory.

  Frames are sampled as in evaluation (uniform over the clip, central crop). Process 0 writes,
  the others wait for it.
  """
  model, params, tokenizer_config, name = load_tokenizer_run(data_config.video_tokenizer)
  num_codes = math.prod(tokenizer_config.model.levels)
  if num_codes != data_config.num_codes:
    raise ValueError(f'data.num_codes={data_config.num_codes} but the tokenizer in '
                     f'{data_config.video_tokenizer} has {num_codes} codes.')
  path = cache_dir(data_config, split, name, max_examples)
  if jax.process_index() == 0 and not os.path.exists(os.path.join(path, 'tokens.npy')):
    pipeline.tokenizer_path(data_config)  # builds the dataset if needed
    pipeline.check_split(data_config, split, 'the token cache split')
    tokenize = jax.jit(lambda p, v: model.apply({'params': p}, v, method=model.tokenize))
    tokens, captions, labels = [], [], {k: [] for k in LABEL_KEYS}
    total = max_examples or len(builders.data_source(
        data_config.name, split, data_config.get('data_dir'),
        **data_config.get('builder_kwargs', {})))
    for batch in tqdm.tqdm(pipeline.eval_batches(data_config, split, batch_size,
                                                 keys=LABEL_KEYS + ('caption',),
                                                 max_examples=max_examples),
                           total=math.ceil(total / batch_size),
                           desc=f'tokenizing {data_config.name}:{split}'):
      real = batch['mask']
      tokens.append(np.asarray(tokenize(params, batch['video']))[real].astype(np.int16))
      for key in LABEL_KEYS:
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


def token_cache(data_config: ml_collections.ConfigDict, split: str,
                max_examples: int | None = None) -> TokenCache:
  return TokenCache(build_token_cache(data_config, split, max_examples))

