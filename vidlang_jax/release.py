"""Releases: a trained model without its optimizer state, with what it needs to run elsewhere.

  vidlang export --workdir runs/demo --out releases/two_tower_tiny [--step N] [--safetensors]

  import vidlang_jax
  model, params, config = vidlang_jax.load_pretrained('releases/two_tower_tiny')

A release folder holds:

  release.json        format and version, the model, the checkpoint it was exported from
  config.json         the run's config; data.tokenizer / data.video_tokenizer point inside
  params/             the params, an Orbax checkpoint (restores on any topology)
  model.safetensors   with --safetensors: the same params under flat 'a/b/kernel' names
  tokenizer.json      the caption tokenizer the text tower was trained with
  video_tokenizer/    world model: the release of the video tokenizer its codes come from
  README.md           model card: the evaluation at the exported step, how it was trained

`init_from.path` takes a release as it takes a workdir (`load_pretrained` takes both).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from vidlang_jax import checkpoint as checkpoint_lib
from vidlang_jax import config as config_lib
from vidlang_jax import paths, sharding, train
from vidlang_jax.data import builders
from vidlang_jax.sharding import tree_paths

FORMAT = 'vidlang_jax.release'
VERSION = 1
# Paths in a release's config.json that name files inside the release (relative there).
_PATH_KEYS = ('tokenizer', 'video_tokenizer')


def _caption_tokenizer_file(data: ml_collections.ConfigDict) -> epath.Path | None:
  """The tokenizer a run's text ids come from: `data.tokenizer`, else its dataset's."""
  if data.get('tokenizer'):
    return paths.path(data.tokenizer)
  builder = builders.get_builder(data.name, data.get('data_dir'), **data.get('builder_kwargs', {}))
  path = paths.path(builder.data_dir) / 'tokenizer.json'
  return path if path.exists() else None


def _model_card(config: ml_collections.ConfigDict, source: str,
                metrics: dict[str, Any] | None, num_params: int) -> str:
  lines = [f'# {config.model.name} ({num_params / 1e6:.2f}M params)', '',
           f'Exported from `{source}` by vidlang_jax.', '', '## Use', '', '```python',
           'import vidlang_jax', "model, params, config = vidlang_jax.load_pretrained('.')",
           '```', '', 'Fine-tune: `--config.init_from.path=<this folder>`.', '']
  if metrics:
    lines += ['## Evaluation at this step', '', '| metric | value |', '|---|---|']
    lines += [f'| {k} | {v:.4g} |' if isinstance(v, float) else f'| {k} | {v} |'
              for k, v in sorted(metrics.items()) if isinstance(v, (int, float))]
    lines.append('')
  lines += ['## Training', '',
            f'`objective={config.objective}`, `batch_size={config.batch_size}`, '
            f'`total_steps={config.total_steps}`, data `{config.data.name}`; the whole config '
            'is in config.json.', '']
  return '\n'.join(lines)


def write(out: paths.PathLike, config: ml_collections.ConfigDict, params: Any, *,
          tokenizer_file: paths.PathLike | None = None, video_tokenizer: str | None = None,
          source: str = '', metrics: dict[str, Any] | None = None,
          safetensors: bool = False) -> str:
  """Writes a release of `params` (a tree) for `config` to `out` (a new local folder or
  gs://...); converters and `export` both end here. Returns `out`."""
  out = paths.path(out)
  if out.exists():
    raise FileExistsError(f'{out} exists: choose a new --out.')
  if safetensors:
    try:
      from safetensors.numpy import save as safetensors_bytes
    except ImportError as e:
      raise ValueError("model.safetensors needs the safetensors package: pip install -e "
                       "'.[hf]'") from e
  out.mkdir(parents=True)
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.tokenizer = ''
  if tokenizer_file:
    paths.path(tokenizer_file).copy(out / 'tokenizer.json')
    config.data.tokenizer = 'tokenizer.json'
  if video_tokenizer:
    config.data.video_tokenizer = 'video_tokenizer'
  checkpoint_lib.save_params(out / checkpoint_lib.RELEASE_PARAMS, params)
  if safetensors:
    flat = {path: np.asarray(leaf) for path, leaf in
            zip(jax.tree.leaves(tree_paths(params)), jax.tree.leaves(params))}
    (out / 'model.safetensors').write_bytes(safetensors_bytes(flat))
  (out / 'config.json').write_text(config.to_json(indent=2), encoding='utf-8')
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  step = os.path.basename(source)
  (out / 'release.json').write_text(json.dumps(dict(
      format=FORMAT, version=VERSION, model=config.model.name, source=source,
      step=int(step) if step.isdigit() else None, num_params=num_params), indent=2),
                                    encoding='utf-8')
  (out / 'README.md').write_text(_model_card(config, source, metrics, num_params),
                                 encoding='utf-8')
  return str(out)


def export(workdir: str, out: str, *, step: int | None = None,
           safetensors: bool = False) -> str:
  """A training run's checkpoint (the latest, or `step`) as a release; a world model's video
  tokenizer run is exported inside it. Returns `out`."""
  config = config_lib.read_run_config(workdir, '--workdir must be a training run')
  source = str(paths.path(workdir) / 'checkpoints' / str(step)) if step is not None else workdir
  params, name = checkpoint_lib.read_params_tree(source)
  exported_step = int(os.path.basename(name))
  # Class counts taken from the dataset at training time are fixed in the release.
  config.model = ml_collections.ConfigDict(train.model_kwargs(config) | {
      'name': config.model.name})
  eval_path = paths.path(workdir) / 'eval' / f'{exported_step}.json'
  metrics = json.loads(eval_path.read_text(encoding='utf-8')) if eval_path.exists() else None
  video_tokenizer = config.data.get('video_tokenizer')
  out = write(out, config, params, tokenizer_file=_caption_tokenizer_file(config.data),
              video_tokenizer=video_tokenizer, source=name, metrics=metrics,
              safetensors=safetensors)
  if video_tokenizer:
    if checkpoint_lib.is_release(video_tokenizer):
      paths.copy_tree(video_tokenizer, paths.path(out) / 'video_tokenizer')
    else:
      export(video_tokenizer, paths.path(out) / 'video_tokenizer')
  return out


def load_config(path: str) -> ml_collections.ConfigDict:
  """The config of a release (its paths made absolute) or of a training run's workdir."""
  config = config_lib.read_run_config(path, 'expected a release or a training run')
  if checkpoint_lib.is_release(path):
    for key in _PATH_KEYS:
      if config.data.get(key):
        config.data[key] = str(paths.path(path) / config.data[key])
  return config


def load_pretrained(path: str, mesh: jax.sharding.Mesh | None = None
                    ) -> tuple[Any, Any, ml_collections.ConfigDict]:
  """(model, params, config) of a release or a training run's workdir; params replicated over
  `mesh` (default: the mesh set with `jax.set_mesh`, else one device)."""
  config = load_config(path)
  params, _ = checkpoint_lib.read_params_tree(path, mesh)
  return train.build_model(config), params, config


def evaluate(path: str, workdir: str, names: tuple[str, ...] | None = None) -> dict[str, Any]:
  """Runs the evaluators of a release's config (or those `names`) on its params, on the
  config's mesh; writes `workdir/eval/<step>.json` (the exported step) and returns it."""
  step = json.loads((paths.path(path) / 'release.json').read_text(
      encoding='utf-8')).get('step') or 0
  config = load_config(path)
  if names is not None:
    config.evals = ml_collections.ConfigDict({n: config.evals[n] for n in names})
  mesh = sharding.make_mesh(config.mesh)
  with sharding.use_mesh(mesh, sharding.logical_rules(config)):
    model, params, _ = load_pretrained(path, mesh)
    return train.run_evals(train.build_evaluators(config, model, mesh), params, step, workdir)
