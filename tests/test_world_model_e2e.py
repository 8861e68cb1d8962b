"""World model end to end on the tiny dataset: tokenizer run -> LM stage 1 (token cache,
packed rows, every evaluator) -> stage 2 from stage 1's checkpoint (longer rows, larger RoPE
theta) -> generation in both directions from the trained run."""

import json
import os

import jax
import numpy as np

from vidlang_jax import checkpoint as checkpoint_lib
from vidlang_jax import config as config_lib
from vidlang_jax import generate, inputs, sharding, train
from vidlang_jax.data import moving_shapes, sequences

from helpers import assert_release_round_trip, eval_json


def small_lm(spec, data_dir, steps=2):
  config = config_lib.load(spec)
  config.update(total_steps=steps, log_every=1, checkpoint_every=steps, eval_every=100,
                peak_flops_per_device=1e11)
  config.batch_size = 8  # one row per fake device
  config.data.update(name='moving_shapes/tiny', data_dir=data_dir, num_workers=0)
  config.model.depth = 1
  config.evals.perplexity.update(num_examples=16, batch_size=8)
  config.evals.captioning.update(num_examples=32, batch_size=8)
  config.evals.needle.update(samples=1, depths=(0.0, 1.0))
  config.evals.text_to_video.num_samples = 2
  return config


def test_tokenizer_then_two_lm_stages_then_generate(tiny_data_dir, tmp_path):
  tokenizer_dir, stage1, stage2 = (str(tmp_path / n) for n in ('tok', 'lm1', 'lm2'))
  tok = config_lib.load('configs/video_tokenizer.py:tiny')
  tok.update(total_steps=2, log_every=1, checkpoint_every=2, batch_size=8,
             peak_flops_per_device=1e11)
  tok.data.update(name='moving_shapes/tiny', data_dir=tiny_data_dir, num_workers=0)
  tok.evals.video_tokenizer.update(num_examples=8, batch_size=8)
  train.train_and_evaluate(tok, tokenizer_dir)

  # The tiny stages are 1K and 4K tokens; rows here are 512 and 1024 to keep the test fast.
  spec = f'configs/world_model.py:tiny,stage=1,tokenizer={tokenizer_dir}'
  config = small_lm(spec, tiny_data_dir)
  config.data.sequence_length = 512
  config.evals.needle.lengths = (128, 512)
  train.train_and_evaluate(config, stage1)
  results = eval_json(stage1, 2)
  for key in ('perplexity_text', 'perplexity_video'):
    assert np.isfinite(results[key]) and results[key] > 1, key
  for key in ('caption_shape_acc', 'caption_motion_acc', 'caption_shape_motion_acc',
              'needle_128_0.00', 'needle_512_1.00', 'needle_512', 'needle_mean',
              't2v_code_accuracy'):
    assert 0 <= results[key] <= 1, key
  assert os.path.getsize(os.path.join(stage1, 't2v', '2.png')) > 0
  with open(os.path.join(stage1, 'captions', '2.txt')) as f:
    assert len(f.read().splitlines()) > 0  # one line per one-object test clip
  metrics = [json.loads(line) for line in open(os.path.join(stage1, 'metrics.jsonl'))]
  assert {'text_loss', 'video_loss', 'accuracy'} <= set(metrics[-2])  # [-1]: the evals
  # The world-model evaluators share one session: tokenizers loaded once.
  stage1_config = small_lm(spec, tiny_data_dir)
  evaluators = train.build_evaluators(stage1_config, train.build_model(stage1_config),
                                      sharding.make_mesh(stage1_config.mesh))
  assert len({id(e.session) for e in evaluators.values()}) == 1

  # The training batches: clip rows, then a quarter of the rows with needle haystacks only;
  # the iterator restores from its state (the trainer checkpoints it).
  rows = inputs.lookup(stage1_config.data).train_iterator(stage1_config.data,
                                                         global_batch_size=8, seed=0)
  state = rows.get_state()
  batch = next(rows)
  has_fact = (batch['inputs'] == sequences.vocabulary(stage1_config.data).special('fact'))
  np.testing.assert_array_equal(has_fact.any(axis=1), [False] * 6 + [True] * 2)
  rows.set_state(state)
  np.testing.assert_array_equal(next(rows)['inputs'], batch['inputs'])

  # Exported with its video tokenizer inside, and loaded back: the same perplexities.
  release_dir = str(tmp_path / 'lm1_release')
  assert_release_round_trip(stage1, 2, release_dir, tmp_path, evals=('perplexity',))
  assert os.path.exists(os.path.join(release_dir, 'video_tokenizer', 'params'))

  # Stage 2 loads stage 1's release; with a learning rate of 0 its params stay stage 1's.
  config = small_lm(f'{spec.replace("stage=1", "stage=2")},init={release_dir}', tiny_data_dir,
                    steps=1)
  config.data.sequence_length = 1024
  config.optimizer.learning_rate = 0.0
  config.evals = {}
  assert config.model.rope_theta > small_lm(spec, tiny_data_dir).model.rope_theta
  train.train_and_evaluate(config, stage2)
  before, _ = checkpoint_lib.read_params(stage1)
  after, _ = checkpoint_lib.read_params(stage2)
  assert before.keys() == after.keys()
  for path in before:
    np.testing.assert_array_equal(after[path], before[path])
  # The larger theta reaches the model: with the same params, stage 2's logits equal stage 1's
  # at position 0 (no rotation) and differ at every later position.
  tokens = np.random.default_rng(0).integers(0, config.model.vocab_size, (1, 64))
  params2, _ = checkpoint_lib.read_params_tree(stage2)
  logits = [np.asarray(train.build_model(c).clone(attention='dot_product').apply(
      {'params': params2}, tokens)) for c in (small_lm(spec, tiny_data_dir), config)]
  np.testing.assert_allclose(logits[1][:, 0], logits[0][:, 0], atol=1e-5)
  assert (np.abs(logits[1] - logits[0]).max(axis=-1)[:, 1:] > 1e-4).all()

  # Both directions from the trained stage-1 run.
  model = train.build_model(config)
  params, _ = checkpoint_lib.read_params_tree(stage1)
  session = generate.WorldModelSession(model, config.data, temperature=1.0, top_k=10)
  codes = session.video_codes(params, 'a big red star moves left', jax.random.key(0))
  assert codes.shape == (4, 8, 8) and codes.min() >= 0 and codes.max() < 1000
  frames = session.frames(codes[None])
  assert frames.shape == (1, 4, 32, 32, 3) and 0 <= frames.min() and frames.max() <= 1
  clip = moving_shapes.generate_example(0, 3, 16, 32, 32)['video']
  caption = session.captions(params, session.tokenize_mp4(clip)[None])[0]
  assert isinstance(caption, str)
