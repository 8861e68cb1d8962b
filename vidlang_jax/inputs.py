"""Input formats by name: what a family's batches are made of, for the one trainer.

`config.data.format` names one (`input.clips`, the default, or `input.lm_sequences`); each gives
`train_iterator(data_config, *, global_batch_size, seed, start_step=0)` (infinite,
checkpointable; `start_step` starts it at a global batch, for a run resumed on another number
of processes, or raises saying what to do instead) and
`batch_spec(data_config, global_batch_size, mesh)` (shapes of one global batch, no data read).
The world model's format sits here, a floor above `data` and `models`, because its token cache
runs a trained video tokenizer over the clips.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import ml_collections

from vidlang_jax import checkpoint as checkpoint_lib
from vidlang_jax import config as config_lib
from vidlang_jax import registry
from vidlang_jax.data import pipeline, sequences, video_tokens


class InputFormat(NamedTuple):
  train_iterator: Any
  batch_spec: Any


registry.register('input.clips')(InputFormat(pipeline.train_iterator, pipeline.batch_spec))


def lookup(data_config: ml_collections.ConfigDict) -> InputFormat:
  return registry.lookup(data_config.get('format') or 'clips', kind='input')


def _tokenizer_run_config(workdir: str) -> ml_collections.ConfigDict:
  config = config_lib.read_run_config(
      workdir, 'data.video_tokenizer must be the workdir of a finished `vidlang train '
      '--config configs/video_tokenizer.py:...` run, or its release')
  if config.model.name != 'video_tokenizer':
    raise ValueError(f'{workdir} is a {config.model.name!r} run, not a video_tokenizer run.')
  return config


def load_tokenizer_run(workdir: str) -> tuple[Any, Any, ml_collections.ConfigDict, str]:
  """(VideoTokenizer module, params tree, the run's config, checkpoint name) of a tokenizer
  run's latest checkpoint."""
  config = _tokenizer_run_config(workdir)
  kwargs = {k: tuple(v) if isinstance(v, list) else v
            for k, v in config.model.to_dict().items() if k != 'name'}
  model = registry.lookup('model.video_tokenizer')(**kwargs)
  params, name = checkpoint_lib.read_params_tree(workdir)
  return model, params, config, name


def token_cache(data_config: ml_collections.ConfigDict, split: str,
                max_examples: int | None = None) -> video_tokens.TokenCache:
  """`split` as video codes of the tokenizer run `data.video_tokenizer` (built once; the
  tokenizer's params are read only when the cache has to be built)."""
  workdir = data_config.video_tokenizer
  num_codes = math.prod(_tokenizer_run_config(workdir).model.levels)
  if num_codes != data_config.num_codes:
    raise ValueError(f'data.num_codes={data_config.num_codes} but the tokenizer in '
                     f'{workdir} has {num_codes} codes.')

  @functools.cache
  def tokenizer():
    model, params, _, _ = load_tokenizer_run(workdir)
    apply = jax.jit(lambda p, v: model.apply({'params': p}, v, method=model.tokenize))
    return lambda video: apply(params, video)

  return video_tokens.TokenCache(video_tokens.build_token_cache(
      data_config, split, lambda video: tokenizer()(video), checkpoint_lib.checkpoint_name(workdir),
      max_examples))


def lm_train_iterator(data_config: ml_collections.ConfigDict, *, global_batch_size: int,
                      seed: int, start_step: int = 0):
  """Packed rows of tokenized clips and needle documents (see `data/sequences.py`)."""
  if start_step:
    # Each process packs its own documents, so a split made for n processes cannot be re-cut.
    raise ValueError(
        f'The lm_sequences input cannot be re-split at step {start_step} for '
        f'{jax.process_count()} processes: resume with the number of processes that wrote the '
        'checkpoint, or start a new --workdir with --config.init_from.path=<the old workdir>.')
  tokenizer_file = pipeline.tokenizer_path(data_config)
  cache = token_cache(data_config, data_config.train_split,
                      data_config.lm.max_train_clips or None)
  return sequences.packed_rows(data_config, cache, tokenizer_file,
                               global_batch_size=global_batch_size, seed=seed)


registry.register('input.lm_sequences')(InputFormat(lm_train_iterator, sequences.batch_spec))
