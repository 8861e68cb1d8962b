"""`vidlang` command line: train | eval | generate | data.

  vidlang train --config configs/two_tower.py:tiny --workdir runs/demo [--config.key=value ...]
  vidlang eval  --config configs/two_tower.py:tiny --workdir runs/demo
  vidlang generate --config configs/world_model.py:tiny,... --workdir runs/lwm \
      (--prompt "a big red star moves left" [--num_samples 4] | --video clip.mp4)
  vidlang data  moving_shapes [--data_dir DIR]

Configs are ml_collections config files; overrides use the same `--config.a.b=value` syntax.
Rerunning `train` with the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

COMMANDS = ('train', 'eval', 'generate', 'data')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, `path.py:arg`.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics, evals).')
_PROMPT = flags.DEFINE_string('prompt', None, 'generate: a caption to turn into video.')
_VIDEO = flags.DEFINE_string('video', None, 'generate: an mp4 file to caption.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 4, 'generate: videos sampled per prompt.')
_TEMPERATURE = flags.DEFINE_float('temperature', 1.0, 'generate: sampling temperature '
                                  '(0 = greedy) for text -> video.')
_TOP_K = flags.DEFINE_integer('top_k', 50, 'generate: sample among the k likeliest codes.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Dataset directory (default $VIDLANG_DATA_DIR).')


def _parse_flags(argv: list[str]) -> list[str]:
  """absl parsing with the unknown-key error turned into one clear line."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    overrides = [a.split('=')[0].removeprefix('--config.') for a in argv
                 if a.startswith('--config.')]
    unknown = [key for key in overrides if repr(key.split('.')[-1]) in str(e)]
    if not unknown:
      raise  # not an override problem: e.g. a bug inside the config file itself
    sys.exit(f'error: unknown config key {", ".join(unknown)!r} ({e}).')
  except flags.Error as e:
    sys.exit(f'error: {e}')


def _validated_config():
  from vidlang_jax import config as config_lib

  if _CONFIG.value is None:
    sys.exit('error: --config is required, e.g. --config configs/two_tower.py:tiny')
  config = _CONFIG.value
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    sys.exit(f'error: {e}')
  if _DATA_DIR.value:
    config.unlock()
    config.data.data_dir = _DATA_DIR.value
    config.lock()
  return config


def _setup_logging() -> None:
  """Our INFO messages on stderr; library chatter (orbax, absl) only from WARNING up."""
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)
  ours = logging.getLogger('vidlang_jax')
  ours.setLevel(logging.INFO)
  handler = logging.StreamHandler()
  handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s',
                                         '%H:%M:%S'))
  ours.addHandler(handler)
  ours.propagate = False


def main(argv: list[str]) -> None:
  _setup_logging()
  if len(argv) < 2 or argv[1] not in COMMANDS:
    sys.exit(f'usage: vidlang {{{"|".join(COMMANDS)}}} --config FILE:ARG --workdir DIR\n{__doc__}')
  command = argv[1]
  if command == 'data':
    from vidlang_jax.data import builders

    for name in argv[2:] or ['moving_shapes']:
      builder = builders.prepare(name, _DATA_DIR.value)
      print(f'{name}: {builder.data_dir}')
    return

  if not _WORKDIR.value:
    sys.exit('error: --workdir is required.')
  config = _validated_config()
  from vidlang_jax import train

  if command == 'generate':
    generate(config, _WORKDIR.value)
  elif command == 'train':
    train.train_and_evaluate(config, _WORKDIR.value)
    path = os.path.join(_WORKDIR.value, 'eval', f'{config.total_steps}.json')
    if os.path.exists(path):  # The final evaluation (also when the run had already finished).
      with open(path, encoding='utf-8') as f:
        print_results(json.load(f), path)
  else:
    results = train.evaluate(config, _WORKDIR.value)
    print_results(results, os.path.join(_WORKDIR.value, 'eval', f'{results["step"]}.json'))


def generate(config, workdir: str) -> None:
  """World model, both directions: caption an mp4 (`--video`) or sample clips for a caption
  (`--prompt`), saved as mp4 and a PNG strip under `workdir/generate/`."""
  import jax
  import numpy as np
  from PIL import Image

  from vidlang_jax import checkpoint, generate as generate_lib, train
  from vidlang_jax.data import video as video_lib
  from vidlang_jax.evaluators.reconstruction import image_grid

  if config.objective != 'world_model':
    sys.exit(f'error: generate needs a world_model config, got objective={config.objective!r}.')
  if bool(_PROMPT.value) == bool(_VIDEO.value):
    sys.exit('error: generate needs exactly one of --prompt "caption" or --video file.mp4.')
  model = train.build_model(config)
  params, name = checkpoint.read_params_tree(workdir)
  session = generate_lib.WorldModelSession(model, config.data, temperature=_TEMPERATURE.value,
                                           top_k=_TOP_K.value)
  if _VIDEO.value:
    if not os.path.exists(_VIDEO.value):
      sys.exit(f'error: --video {_VIDEO.value!r} does not exist.')
    with open(_VIDEO.value, 'rb') as f:
      tokens = session.tokenize_mp4(f.read(), _VIDEO.value)
    print(f'{_VIDEO.value}: {session.captions(params, tokens[None])[0]}')
    return
  out_dir = os.path.join(workdir, 'generate')
  os.makedirs(out_dir, exist_ok=True)
  slug = '_'.join(_PROMPT.value.lower().split())[:60]
  codes = np.stack([session.video_codes(params, _PROMPT.value, jax.random.key(i))
                    for i in range(_NUM_SAMPLES.value)])
  frames = session.frames(codes)  # [samples, time, size, size, 3]
  Image.fromarray(image_grid(frames)).save(os.path.join(out_dir, f'{slug}.png'))
  for i, clip in enumerate(frames):
    with open(os.path.join(out_dir, f'{slug}_{i}.mp4'), 'wb') as f:
      f.write(video_lib.encode_mp4((clip * 255 + 0.5).astype(np.uint8), fps=4))
  print(f'{_NUM_SAMPLES.value} clips for {_PROMPT.value!r} from {name}: {out_dir}/{slug}*.mp4 '
        f'and {slug}.png (one row per sample).')


def print_results(results: dict, path: str) -> None:
  """A small table of the headline metrics."""
  print(f'\nEvaluation at step {results["step"]} (written to {path}):')
  rows = [('text -> video', 't2v'), ('video -> text', 'v2t')]
  if 't2v_r1' in results:
    print(f'  {"":15s} {"R@1":>6s} {"R@5":>6s} {"R@10":>6s} {"median rank":>12s}')
    for title, prefix in rows:
      print(f'  {title:15s} ' + ' '.join(f'{results[f"{prefix}_r{k}"]:6.3f}' for k in (1, 5, 10))
            + f' {results[f"{prefix}_median_rank"]:12.1f}')
    print(f'  chance R@1 = {results["chance_r1"]:.4f}')
  others = {k: v for k, v in results.items()
            if k != 'step' and not k.startswith(('t2v_', 'v2t_', 'chance'))}
  for key, value in others.items():
    print(f'  {key}: {value}')


def run() -> None:
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
