"""moving_shapes: a procedurally generated video-caption dataset that ships inside the code.

Each clip shows 1-3 coloured shapes on black, each moving in one of 12 ways, with a caption that
names every object's size, colour, shape and motion in one of several phrasings. It is small
enough to build in about a minute on a laptop yet needs temporal modelling (left vs right,
grow vs shrink) and composition (which colour goes with which motion) to retrieve well.
Everything is a pure function of (seed, index), so builds are reproducible across machines.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import re
import sys
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from vidlang_jax.data import video as video_lib

# Labels are indices into these tuples. Shapes were picked to stay distinct at 32×32: no
# hexagon/octagon (reads as a circle when small); the diamond is a narrow rhombus so that it is
# not just a square turned 45°.
SHAPES = ('circle', 'square', 'triangle', 'diamond', 'star', 'cross')
COLOURS = ('red', 'green', 'blue', 'yellow', 'cyan', 'magenta', 'white', 'orange')
SIZES = ('small', 'large')
MOTIONS = ('left', 'right', 'up', 'down', 'up-left', 'up-right', 'down-left', 'down-right',
           'grow', 'shrink', 'rotate', 'stay')

_RGB = np.array([(235, 30, 30), (30, 200, 40), (50, 90, 255), (250, 230, 30),
                 (30, 225, 235), (230, 40, 220), (245, 245, 245), (255, 140, 0)], np.float32)
# A spinning circle looks exactly like a still one, so it never gets `rotate`.
_NO_ROTATE = frozenset({'circle'})
_NUM_OBJECTS_P = (0.4, 0.4, 0.2)
_RADIUS = {'small': 0.11, 'large': 0.17}  # Of min(height, width), at scale 1.
_EXTENT = 1.1  # Farthest shape point from its centre, in radii (the triangle's tip).
_MARGIN = 0.02


def _halfplanes(vertices: Sequence[tuple[float, float]]) -> np.ndarray:
  """Convex polygon -> `[4, 3]` rows (nx, ny, d): inside iff nx*x + ny*y - d <= 0 for all."""
  v = np.asarray(vertices, np.float64)
  a, b = v, np.roll(v, -1, axis=0)
  n = np.stack([b[:, 1] - a[:, 1], a[:, 0] - b[:, 0]], axis=1)
  n /= np.linalg.norm(n, axis=1, keepdims=True)
  d = (n * a).sum(1)
  sign = np.where(n @ v.mean(0) - d > 0, -1.0, 1.0)  # Make normals point outwards.
  rows = np.concatenate([n * sign[:, None], (d * sign)[:, None]], axis=1)
  return np.concatenate([rows, rows[:4 - len(rows)]]).astype(np.float32)  # Pad to 4 edges.


def _polar(radius: float, degrees: float) -> tuple[float, float]:
  return radius * np.cos(np.radians(degrees)), radius * np.sin(np.radians(degrees))


def _star_kites(outer: float = 1.05, inner: float = 0.45) -> list[np.ndarray]:
  """A 5-point star as the union of 5 convex kites (centre, inner, tip, inner)."""
  return [_halfplanes([(0.0, 0.0), _polar(inner, a - 36), _polar(outer, a),
                       _polar(inner, a + 36)]) for a in range(-90, 270, 72)]


def _box(hx: float, hy: float) -> np.ndarray:
  return _halfplanes([(-hx, -hy), (hx, -hy), (hx, hy), (-hx, hy)])


# Shapes as unions of convex pieces, `[pieces, 4, 3]`, in units of the object's radius with y
# pointing down (image convention). Areas are roughly matched (≈ 2.5) so size reads as size.
_PIECES = {
    'square': np.stack([_box(0.8, 0.8)]),
    'triangle': np.stack([_halfplanes([_polar(1.1, -90), _polar(1.1, 30), _polar(1.1, 150)])]),
    'diamond': np.stack([_halfplanes([(0, -1.05), (0.65, 0), (0, 1.05), (-0.65, 0)])]),
    'star': np.stack(_star_kites()),
    'cross': np.stack([_box(1.0, 0.36), _box(0.36, 1.0)]),
}
_CIRCLE_RADIUS = 0.9


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One object; positions are fractions of the frame, `radius` a fraction of min(h, w)."""
  shape: int
  colour: int
  size: int
  motion: int
  x: float  # Centre at the first frame.
  y: float
  radius: float
  dx: float = 0.0  # Displacement over the clip.
  dy: float = 0.0
  angle: float = 0.0  # Radians at the first frame.
  spin: float = 0.0  # Rotation over the clip, radians.
  scale: tuple[float, float] = (1.0, 1.0)  # First and last frame.

  def key(self) -> tuple[str, str, str, str]:
    return (SHAPES[self.shape], COLOURS[self.colour], SIZES[self.size], MOTIONS[self.motion])


def scene_key(scene: Sequence[SceneObject]) -> tuple[tuple[str, str, str, str], ...]:
  """Canonical description: two scenes with the same key get interchangeable captions."""
  return tuple(sorted(o.key() for o in scene))


def _sample_object(rng: np.random.Generator, shape: int, colour: int, height: int,
                   width: int) -> SceneObject:
  size = int(rng.integers(len(SIZES)))
  allowed = [m for m in MOTIONS if not (m == 'rotate' and SHAPES[shape] in _NO_ROTATE)]
  motion = MOTIONS.index(allowed[rng.integers(len(allowed))])
  radius = _RADIUS[SIZES[size]] * rng.uniform(0.9, 1.1)
  name = MOTIONS[motion]
  dx = dy = spin = 0.0
  scale = (1.0, 1.0)
  if name in ('left', 'right', 'up', 'down'):
    step = rng.uniform(0.4, 0.5)  # Of the frame: clearly visible over 16 frames.
    dx = {'left': -step, 'right': step}.get(name, 0.0)
    dy = {'up': -step, 'down': step}.get(name, 0.0)
  elif '-' in name:  # Diagonals: 0.42-0.57 of the frame along the diagonal.
    vertical, horizontal = name.split('-')
    dx = rng.uniform(0.3, 0.4) * (1 if horizontal == 'right' else -1)
    dy = rng.uniform(0.3, 0.4) * (1 if vertical == 'down' else -1)
  elif name in ('grow', 'shrink'):  # 2× in linear size.
    scale = (0.7, 1.4) if name == 'grow' else (1.4, 0.7)
  elif name == 'rotate':
    spin = rng.uniform(np.pi / 2, np.pi) * rng.choice([-1, 1])
  ext_x, ext_y = _extent(radius, scale, height, width)
  dx = float(np.clip(dx, 2 * ext_x - 1, 1 - 2 * ext_x))  # Only bites on very flat frames.
  dy = float(np.clip(dy, 2 * ext_y - 1, 1 - 2 * ext_y))
  obj = SceneObject(shape, colour, size, motion, 0.5, 0.5, radius, dx, dy, 0.0, spin, scale)
  return _place(rng, obj, height, width)


def _extent(radius: float, scale: tuple[float, float], height: int,
            width: int) -> tuple[float, float]:
  """Half-size (x, y) of the object at its largest, plus margin, as fractions of the frame."""
  ext = radius * _EXTENT * max(scale) * min(height, width)
  return ext / width + _MARGIN, ext / height + _MARGIN


def _place(rng: np.random.Generator, obj: SceneObject, height: int, width: int) -> SceneObject:
  """A random start such that the whole path, at the largest scale, stays inside the frame."""
  ext_x, ext_y = _extent(obj.radius, obj.scale, height, width)
  x = rng.uniform(ext_x - min(obj.dx, 0.0), 1 - ext_x - max(obj.dx, 0.0))
  y = rng.uniform(ext_y - min(obj.dy, 0.0), 1 - ext_y - max(obj.dy, 0.0))
  return dataclasses.replace(obj, x=x, y=y)


def sample_scene(rng: np.random.Generator, height: int = 64, width: int = 64,
                 ) -> list[SceneObject]:
  """1-3 objects with distinct (shape, colour); the first is the "main" (labelled) object.

  Start positions are re-drawn (up to 30 times; attributes are kept, so label statistics are
  unaffected) to keep objects apart at the start, middle and end of the clip; failing that,
  the least overlapping placement is used (the main object is drawn on top).
  """
  num = int(rng.choice(3, p=_NUM_OBJECTS_P)) + 1
  pairs = rng.permutation(len(SHAPES) * len(COLOURS))[:num]
  scene = []
  for pair in pairs:
    candidate = _sample_object(rng, *divmod(int(pair), len(COLOURS)), height, width)
    best, best_gap = candidate, -np.inf
    for _ in range(30 if scene else 0):
      gap = min(_gap(candidate, other, t, height, width) for other in scene
                for t in (0.0, 0.5, 1.0))
      if gap > best_gap:
        best, best_gap = candidate, gap
      if gap >= 0:
        break
      candidate = _place(rng, candidate, height, width)
    scene.append(best)
  return scene


def _gap(a: SceneObject, b: SceneObject, t: float, height: int, width: int) -> float:
  """Distance in pixels between the two objects' bounding circles at time `t` in [0, 1]."""
  def centre_and_radius(o):
    s = o.scale[0] + t * (o.scale[1] - o.scale[0])
    return ((o.x + t * o.dx) * width, (o.y + t * o.dy) * height,
            o.radius * s * min(height, width))
  ax, ay, ar = centre_and_radius(a)
  bx, by, br = centre_and_radius(b)
  return float(np.hypot(ax - bx, ay - by) - ar - br)


def render(scene: Sequence[SceneObject], num_frames: int = 16, height: int = 64,
           width: int = 64) -> np.ndarray:
  """Anti-aliased frames `[time, height, width, 3]` uint8 (coverage from a signed distance)."""
  canvas = np.zeros((num_frames, height, width, 3), np.float32)
  t = np.linspace(0.0, 1.0, num_frames, dtype=np.float32)[:, None, None]  # [time, 1, 1]
  unit = min(height, width)
  for obj in reversed(scene):  # Main object last, i.e. on top.
    scale = obj.scale[0] + t * (obj.scale[1] - obj.scale[0])
    radius = obj.radius * unit * scale  # [time, 1, 1], pixels
    cx, cy = (obj.x + t * obj.dx) * width, (obj.y + t * obj.dy) * height
    # Only the box swept by the object is evaluated.
    reach = obj.radius * unit * max(obj.scale) * _EXTENT + 1.5
    x0 = max(int(min(obj.x, obj.x + obj.dx) * width - reach), 0)
    x1 = min(int(np.ceil(max(obj.x, obj.x + obj.dx) * width + reach)), width)
    y0 = max(int(min(obj.y, obj.y + obj.dy) * height - reach), 0)
    y1 = min(int(np.ceil(max(obj.y, obj.y + obj.dy) * height + reach)), height)
    if x0 >= x1 or y0 >= y1:
      continue
    px = np.arange(x0, x1, dtype=np.float32)[None, None, :] + 0.5 - cx  # [time, 1, w]
    py = np.arange(y0, y1, dtype=np.float32)[None, :, None] + 0.5 - cy  # [time, h, 1]
    angle = obj.angle + t * obj.spin
    cos, sin = np.cos(angle) / radius, np.sin(angle) / radius
    u, v = cos * px + sin * py, cos * py - sin * px  # Object frame, radius units [time, h, w]
    shape = SHAPES[obj.shape]
    if shape == 'circle':
      dist = np.sqrt(u * u + v * v) - _CIRCLE_RADIUS
    else:
      dist = None
      for piece in _PIECES[shape]:
        d = piece[0, 0] * u + piece[0, 1] * v - piece[0, 2]
        for nx, ny, off in piece[1:]:
          np.maximum(d, nx * u + ny * v - off, out=d)
        dist = d if dist is None else np.minimum(dist, d, out=dist)
    alpha = np.clip(0.5 - dist * radius, 0.0, 1.0)[..., None]  # Pixel-wide edge ramp.
    region = canvas[:, y0:y1, x0:x1]
    region += alpha * (_RGB[obj.colour] - region)
  return (canvas + 0.5).astype(np.uint8)


_SIZE_WORDS = {'small': ('small', 'little'), 'large': ('large', 'big')}


def _diagonal_verbs(vertical: str, horizontal: str) -> list[tuple[str, str]]:
  corner = f"{'top' if vertical == 'up' else 'bottom'} {horizontal}"
  return [(f'moves {vertical} and to the {horizontal}', f'moving {vertical} and to the '
           f'{horizontal}'),
          (f'drifts diagonally {vertical} and {horizontal}',
           f'drifting diagonally {vertical} and {horizontal}'),
          (f'heads toward the {corner} corner', f'heading toward the {corner} corner'),
          (f'slides {vertical} to the {horizontal}', f'sliding {vertical} to the {horizontal}')]


# (finite, gerund) verb phrases per motion.
_VERBS = {
    'left': [('moves left', 'moving left'), ('drifts to the left', 'drifting to the left'),
             ('slides left', 'sliding left'), ('travels to the left', 'travelling to the left')],
    'right': [('moves right', 'moving right'), ('drifts to the right', 'drifting to the right'),
              ('slides right', 'sliding right'),
              ('travels to the right', 'travelling to the right')],
    'up': [('moves up', 'moving up'), ('rises', 'rising'), ('drifts upward', 'drifting upward'),
           ('slides up', 'sliding up')],
    'down': [('moves down', 'moving down'), ('falls', 'falling'),
             ('drifts downward', 'drifting downward'), ('sinks', 'sinking')],
    'grow': [('grows', 'growing'), ('gets bigger', 'getting bigger'),
             ('expands', 'expanding'), ('grows larger', 'growing larger')],
    'shrink': [('shrinks', 'shrinking'), ('gets smaller', 'getting smaller'),
               ('contracts', 'contracting'), ('shrinks down', 'shrinking down')],
    'rotate': [('rotates', 'rotating'), ('spins', 'spinning'),
               ('turns around', 'turning around'), ('spins in place', 'spinning in place')],
    'stay': [('stays still', 'staying still'), ('does not move', 'not moving'),
             ('sits in place', 'sitting in place'), ('remains still', 'remaining still')],
}
for _m in MOTIONS:
  if '-' in _m:
    _VERBS[_m] = _diagonal_verbs(*_m.split('-'))


def _join(parts: list[str]) -> str:
  return parts[0] if len(parts) == 1 else ', '.join(parts[:-1]) + ' and ' + parts[-1]


# Each template maps [(noun phrase, finite verb, gerund verb)] per object to a caption.
_TEMPLATES = (
    lambda o: _join([f'{n} {f}' for n, f, _ in o]),
    lambda o: 'on the screen, ' + _join([f'{n} is {g}' for n, _, g in o]),
    lambda o: f'{o[0][0]} {o[0][1]}' + (' while ' + _join([f'{n} {f}' for n, f, _ in o[1:]])
                                        if len(o) > 1 else ''),
    lambda o: 'we see ' + _join([f'{n} {g}' for n, _, g in o]),
    lambda o: '. '.join(f'{n} {f}' for n, f, _ in o) + '.',
    lambda o: 'a video of ' + _join([f'{n} {g}' for n, _, g in o]),
    lambda o: 'there is ' + _join([f'{n} that {f}' for n, f, _ in o]),
)


def describe(scene: Sequence[SceneObject], rng: np.random.Generator) -> str:
  """A caption naming every object's size, colour, shape and motion; the main object first."""
  phrases = []
  for obj in scene:
    shape, colour, size, motion = obj.key()
    words = _SIZE_WORDS[size][rng.integers(2)]
    finite, gerund = _VERBS[motion][rng.integers(len(_VERBS[motion]))]
    phrases.append((f'a {words} {colour} {shape}', finite, gerund))
  return _TEMPLATES[rng.integers(len(_TEMPLATES))](phrases)


def parse_caption(text: str) -> dict[str, int | None]:
  """The first-named object's `shape`, `colour` and `motion` label ids in a caption (None where
  it names none): how the world model's generated captions are scored against the labels."""
  text = ' '.join(text.lower().split())
  found: dict[str, int | None] = {}
  for key, names in (('shape', SHAPES), ('colour', COLOURS)):
    hits = [(m.start(), i) for i, name in enumerate(names)
            for m in [re.search(rf'\b{name}\b', text)] if m]
    found[key] = min(hits)[1] if hits else None
  phrases = [(m.start(), -len(phrase), MOTIONS.index(motion))
             for motion, verbs in _VERBS.items() for pair in verbs
             for phrase in pair for m in [re.search(rf'\b{re.escape(phrase)}\b', text)] if m]
  found['motion'] = min(phrases)[2] if phrases else None
  return found


def _example_parts(seed: int, index: int, height: int, width: int):
  rng = np.random.default_rng([seed, index])
  scene = sample_scene(rng, height, width)
  return scene, describe(scene, rng)


def generate_example(seed: int, index: int, num_frames: int = 16, height: int = 64,
                     width: int = 64, fps: int = 8) -> dict:
  """The features of clip `index` of stream `seed` (without `video_id`); deterministic."""
  scene, caption = _example_parts(seed, index, height, width)
  main = scene[0]
  return {
      'video': video_lib.encode_mp4(render(scene, num_frames, height, width), fps=fps),
      'caption': caption,
      'shape_label': main.shape,
      'colour_label': main.colour,
      'size_label': main.size,
      'motion_label': main.motion,
      'num_objects': len(scene),
  }


@dataclasses.dataclass(eq=False)
class MovingShapesConfig(tfds.core.BuilderConfig):
  """Clip geometry, split sizes and the seed (splits use seed, seed + 1, seed + 2)."""
  num_frames: int = 16
  height: int = 64
  width: int = 64
  num_train: int = 20_000
  num_validation: int = 500
  num_test: int = 1000
  seed: int = 0
  fps: int = 8


_SPLIT_OFFSET = {'train': 0, 'validation': 1, 'test': 2}
# Val/test scenes are deduplicated so each caption matches exactly one clip (well-posed
# retrieval); train keeps duplicates, as real data would.
_DISTINCT_SPLITS = ('validation', 'test')


def split_indices(config: MovingShapesConfig, split: str) -> list[int]:
  """Generator indices kept for `split`: 0..n-1, or the first n distinct scenes for val/test."""
  n = getattr(config, f'num_{split}')
  if split not in _DISTINCT_SPLITS:
    return list(range(n))
  seed = config.seed + _SPLIT_OFFSET[split]
  seen, kept, index = set(), [], 0
  while len(kept) < n:
    if index > 50 * n + 1000:
      raise ValueError(f'Could not find {n} distinct scenes for {split!r}.')
    rng = np.random.default_rng([seed, index])
    key = scene_key(sample_scene(rng, config.height, config.width))
    if key not in seen:
      seen.add(key)
      kept.append(index)
    index += 1
  return kept


def _generate_chunk(args: tuple[int, list[int], int, int, int, int]) -> list[dict]:
  seed, indices, num_frames, height, width, fps = args
  return [generate_example(seed, i, num_frames, height, width, fps) for i in indices]


class MovingShapes(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes moving on black, captioned; see the module docstring."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'Labels are ClassLabel features (names in the metadata).'}
  BUILDER_CONFIGS = [
      MovingShapesConfig(name='default', description='16 frames, 64×64.'),
      MovingShapesConfig(name='small', height=32, width=32, description='16 frames, 32×32.'),
      # For tests and smoke runs: builds in a few seconds.
      MovingShapesConfig(name='tiny', height=32, width=32, num_train=256, num_validation=32,
                         num_test=64, description='16 frames, 32×32, 256 train clips.'),
  ]
  DEFAULT_CONFIG_NAME = 'default'
  # TFDS otherwise locates this file via importlib_resources (not installed; also breaks when
  # `vidlang_jax` is a namespace package). It only needs the path.
  code_path = epath.Path(__file__)
  # The dataset's caption parser (see `builders.caption_parser`).
  parse_caption = staticmethod(parse_caption)

  def __init__(self, *, num_workers: int | None = None, **kwargs):
    """`num_workers` processes render + encode (default: all CPUs, or 1 once JAX is imported)."""
    self.num_workers = num_workers
    kwargs.setdefault('file_format', 'array_record')  # TFRecord would need TensorFlow.
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    labels = lambda names: tfds.features.ClassLabel(names=list(names))
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f'Procedural moving shapes, {c.num_frames}×{c.height}×{c.width} H.264 mp4 '
                     f'at {c.fps} fps. The labels describe the first-named object.'),
        features=tfds.features.FeaturesDict({
            'video': tfds.features.Tensor(shape=(), dtype=np.object_),  # mp4 bytes
            'caption': tfds.features.Text(),
            'video_id': tfds.features.Text(),
            'shape_label': labels(SHAPES),
            'colour_label': labels(COLOURS),
            'size_label': labels(SIZES),
            'motion_label': labels(MOTIONS),
            'num_objects': tfds.features.Tensor(shape=(), dtype=np.int64),
        }),
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    # One worker pool for all splits. Default: all CPUs via 'fork', unless JAX (multithreaded,
    # so fork may deadlock) is imported; then in-process unless num_workers asks for 'spawn'
    # (which re-imports `__main__`: scripts need a main guard).
    c = self.builder_config
    jax_loaded = 'jax' in sys.modules
    workers = self.num_workers or (1 if jax_loaded else os.cpu_count() or 1)
    if workers == 1 or c.num_train + c.num_validation + c.num_test < 500:  # Start-up cost.
      self._pool = None
      return super()._download_and_prepare(dl_manager, download_config)
    context = multiprocessing.get_context('spawn' if jax_loaded else 'fork')
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as self._pool:
      return super()._download_and_prepare(dl_manager, download_config)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in _SPLIT_OFFSET}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
    c = self.builder_config
    seed = c.seed + _SPLIT_OFFSET[split]
    indices = split_indices(c, split)
    chunks = [(seed, indices[i:i + 64], c.num_frames, c.height, c.width, c.fps)
              for i in range(0, len(indices), 64)]
    pool = getattr(self, '_pool', None)
    results = pool.map(_generate_chunk, chunks) if pool else map(_generate_chunk, chunks)
    for chunk, examples in zip(chunks, results):  # In order, so deterministic.
      for index, example in zip(chunk[1], examples):
        video_id = f'{split}/{index:06d}'
        yield video_id, {**example, 'video_id': video_id}
