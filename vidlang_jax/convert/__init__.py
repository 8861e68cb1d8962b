"""Converters from public checkpoints to vidlang_jax releases (docs/converters.md):

  vidlang convert hf_llama --src path/to/hf_folder --out releases/name [--no-scan]

A converter is registered as `convert.<name>`: a function `(src, out, *, scan) -> out` that
reads a local folder (never a hub download: the models run where there may be no network), fails
naming any source option the target model cannot compute, and ends in `release.write`, so that
`vidlang_jax.load_pretrained(out)` gives the model. Converters import torch only where a source
needs it, so that this package imports without the `[hf]` extra.
"""

from __future__ import annotations

import argparse

from vidlang_jax import registry
from vidlang_jax.convert import hf_llama  # noqa: F401  (registers convert.hf_llama)


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
  args = parser.parse_args(argv)
  out = registry.lookup(args.name, kind='convert')(args.src, args.out, scan=args.scan)
  print(f'Wrote {out}. Load it with vidlang_jax.load_pretrained({out!r}) or fine-tune from it '
        f'with --config.init_from.path={out}.')
