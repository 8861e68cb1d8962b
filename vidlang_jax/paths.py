"""Every path the package reads or writes, as an `etils.epath.Path`, so that a local folder and
a `gs://` bucket go through the same code (Orbax, TensorBoard and the JSON files alike)."""

from __future__ import annotations

import os

from etils import epath

PathLike = str | os.PathLike


def path(p: PathLike) -> epath.Path:
  """`p` as an `epath.Path`: a URI (`gs://bucket/x`) as it is, a local path with `~` expanded
  and made absolute (Orbax wants absolute paths; `os.path.abspath('gs://b')` would put a bucket
  under the working directory)."""
  text = os.fspath(p)
  if '://' in text:
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def is_remote(p: PathLike) -> bool:
  return '://' in os.fspath(p)


def copy_tree(src: PathLike, dst: PathLike) -> None:
  """Copies the folder `src` to `dst` (a new folder), file by file (any store to any store)."""
  src, dst = path(src), path(dst)
  for folder, _, files in src.walk():
    target = dst / folder.relative_to(src)
    target.mkdir(parents=True, exist_ok=True)
    for name in files:
      (folder / name).copy(target / name)
