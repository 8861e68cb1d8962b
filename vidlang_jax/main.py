"""`vidlang` command line: train | eval | data | export | convert, and the commands families
register.

  vidlang train --config configs/two_tower.py:tiny --workdir runs/demo [--config.key=value ...]
  vidlang eval  --config configs/two_tower.py:tiny --workdir runs/demo
  vidlang compile --config configs/two_tower.py:base --topology v5e:16x16 [--num_slices 2] \
      --config.mesh.fsdp=-1 --config.mesh.data=1   (needs the [tpu] extra)
  vidlang generate --config configs/world_model.py:tiny,... --workdir runs/lwm \
      (--prompt "a big red star moves left" [--num_samples 4] | --video clip.mp4)
  vidlang data  moving_shapes [--data_dir DIR]
  vidlang data  video_text_folder --source_dir DIR [--label_columns action] --save_as NAME
  vidlang export --workdir runs/demo --out releases/demo [--step N] [--safetensors]
  vidlang convert hf_llama --src path/to/hf_llama --out releases/llama [--no-scan]

Configs are ml_collections config files; overrides use the same `--config.a.b=value` syntax.
Rerunning `train` with the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

# and `command.<name>` from the registry
COMMANDS = ('train', 'eval', 'compile', 'data', 'export', 'convert')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, `path.py:arg`.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics, evals).')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Dataset directory (default $VIDLANG_DATA_DIR).')
# Several processes: set these, or let a launcher (launch/) or SLURM / the TPU runtime set the
# environment; see vidlang_jax/distributed.py.
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, for a multi-process run.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes - 1.')
# vidlang compile: the train step for a TPU slice, on this machine (vidlang_jax/aot.py).
_TOPOLOGY = flags.DEFINE_string('topology', None, 'TPU slice, e.g. v5e:16x16, v5p:8x8x8.')
_NUM_SLICES = flags.DEFINE_integer('num_slices', 1, 'Slices over DCN (config.mesh.dcn).')
_JSON = flags.DEFINE_string('json', None, 'Also write the compile report here.')


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
    lines = str(e).strip().splitlines()
    if 'Traceback (most recent call last):' in lines and 'ConfigError: ' in lines[-1]:
      # A config argument the config file rejects (e.g. `:tinny`): its message, not the
      # traceback of the file that raised it, which config_flags puts in the error.
      sys.exit(f'error: {lines[0]} {lines[-1].partition("ConfigError: ")[2]}')
    sys.exit(f'error: {e}')


def _validated_config():
  from vidlang_jax import config as config_lib

  if _CONFIG.value is None:
    sys.exit('error: --config is required, e.g. --config configs/two_tower.py:tiny')
  config = _CONFIG.value
  try:
    config_lib.validate(config)
  except (config_lib.ConfigError, OSError) as e:  # OSError: config_flags could not load it
    sys.exit(f'error: {e}')
  if _DATA_DIR.value:
    config.unlock()
    config.data.data_dir = _DATA_DIR.value
    config.lock()
  return config


# Raised by this package about what the user asked for (a config value, a dataset or split
# name, a path, a size; each message names it) or found (a non-finite loss).
USER_ERRORS = (ValueError, KeyError, OSError, FloatingPointError)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@contextlib.contextmanager
def user_errors():
  """Ends the command with `error: <message>` (exit status 1) instead of a traceback when
  this package raised one of `USER_ERRORS`: the message is the whole story. The same types
  raised inside a library (a bug, or something unforeseen) keep their traceback."""
  try:
    yield
  except USER_ERRORS as e:
    frames = traceback.extract_tb(e.__traceback__)
    if not frames or not os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR + os.sep):
      raise
    sys.exit(f'error: {e.args[0] if isinstance(e, KeyError) and e.args else e}')


def _setup_logging(process_index: int = 0) -> None:
  """Our INFO messages on stderr (process 0 only: the others say only what goes wrong);
  library chatter (orbax, absl) only from WARNING up."""
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)
  ours = logging.getLogger('vidlang_jax')
  ours.setLevel(logging.INFO if process_index == 0 else logging.WARNING)
  for old in list(ours.handlers):
    ours.removeHandler(old)
  handler = logging.StreamHandler()
  handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s',
                                         '%H:%M:%S'))
  ours.addHandler(handler)
  ours.propagate = False


def main(argv: list[str]) -> None:
  from vidlang_jax import registry

  _setup_logging()
  extra = {name.removeprefix('command.'): registry.lookup(name)
           for name in registry.names('command')}
  commands = COMMANDS + tuple(extra)
  if len(argv) < 2 or argv[1] not in commands:
    sys.exit(f'usage: vidlang {{{"|".join(commands)}}} --config FILE:ARG --workdir DIR\n{__doc__}')
  command = argv[1]
  if command == 'compile':
    compile_main(_validated_config())
    return
  if not _WORKDIR.value:
    sys.exit('error: --workdir is required.')
  config = _validated_config()
  import jax

  from vidlang_jax import distributed, paths, train

  with user_errors():
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  _setup_logging(jax.process_index())

  with user_errors():
    if command in extra:
      extra[command](config, _WORKDIR.value, train.build_model(config))
    elif command == 'train':
      train.train_and_evaluate(config, _WORKDIR.value)
      path = paths.path(_WORKDIR.value) / 'eval' / f'{config.total_steps}.json'
      # The final evaluation (also when the run had already finished), once.
      if jax.process_index() == 0 and path.exists():
        print_results(config, json.loads(path.read_text(encoding='utf-8')), str(path))
    else:
      results = train.evaluate(config, _WORKDIR.value)
      if jax.process_index() == 0:
        print_results(config, results,
                      str(paths.path(_WORKDIR.value) / 'eval' / f'{results["step"]}.json'))


def compile_main(config) -> None:
  """`vidlang compile`: per-chip memory, FLOPs, collectives and a roofline step time of the
  train step compiled for a TPU slice (see vidlang_jax/aot.py)."""
  if not _TOPOLOGY.value:
    sys.exit('error: --topology is required, e.g. --topology v5e:16x16.')
  from vidlang_jax import aot, paths

  with user_errors():
    report = aot.compile_train_step(config, _TOPOLOGY.value, _NUM_SLICES.value)
    print(aot.format_report(report))
    if _JSON.value:
      paths.path(_JSON.value).write_text(json.dumps(report, indent=2), encoding='utf-8')


def print_results(config, results: dict, path: str) -> None:
  """A small table of the headline metrics: each evaluator formats its own, then the rest."""
  from vidlang_jax import registry

  print(f'\nEvaluation at step {results["step"]} (written to {path}):')
  shown = {'step'}
  for eval_config in config.get('evals', {}).values():
    lines, keys = registry.lookup(eval_config.type, kind='evaluator').format_results(results)
    for line in lines:
      print(line)
    shown |= keys
  for key, value in results.items():
    if key not in shown:
      print(f'  {key}: {value}')


def export_main(argv: list[str]) -> None:
  """`vidlang export`: a run's params (no optimizer state), config, tokenizers and a model card
  as a release folder (see vidlang_jax/release.py)."""
  import argparse

  parser = argparse.ArgumentParser(prog='vidlang export', description=export_main.__doc__)
  parser.add_argument('--workdir', required=True, help='the training run')
  parser.add_argument('--out', required=True, help='the release folder to write (new)')
  parser.add_argument('--step', type=int, help='the checkpoint to export (default: latest)')
  parser.add_argument('--safetensors', action='store_true',
                      help='also write model.safetensors (needs the [hf] extra)')
  args = parser.parse_args(argv)
  _setup_logging()
  from vidlang_jax import release

  out = release.export(args.workdir, args.out, step=args.step, safetensors=args.safetensors)
  print(f'Wrote {out}. Load it with vidlang_jax.load_pretrained({out!r}) or fine-tune from it '
        f'with --config.init_from.path={out}.')


def run() -> None:
  if len(sys.argv) > 1 and sys.argv[1] == 'data':  # Dataset building has its own flags.
    from vidlang_jax.data import builders

    with user_errors():
      builders.main(sys.argv[2:])
    return
  if len(sys.argv) > 1 and sys.argv[1] == 'export':  # No config: the run's own is exported.
    with user_errors():
      export_main(sys.argv[2:])
    return
  if len(sys.argv) > 1 and sys.argv[1] == 'convert':  # No config: built from the source's own.
    with user_errors():
      _setup_logging()
      from vidlang_jax import convert

      convert.main(sys.argv[2:])
    return
  from vidlang_jax import registry

  registry.names('command')  # Commands define their flags when they register.
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
