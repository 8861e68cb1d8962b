"""Bad data: the kinds of fault, the policy for each, and the checks that build time (the
`video_text_folder` builder) and training time (the grain pipeline) share, so that one folder
of faults gives the same counts in both.

Policies:
  skipped  the record is dropped and counted as `data/skipped_<kind>`;
  fixed    the record is repaired and kept, counted as `data/fixed_<kind>`.

Which applies to a clip shorter than `data.num_frames` is a setting, `data.short_clips`:
'pad' (repeat the last frame; the default, as VideoMAE and decord loaders do) or 'skip'.
A caption longer than `data.max_text_len` tokens is cut (keeping EOS), counted as fixed.
Kinds only the builder can meet (a missing file, a row it cannot read) are counted in its
`build_summary.json` with the same names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vidlang_jax.data import video as video_lib

# Found in a stored record (at build time when the builder checks, else while training).
RECORD_SKIPS = ('empty_video', 'corrupt_video', 'no_frames', 'too_large', 'too_short',
                'empty_caption', 'caption_not_utf8')
RECORD_FIXES = ('short_clip', 'long_caption')
# Found only while reading an annotation file and its folder.
BUILD_SKIPS = ('missing_file', 'unreadable_file', 'bad_row', 'missing_column', 'empty_path',
               'empty_label')

# The order of the per-record counts vector the pipeline attaches to each example.
COUNTED = RECORD_SKIPS + RECORD_FIXES
SHORT_CLIP_POLICIES = ('pad', 'skip')
# 4K UHD: larger frames are skipped, not decoded (16 frames of 8K RGB are 1.6 GB).
DEFAULT_MAX_PIXELS = 3840 * 2160


class BadRecord(ValueError):
  """A record the policy skips: `kind` is one of RECORD_SKIPS or BUILD_SKIPS."""

  def __init__(self, kind: str, detail: str):
    assert kind in RECORD_SKIPS + BUILD_SKIPS, kind
    super().__init__(f'{kind}: {detail}')
    self.kind, self.detail = kind, detail


def check_frame_size(height: int, width: int, max_pixels: int) -> None:
  if height * width > max_pixels:
    raise BadRecord('too_large', f'{width}x{height} frames exceed data.max_pixels={max_pixels} '
                                 f'({height * width} pixels)')


def decode_caption(caption: Any) -> str:
  """A stored caption as text, or BadRecord(caption_not_utf8 / empty_caption)."""
  if isinstance(caption, (bytes, np.bytes_)):
    try:
      caption = bytes(caption).decode('utf-8')
    except UnicodeDecodeError as e:
      raise BadRecord('caption_not_utf8', f'caption bytes are not UTF-8 ({e.reason} at byte '
                                          f'{e.start})') from e
  caption = str(caption)
  if not caption.strip():
    raise BadRecord('empty_caption', 'the caption is empty')
  return caption


def counts_vector(skipped: str | None = None, fixed: tuple[str, ...] = ()) -> np.ndarray:
  """int32 `[len(COUNTED)]`: one skip of `skipped` and each of `fixed`."""
  counts = np.zeros((len(COUNTED),), np.int32)
  for kind in ((skipped,) if skipped else ()) + tuple(fixed):
    counts[COUNTED.index(kind)] += 1
  return counts


def metric_names() -> list[str]:
  """`data/skipped_<kind>` / `data/fixed_<kind>` in COUNTED order."""
  return [f'data/skipped_{k}' for k in RECORD_SKIPS] + [f'data/fixed_{k}' for k in RECORD_FIXES]


def check_video(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, float]:
  """The header of a stored video (`video.video_info`) after the checks both build time and
  training time make: it has bytes, a frame size within `max_pixels` and a decodable first
  frame. Raises BadRecord."""
  try:
    info = video_lib.video_info(data)
    check_frame_size(info['height'], info['width'], max_pixels)
    video_lib.decode_mp4(data, num_frames=1)
  except video_lib.VideoDecodeError as e:
    raise BadRecord(e.kind, str(e)) from e
  return info
