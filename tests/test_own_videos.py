"""Your own videos, as the README tells a new user: a folder with a CSV (other column names,
label columns), built with `vidlang data`, trained with `vidlang train`; the classification
fine-tune and the linear probe on its labels; an unlabelled folder that trains end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vidlang_jax import config as config_lib
from vidlang_jax import train
from vidlang_jax.data import builders, video
from vidlang_jax.data import moving_shapes as ms

from helpers import eval_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACTIONS = ('grow', 'left', 'right')  # The label column: the main object's motion.


def make_folder(root, num_videos=40, labels=True, header=('path', 'caption')):
  """Clips of moving shapes whose main object grows or moves left / right, captioned, with
  their motion as an `action` column (and a `scene` column that is always 'studio')."""
  os.makedirs(root / 'clips')
  rows, seed = [], 0
  while len(rows) < num_videos:
    rng = np.random.default_rng(seed)
    seed += 1
    scene = ms.sample_scene(rng, 32, 32)[:1]
    action = ms.MOTIONS[scene[0].motion]
    if action != ACTIONS[len(rows) % len(ACTIONS)]:  # the actions in turn: balanced classes
      continue
    path = f'clips/v{len(rows)}.mp4'
    (root / path).write_bytes(video.encode_mp4(ms.render(scene, 8, 32, 32)))
    rows.append((path, ms.describe(scene, rng), action))
  columns = list(header) + (['action', 'scene'] if labels else [])
  lines = [','.join(columns)]
  for path, caption, action in rows:
    lines.append(','.join([path, f'"{caption}"'] + ([action, 'studio'] if labels else [])))
  (root / 'captions.csv').write_text('\n'.join(lines) + '\n')
  return rows


def vidlang(*args):
  """The `vidlang` command, as a user runs it (the package's __main__)."""
  result = subprocess.run([sys.executable, '-m', 'vidlang_jax', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result.stdout + result.stderr


def small(config, data_dir, steps=2):
  config.update(total_steps=steps, log_every=1, checkpoint_every=steps, eval_every=100,
                batch_size=16, peak_flops_per_device=1e11)
  config.model.video.depth = 1
  if config.model.get('text') is not None:
    config.model.text.depth = 1
  config.data.update(data_dir=data_dir, num_workers=0)
  for eval_config in config.evals.values():
    eval_config.batch_size = 16
  if 'probe' in config.evals:
    config.evals.probe.train_examples = 64
  return config


def test_label_columns_become_class_labels(tmp_path):
  rows = make_folder(tmp_path / 'src', num_videos=9, header=('contentUrl', 'name'))
  # WebVid-shaped columns, and one row whose label is empty: skipped and counted.
  csv = (tmp_path / 'src' / 'captions.csv')
  csv.write_text(csv.read_text() + 'clips/v0.mp4,"no label",,studio\n')
  builder = builders.prepare(
      'video_text_folder/labelled', str(tmp_path / 'data'), source_dir=str(tmp_path / 'src'),
      path_column='contentUrl', caption_column='name', label_columns='action,scene')
  assert builders.label_classes(builder) == {'action': sorted(ACTIONS), 'scene': ['studio']}
  assert builder.build_summary['num_skipped'] == 1
  assert 'empty label action' in builder.build_summary['skipped'][0]['reason']
  records = {r['video_id'].decode(): r for split in builder.info.splits
             for r in builder.as_data_source(split=split)}
  assert len(records) == 9
  for path, _, action in rows:
    assert sorted(ACTIONS)[records[path]['action_label']] == action
  # Read back by name alone (as `dataset=video_text_folder/labelled` does): the label features
  # and their names come from the stored metadata.
  again = builders.get_builder('video_text_folder/labelled', str(tmp_path / 'data'))
  assert again.is_prepared() and builders.label_classes(again) == builders.label_classes(builder)
  assert builders.num_classes(again, {'action': 0, 'scene': 0}) == {'action': 3, 'scene': 1}
  with pytest.raises(ValueError, match="no label feature.*'colour_label'"):
    builders.num_classes(again, {'colour': 0})


def test_annotation_column_errors_name_the_columns(tmp_path):
  make_folder(tmp_path / 'src', num_videos=2, header=('video_id', 'sentence'))
  with pytest.raises(ValueError, match=r"missing column\(s\) \['path', 'caption'\].*path_column"):
    builders.prepare('video_text_folder', str(tmp_path / 'd1'), source_dir=str(tmp_path / 'src'))
  with pytest.raises(ValueError, match=r"missing column\(s\) \['mood'\]"):
    builders.prepare('video_text_folder', str(tmp_path / 'd2'), source_dir=str(tmp_path / 'src'),
                     path_column='video_id', caption_column='sentence', label_columns=('mood',))
  # JSONL with a `labels` object.
  (tmp_path / 'j').mkdir()
  (tmp_path / 'j' / 'clips').symlink_to(tmp_path / 'src' / 'clips')
  (tmp_path / 'j' / 'captions.jsonl').write_text(''.join(
      json.dumps({'path': f'clips/v{i}.mp4', 'caption': f'clip {i}',
                  'labels': {'mood': ['calm', 'busy'][i]}}) + '\n' for i in range(2)))
  built = builders.prepare('video_text_folder', str(tmp_path / 'd3'),
                           source_dir=str(tmp_path / 'j'), label_columns=('mood',))
  assert builders.label_classes(built) == {'mood': ['busy', 'calm']}


def test_own_labelled_videos_pretrain_probe_finetune(tmp_path):
  """The README's commands on a labelled folder: build with the CLI, two-tower run (its probe
  reads the `action` labels), then the classification fine-tune from it, per-label accuracy."""
  make_folder(tmp_path / 'src')
  data_dir = str(tmp_path / 'data')
  out = vidlang('data', 'video_text_folder', '--source_dir', str(tmp_path / 'src'),
                '--label_columns', 'action,scene', '--save_as', 'mine', '--data_dir', data_dir)
  assert 'video_text_folder' in out and 'wrote' in out
  dataset = 'video_text_folder/mine'

  pretrained = str(tmp_path / 'mine')
  config = small(config_lib.load(f'configs/two_tower.py:tiny,dataset={dataset},labels=action'),
                 data_dir)
  assert not config.evals.probe.subset  # moving_shapes' one-object rule is not applied
  train.train_and_evaluate(config, pretrained)
  results = eval_json(pretrained, 2)
  assert 0 <= results['t2v_r1'] <= 1 and 0 <= results['probe_action_acc'] <= 1
  assert results['probe_num_test'] == len(builders.data_source(dataset, 'test', data_dir))

  finetuned = str(tmp_path / 'mine_action')
  spec = (f'configs/finetune_classification.py:tiny,dataset={dataset},labels=action,'
          f'init={pretrained}')
  config = small(config_lib.load(spec), data_dir)
  model = train.build_model(config)
  assert model.num_classes == {'action': 3}  # from the dataset's label feature
  train.train_and_evaluate(config, finetuned)
  results = eval_json(finetuned, 2)
  assert 0 <= results['action_acc'] <= 1
  assert set(results['action_acc_per_class']) <= set(ACTIONS)
  test_labels = [r['action_label'] for r in builders.data_source(dataset, 'test', data_dir)]
  per_class = results['action_acc_per_class']
  assert results['action_acc'] == pytest.approx(
      sum(per_class[sorted(ACTIONS)[i]] for i in test_labels) / len(test_labels))


def test_own_unlabelled_videos_train_end_to_end(tmp_path):
  """An unlabelled folder, the README's two commands: training ends with the retrieval JSON;
  the linear probe, which needs labels, is left out with a notice instead of crashing."""
  make_folder(tmp_path / 'src', labels=False)
  data_dir, workdir = str(tmp_path / 'data'), str(tmp_path / 'run')
  vidlang('data', 'video_text_folder', '--source_dir', str(tmp_path / 'src'),
          '--annotations', str(tmp_path / 'src' / 'captions.csv'), '--save_as', 'my_videos',
          '--data_dir', data_dir)
  out = vidlang('train', '--config', 'configs/two_tower.py:tiny,dataset=video_text_folder/'
                'my_videos,steps=2', '--workdir', workdir, '--data_dir', data_dir,
                '--config.batch_size=16', '--config.data.num_workers=0',
                '--config.model.video.depth=1', '--config.model.text.depth=1',
                '--config.evals.retrieval.batch_size=16', '--config.peak_flops_per_device=1e11')
  assert "Evaluator 'probe' (linear_probe) left out" in out and 'shape_label' in out
  assert 'text -> video' in out  # the retrieval table
  results = eval_json(workdir, 2)
  assert 0 <= results['t2v_r1'] <= 1 and not any(k.startswith('probe') for k in results)


def test_msrvtt_annotations_build_and_train_with_captions_grouped(tmp_path):
  """MSR-VTT's own JSON (`sentences` of `video_id` → caption, 3 per clip here; clips named
  `<video_id>.mp4`) builds with every caption its own example, the captions of a clip in one
  split; a tiny two-tower trains on it and retrieval ranks each clip once per caption."""
  src = tmp_path / 'src'
  rows = make_folder(src, num_videos=30, labels=False)
  (src / 'captions.csv').unlink()  # The folder's annotations are MSR-VTT's file instead.
  sentences = []
  for i, (path, caption, _) in enumerate(rows):
    os.rename(src / path, src / f'video{i}.mp4')
    sentences += [{'video_id': f'video{i}', 'caption': text, 'sen_id': len(sentences)}
                  for text in (caption, f'clip {i}: {caption}', f'{caption} again')]
  sentences.insert(5, {'video_id': 'video1'})  # A sentence without a caption: skipped.
  info = {'info': {'year': 2016}, 'videos': [{'video_id': f'video{i}', 'split': 'train'}
                                             for i in range(len(rows))],
          'sentences': sentences}
  (src / 'train_val_videodatainfo.json').write_text(json.dumps(info, indent=2))
  data_dir = str(tmp_path / 'data')
  builder = builders.prepare('video_text_folder/msrvtt', data_dir, source_dir=str(src))
  summary = builder.build_summary
  assert summary['skipped_by_kind'] == {'missing_column': 1}
  assert summary['skipped'][0]['line'] == 6
  assert sum(summary['examples'].values()) == 3 * len(rows)
  test_ids = [r['video_id'].decode() for r in builder.as_data_source(split='test')]
  clips = {i.partition('#')[0] for i in test_ids}
  assert len(test_ids) == 3 * len(clips) and all(c.endswith('.mp4') for c in clips)

  workdir = str(tmp_path / 'run')
  config = small(config_lib.load('configs/two_tower.py:tiny,dataset=video_text_folder/msrvtt'),
                 data_dir)
  config.evals = {'retrieval': config.evals.retrieval}
  train.train_and_evaluate(config, workdir)
  results = eval_json(workdir, 2)
  assert results['chance_r1'] == pytest.approx(1 / len(clips))  # one candidate per clip
  assert 0 <= results['t2v_r1'] <= 1
