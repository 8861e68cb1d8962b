"""What every converter shares: the source's tensors taken once by name, the release config
from a family's base config, and the check that the converted tree is the model's own."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from vidlang_jax import config as config_lib
from vidlang_jax import paths, pixels, registry, release
from vidlang_jax.sharding import tree_paths

log = logging.getLogger(__name__)

# Release configs start from a family's base config (optimizer, mesh, evals for fine-tuning);
# configs/ sits beside the package in a source checkout.
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'configs')


def base_config(name: str) -> ml_collections.ConfigDict:
  """`configs/<name>.py:base`, the config a converted release is trained on further."""
  path = os.path.join(CONFIGS, f'{name}.py')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: converters build the release config from '
                            f'configs/{name}.py of a source checkout.')
  return config_lib.load(f'{path}:base')


def unsupported(converter: str, key: str, value: Any, why: str) -> ValueError:
  return ValueError(f'config.json: {key}={value!r} is not supported by convert {converter}: '
                    f'{why}; converting it anyway would give a model that computes something '
                    'else.')


class Tensors:
  """The state dict, each tensor taken once as fp32, so that what was not taken can be named.
  Names ending in one of `ignore` (buffers the models recompute) are never reported."""

  def __init__(self, tensors: dict[str, np.ndarray], src: str, ignore: Sequence[str] = ()):
    self.tensors, self.src, self.taken, self.ignore = tensors, src, set(), tuple(ignore)

  def __call__(self, name: str) -> np.ndarray:
    if name not in self.tensors:
      raise KeyError(f'{self.src} has no tensor {name!r} (it has e.g. '
                     f'{sorted(self.tensors)[:6]}).')
    self.taken.add(name)
    return np.asarray(self.tensors[name], np.float32)

  def __contains__(self, name: str) -> bool:
    return name in self.tensors

  def check_all_taken(self, converter: str) -> None:
    left = sorted(k for k in set(self.tensors) - self.taken if not k.endswith(self.ignore))
    if left:
      raise ValueError(f'{self.src} has tensors convert {converter} does not map (an option of '
                       f'config.json it does not know?): {left[:10]}')


def patch_kernel(weight: np.ndarray, bias: np.ndarray,
                 source_pixels: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """A torch Conv2d / Conv3d patch embedding `[width, 3, (t,) p, p]` that reads the source's
  pixel normalisation -> our Dense `[(t*)p*p*3, width]` (rows `(pt ph pw c)`, as `patchify`)
  and its bias, reading `pixels.normalize`'s.

  Our input is y = (x - m) / s, the source's z = (x - m') / s' = y s / s' + (m - m') / s', so
  the kernel is scaled per channel by s / s' and the bias takes the kernel times the shift.
  """
  mean, std = source_pixels
  kernel = np.moveaxis(weight, (0, 1), (-1, -2))  # [(t,) p, p, 3, width]
  width = kernel.shape[-1]
  shift = (kernel * ((pixels.MEAN_RGB - mean) / std)[:, None]).reshape(-1, width).sum(axis=0)
  kernel = kernel * (pixels.STD_RGB / std)[:, None]
  return kernel.reshape(-1, width), bias + shift


def stack(blocks: list[dict[str, Any]], scan: bool) -> dict[str, Any]:
  """Per-block trees as the encoder names them: `blocks` stacked layers-first, or `block_i`."""
  if scan:
    return {'blocks': jax.tree.map(lambda *xs: np.stack(xs), *blocks)}
  return {f'block_{i}': b for i, b in enumerate(blocks)}


def check_params(params: dict[str, Any], config: ml_collections.ConfigDict,
                 *example_inputs: jax.ShapeDtypeStruct) -> None:
  """Fails unless `params` has exactly the names and shapes of `config.model`'s params."""
  model = registry.lookup(config.model.name, kind='model')(
      **{k: v for k, v in config.model.to_dict().items() if k != 'name'})
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                          *example_inputs))['params']
  shapes = lambda tree: {p: tuple(x.shape) for p, x in zip(jax.tree.leaves(tree_paths(tree)),
                                                           jax.tree.leaves(tree))}
  want, got = shapes(abstract), shapes(params)
  wrong = sorted(f'{p}: model {want.get(p)}, converted {got.get(p)}'
                 for p in set(want) | set(got) if want.get(p) != got.get(p))
  if wrong:
    raise ValueError(f'converted params do not fit {config.model.name}: ' + '; '.join(wrong[:10]))


def write_release(src: str, out: str, config: ml_collections.ConfigDict, params: dict[str, Any],
                  model_card: Callable[[str, int], str]) -> str:
  """The release of converted `params` at `out`, with the source's tokenizer.json when it has
  one and the model card `model_card(absolute src, number of params)`; returns `out`."""
  src = os.path.abspath(src)
  tokenizer = os.path.join(src, 'tokenizer.json')
  out = release.write(out, config, params, source=src,
                      tokenizer_file=tokenizer if os.path.exists(tokenizer) else None)
  num_params = sum(x.size for x in jax.tree.leaves(params))
  (paths.path(out) / 'README.md').write_text(model_card(src, num_params), encoding='utf-8')
  log.info('Converted %s (%d params) to %s.', src, num_params, out)
  return out
