"""The XLA:CPU options we run with, each measured (docs/performance.md, "XLA:CPU options").

XLA reads `XLA_FLAGS` once, when jax creates its first backend, so `apply_defaults` runs when
`vidlang_jax` is imported: it adds each default the user's `XLA_FLAGS` does not already set.
`VIDLANG_XLA_DEFAULTS=0` leaves `XLA_FLAGS` alone. The options name XLA:CPU only; GPU and TPU
backends ignore them.
"""

from __future__ import annotations

import os
from importlib import metadata

# YNNPACK, XLA:CPU's library for fusions, takes only the matmuls. Its element-wise and
# reduction fusions ran slower than XLA's own loops in our steps: with them, the LM step took
# 9 % longer and the masked-video step 5 %, and one softmax backward of the VideoMAE decoder
# took 150 ms where XLA's loops take under 10.
DEFAULTS = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'}
# The jaxlib these were measured with; older ones may not know the flags (XLA aborts on those).
MIN_JAXLIB = (0, 10)


def _jaxlib_version() -> tuple[int, ...]:
  try:
    return tuple(int(p) for p in metadata.version('jaxlib').split('.')[:2])
  except (metadata.PackageNotFoundError, ValueError):
    return (0,)


def apply_defaults(environ: os._Environ | dict[str, str] = os.environ) -> None:
  """Appends `--name=value` to `XLA_FLAGS` for each default the flags do not set yet."""
  if environ.get('VIDLANG_XLA_DEFAULTS', '1') == '0' or _jaxlib_version() < MIN_JAXLIB:
    return
  flags = environ.get('XLA_FLAGS', '')
  missing = [f'--{name}={value}' for name, value in DEFAULTS.items()
             if f'--{name}=' not in flags]
  if missing:
    environ['XLA_FLAGS'] = ' '.join([flags, *missing]).strip()
