"""Converters from public checkpoints to vidlang_jax releases (docs/converters.md):

  vidlang convert hf_llama --src path/to/hf_folder --out releases/name [--no-scan]
  vidlang convert hf_clip --src path/to/hf_folder --out releases/name [--num-frames 16]
      [--tubelet-time 2] [--inflate central|average]        (and hf_siglip)
  vidlang convert hf_videomae --src path/to/hf_folder --out releases/name [--no-scan]

A converter is registered as `convert.<name>`: a function `(src, out, *, scan, ...) -> out`
(image-text ones also take num_frames, tubelet_time and inflate) that
reads a local folder (never a hub download: the models run where there may be no network), fails
naming any source option the target model cannot compute, and ends in `release.write`, so that
`vidlang_jax.load_pretrained(out)` gives the model. Converters import torch only where a source
needs it, so that this package imports without the `[hf]` extra.
"""

from __future__ import annotations

import argparse
import inspect

from vidlang_jax import registry
from vidlang_jax.convert import hf_image_text, hf_llama, hf_videomae  # noqa: F401  (registry)

# Flags of the converters that build a video tower from an image one.
_VIDEO_FLAGS = ('num_frames', 'tubelet_time', 'inflate')


def names() -> list[str]:
  return [name.removeprefix('convert.') for name in registry.names('convert')]


def main(argv: list[str]) -> None:
  """`vidlang convert NAME --src DIR --out RELEASE`: a local checkpoint folder as a release."""
  parser = argparse.ArgumentParser(prog='vidlang convert', description=main.__doc__)
  parser.add_argument('name', choices=names(), help='the converter')
  parser.add_argument('--src', required=True,
                      help='a local folder as save_pretrained writes it (config.json + weights)')
  parser.add_argument('--out', required=True, help='the release folder to write (new)')
  parser.add_argument('--scan', action=argparse.BooleanOptionalAction, default=True,
                      help='layers stacked on a leading axis (blocks/...), as the base configs '
                           'train; --no-scan writes block_0/, block_1/, ...')
  parser.add_argument('--num-frames', type=int, default=None,
                      help='image-text converters: frames the video tower is built for (16)')
  parser.add_argument('--tubelet-time', type=int, default=None,
                      help='image-text converters: frames per tubelet (2)')
  parser.add_argument('--inflate', choices=('central', 'average'), default=None,
                      help='image-text converters: the 2D patch kernel on the middle frame of '
                           'each tubelet (central, as ViViT) or spread over its frames')
  args = parser.parse_args(argv)
  converter = registry.lookup(args.name, kind='convert')
  accepted = inspect.signature(converter).parameters
  video = {k: getattr(args, k) for k in _VIDEO_FLAGS if getattr(args, k) is not None}
  for key in video:
    if key not in accepted:
      parser.error(f'--{key.replace("_", "-")} is not an option of {args.name} (it builds no '
                   'video tower).')
  out = converter(args.src, args.out, scan=args.scan, **video)
  print(f'Wrote {out}. Load it with vidlang_jax.load_pretrained({out!r}) or fine-tune from it '
        f'with --config.init_from.path={out}.')
