"""N fresh one-object moving_shapes clips (16 frames, 32x32, 8 fps, as moving_shapes/small) as
mp4 + captions.csv (path,caption,shape,motion); captions_small.csv keeps the same
validation/test rows and only the first K train rows (splits as video_text_folder.split_of).

  .venv/bin/python benchmarks/finetune/make_shapes_folder.py runs/shapes_folder 2000 400
"""
import os
import sys

import numpy as np

from vidlang_jax.data import moving_shapes as ms
from vidlang_jax.data import video
from vidlang_jax.data.video_text_folder import split_of

root, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(os.path.join(root, 'clips'), exist_ok=True)
rows, index = [], 0
while len(rows) < n:
  rng = np.random.default_rng([1000, index])  # moving_shapes uses streams 0, 1, 2
  index += 1
  scene = ms.sample_scene(rng, 32, 32)
  if len(scene) != 1:  # one object: its labels are the clip's
    continue
  caption = ms.describe(scene, rng)
  path = f'clips/c{len(rows):05d}.mp4'
  with open(os.path.join(root, path), 'wb') as f:
    f.write(video.encode_mp4(ms.render(scene, 16, 32, 32), fps=8))
  rows.append((path, caption, ms.SHAPES[scene[0].shape], ms.MOTIONS[scene[0].motion]))


def write(name, keep):
  with open(os.path.join(root, name), 'w') as f:
    f.write('path,caption,shape,motion\n')
    for r in keep:
      f.write(f'{r[0]},"{r[1]}",{r[2]},{r[3]}\n')


is_train = lambda r: split_of(r[0], (0.8, 0.1, 0.1)) == 'train'
write('captions.csv', rows)
held_out = [r for r in rows if not is_train(r)]
write('captions_small.csv', held_out + [r for r in rows if is_train(r)][:k])
