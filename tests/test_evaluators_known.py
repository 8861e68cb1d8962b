"""Every evaluator on a model whose answer is known exactly, through its real path (built by the
trainer's `build_evaluators`, the shared `outputs()` loop over the tiny dataset, `run_evals`
writing eval/<step>.json, which is read back): each metric must equal the value worked out
here, so an off-by-one rank, a padded row counted, a wrong PSNR peak or a needle compared at
the wrong positions fails, where range checks (`0 <= x <= 1`) pass.

The stand-in models need no training: they find each input clip among the split's clips
(`find_clip`) and return a row of a table passed in as params, or compute their answer from
the input itself. Batch sizes leave the last batch padded, so counting padding changes the
numbers.
"""

import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from vidlang_jax import checkpoint as checkpoint_lib
from vidlang_jax import config as config_lib
from vidlang_jax import inputs, sharding, train
from vidlang_jax.data import builders, pipeline, sequences
from vidlang_jax.data import caption_tokenizer as tokenizer_lib
from vidlang_jax.evaluators import linear_probe
from vidlang_jax.models import masked_video as mv
from vidlang_jax.pixels import MEAN_RGB, STD_RGB, pixels_01

from helpers import eval_json

STEP = 3
PAD = tokenizer_lib.PAD_ID


def load(spec, data_dir, name, **eval_overrides):
  """A family's tiny config on the tiny dataset with only its evaluator `name`."""
  config = config_lib.load(spec)
  config.data.update(name='moving_shapes/tiny', data_dir=data_dir, num_workers=0)
  config.evals = ml_collections.ConfigDict({name: config.evals[name]})
  config.evals[name].update(eval_overrides)
  return config


def evaluate(config, model, params, workdir):
  """The trainer's path: build the evaluators, run them, write and read eval/<STEP>.json."""
  evaluators = train.build_evaluators(config, model, sharding.make_mesh(config.mesh))
  assert list(evaluators) == list(config.evals)
  results = train.run_evals(evaluators, params, STEP, workdir)
  written = eval_json(workdir, STEP)
  assert written['step'] == STEP and set(written) == {'step', *results}
  return written


def clips(data_config, split, keys=(), max_examples=None):
  """The real clips of `split` as the evaluators read them: {'video', 'text', *keys}."""
  batches = list(pipeline.eval_batches(data_config, split, 64, keys=tuple(keys),
                                       max_examples=max_examples))
  return {k: np.concatenate([b[k][b['mask']] for b in batches]) for k in ('video', 'text', *keys)}


def find_clip(table, video):
  """[batch] index of each clip `video` [batch, time, height, width, 3] among the rows of
  `table` (`flat`): the nearest, which is its exact copy."""
  x = video.reshape(len(video), -1)
  return jnp.argmin(jnp.sum(table * table, axis=1)[None] - 2 * x @ table.T, axis=1)


def flat(video):
  """Clips `[clips, time, height, width, 3]` -> the rows `find_clip` searches, checked to be
  far apart (squared distances > 100; float32 rounding in `find_clip` is < 1)."""
  table = np.asarray(video, np.float32).reshape(len(video), -1)
  squares = np.sum(np.square(table.astype(np.float64)), axis=1)
  distances = squares[:, None] + squares[None] - 2 * table.astype(np.float64) @ table.T
  np.fill_diagonal(distances, np.inf)
  assert distances.min() > 100, distances.min()
  return table


def picture_rows(path, rows, num_frames, size):
  """A `pixels.image_grid` PNG -> uint8 [examples, rows, height, time * width, 3] (gaps cut)."""
  image = np.asarray(Image.open(path).convert('RGB'), np.int32)
  blocks = image.reshape(-1, rows, size + 1, num_frames * (size + 1), 3)
  return blocks[:, :, :size]


# ------------------------------------------------------------------ clip evaluators


class ClipTable(nn.Module):
  """Looks each clip up in params['videos'] and answers with its row of a params table:
  `encode_video` / `encode_text` (retrieval; a caption is found among params['texts']),
  `video_features` (linear probe), `__call__` -> {label: logits} (classification)."""

  def row(self, name, video):
    return jax.tree.map(lambda t: t[find_clip(self.get_variable('params', 'videos'), video)],
                        self.get_variable('params', name))

  def encode_video(self, video):
    return self.row('video_emb', video)

  def encode_text(self, text):
    texts = self.get_variable('params', 'texts')  # [clips, max_text_len]
    index = jnp.argmax(jnp.all(text[:, None] == texts[None], axis=-1), axis=1)
    return self.get_variable('params', 'text_emb')[index]

  def video_features(self, video):
    return self.row('features', video)

  def __call__(self, video):
    return self.row('logits', video)


def class_sizes(classes):
  """How many clips share each clip's class."""
  classes = np.asarray(classes)
  return np.array([np.sum(classes == c) for c in classes])


@pytest.mark.parametrize('encoder', ['clip', 'shape', 'constant'])
def test_retrieval_ranks_of_known_encoders(tiny_data_dir, tmp_path, encoder):
  """Both towers embed a clip as the one-hot of its class: its own index (a perfect encoder),
  its shape label, or one class for all. A text then scores 1 on every video of its class and
  0 elsewhere; ties count against the model, so each clip ranks at its class size both ways:
  R@k = 1 and median rank 1 for the perfect encoder, R@k = 0 and rank 64 for the constant one
  (chance_r1 is 1/64 however the model does)."""
  config = load('configs/two_tower.py:tiny', tiny_data_dir, 'retrieval', batch_size=24)
  test = clips(config.data, 'test', keys=('shape_label',))
  num = len(test['video'])
  assert num == 64 and len({tuple(t) for t in test['text']}) == num  # distinct captions
  classes = {'clip': np.arange(num), 'shape': test['shape_label'],
             'constant': np.zeros(num, int)}[encoder]
  onehot = np.eye(num, dtype=np.float32)[classes]
  params = {'videos': flat(test['video']), 'texts': test['text'], 'video_emb': onehot,
            'text_emb': onehot}
  results = evaluate(config, ClipTable(), params, str(tmp_path))

  ranks = class_sizes(classes)
  expected = {'chance_r1': 1 / num}
  for direction in ('t2v', 'v2t'):
    expected.update({f'{direction}_r{k}': float(np.mean(ranks <= k)) for k in (1, 5, 10)})
    expected[f'{direction}_median_rank'] = float(np.median(ranks))
    expected[f'{direction}_mean_rank'] = float(np.mean(ranks))
  assert results == pytest.approx({'step': STEP, **expected}, abs=1e-12)
  if encoder == 'clip':
    assert results['t2v_r1'] == results['v2t_r1'] == 1.0 and results['t2v_median_rank'] == 1.0
  if encoder == 'constant':
    assert results['t2v_r10'] == results['v2t_r10'] == 0.0
    assert results['t2v_median_rank'] == results['v2t_median_rank'] == num


def majority(labels, num_classes):
  """The most frequent class (the lowest id on a tie, as `np.argmax` picks)."""
  return np.argmax(np.bincount(labels, minlength=num_classes))


def test_linear_probe_on_label_features_and_on_constant_features(tiny_data_dir, tmp_path):
  """Features that are the labels (one-hot shape and motion) are probed perfectly: accuracy 1.
  Constant features leave the ridge only its bias, so it predicts the most frequent class of
  the fit examples (the lowest id on a tie) and scores that class's test frequency, with the
  first L2 of the grid (every strength validates the same). On the first 128 training clips
  the one-object clips' most frequent motion is not all clips' one, so fitting on the wrong
  clips shows."""
  config = load('configs/two_tower.py:tiny', tiny_data_dir, 'probe', train_examples=128,
                batch_size=24)
  eval_config = config.evals.probe
  labels = tuple(eval_config.labels)
  assert labels == ('shape', 'motion') and dict(eval_config.subset) == {'num_objects': 1}
  keys = tuple(f'{label}_label' for label in labels) + ('num_objects',)
  train_clips = clips(config.data, 'train', keys, max_examples=eval_config.train_examples)
  test = clips(config.data, 'test', keys)
  both = {k: np.concatenate([train_clips[k], test[k]]) for k in test}
  names = builders.label_classes(builders.get_builder(config.data.name, tiny_data_dir))
  onehots = np.concatenate([np.eye(len(names[label]), dtype=np.float32)[both[f'{label}_label']]
                            for label in labels], axis=1)
  single = {'train': train_clips['num_objects'] == 1, 'test': test['num_objects'] == 1}

  for features in ('labels', 'constant'):
    params = {'videos': flat(both['video']),
              'features': onehots if features == 'labels' else np.zeros_like(onehots)}
    results = evaluate(config, ClipTable(), params, str(tmp_path / features))
    expected = {'step': STEP, 'probe_num_test': int(single['test'].sum())}
    for label in labels:
      key, num_classes = f'{label}_label', len(names[label])
      if features == 'labels':
        acc = acc_all = 1.0
      else:
        fit = majority(train_clips[key][single['train']], num_classes)
        acc = np.mean(test[key][single['test']] == fit)
        acc_all = np.mean(test[key] == majority(train_clips[key], num_classes))
      expected.update({f'probe_{label}_acc': acc, f'probe_{label}_acc_all_clips': acc_all,
                       f'probe_{label}_l2': linear_probe.L2_GRID[0]})
    assert results == pytest.approx(expected, abs=1e-12), features
  motion = train_clips['motion_label']
  assert majority(motion[single['train']], 12) != majority(motion, 12)
  assert expected['probe_motion_acc'] > 0


@pytest.mark.parametrize('predicts', ['truth', 'constant'])
def test_classification_of_a_known_classifier(tiny_data_dir, tmp_path, predicts):
  """A classifier that outputs the true labels scores 1 overall, on every class and on the
  one-object subset; one that always outputs class k scores k's frequency, 1 on class k and 0
  on every other class."""
  config = load('configs/finetune_classification.py:tiny', tiny_data_dir, 'classification',
                batch_size=24)
  labels = list(config.model.num_classes)
  names = builders.label_classes(builders.get_builder(config.data.name, tiny_data_dir))
  keys = tuple(f'{label}_label' for label in labels) + ('num_objects',)
  test = clips(config.data, 'test', keys)
  single = test['num_objects'] == 1
  constant = {'shape': names['shape'].index('star'), 'motion': names['motion'].index('rotate')}
  predicted = {label: (test[f'{label}_label'] if predicts == 'truth'
                       else np.full(len(single), constant[label])) for label in labels}
  params = {'videos': flat(test['video']),
            'logits': {label: np.eye(len(names[label]), dtype=np.float32)[predicted[label]]
                       for label in labels}}
  results = evaluate(config, ClipTable(), params, str(tmp_path))

  expected = {'step': STEP}
  for label in labels:
    truth = test[f'{label}_label']
    present = [i for i in range(len(names[label])) if np.any(truth == i)]
    if predicts == 'truth':
      acc, acc_single, per_class = 1.0, 1.0, {names[label][i]: 1.0 for i in present}
    else:
      k = constant[label]
      acc, acc_single = np.mean(truth == k), np.mean(truth[single] == k)
      per_class = {names[label][i]: float(i == k) for i in present}
      assert 0 < acc < 1 and k in present
    expected.update({f'{label}_acc': acc, f'{label}_acc_single_object': acc_single})
    assert results.pop(f'{label}_acc_per_class') == per_class, label
  assert results == pytest.approx(expected, abs=1e-12)


class Reconstructor(nn.Module):
  """An MAE stand-in that sees the whole clip: it predicts the normalised target of the true
  pixels moved by `masked_error` on masked tubelets and `visible_error` on visible ones (towards
  mid-grey, so that they stay in [0, 1]), or zeros when `masked_error` is None."""

  tubelet: tuple[int, int, int] = (2, 8, 8)
  var_eps: float = 1e-6
  masked_error: float | None = 0.0
  visible_error: float = 0.0

  def __call__(self, video, mask):
    target, mean, std = mv.tubelet_targets(video, self.tubelet, True, self.var_eps)
    if self.masked_error is None:
      return {'pred': jnp.zeros_like(target)}
    truth = mv.patchify(pixels_01(video), self.tubelet)
    truth = truth.reshape(*truth.shape[:1], -1, truth.shape[-1] // 3, 3)  # [b, tokens, p, c]
    error = jnp.where(mask.mask[:, :, None, None], self.masked_error, self.visible_error)
    pixels = jnp.where(truth < 0.5, truth + error, truth - error)
    return {'pred': ((pixels - mean) / std).reshape(target.shape)}


def test_reconstruction_psnr_of_known_reconstructions(tiny_data_dir, tmp_path):
  """PSNR over the masked tubelets (the visible ones are 0.3 off in every run and must not
  count): exact ones hit the cap of `pixels.psnr` (MSE floored at 1e-10: 100 dB), 0.1 off on
  every masked pixel is 20 dB, and zero normalised targets predict each tubelet's own mean,
  which is the baseline (the same in every run: it does not depend on the model)."""
  config = load('configs/masked_video.py:tiny', tiny_data_dir, 'recon', num_examples=40,
                batch_size=16)
  assert config.loss.normalize_target and config.masking.kind == 'tube'
  common = dict(tubelet=tuple(config.model.video.tubelet), var_eps=config.loss.target_var_eps)
  runs = {}
  for name, error in (('exact', 0.0), ('error', 0.1), ('zeros', None)):
    model = Reconstructor(masked_error=error, visible_error=0.3, **common)
    runs[name] = evaluate(config, model, {}, str(tmp_path / name))
  assert runs['exact']['recon_psnr'] == 100.0
  assert runs['error']['recon_psnr'] == pytest.approx(-20 * math.log10(0.1), abs=1e-4)
  baseline = runs['zeros']['recon_psnr_mean_baseline']
  assert runs['zeros']['recon_psnr'] == baseline
  assert {r['recon_psnr_mean_baseline'] for r in runs.values()} == {baseline}
  # The picture: per example the original, the masked input and the reconstruction; an exact
  # reconstruction is the original again.
  data = config.data
  grid = picture_rows(os.path.join(tmp_path, 'exact', 'recon', f'{STEP}.png'), 3,
                      data.num_frames, data.image_size)
  assert len(grid) == config.evals.recon.num_images
  np.testing.assert_allclose(grid[:, 2], grid[:, 0], atol=1)
  assert np.abs(grid[:, 1] - grid[:, 0]).max() > 100  # tubelets greyed out


class Tokenizer(nn.Module):
  """A video tokenizer stand-in: reconstructs the clip with every pixel moved by `error`
  towards mid-grey (in [0, 1]; `error=0` returns the input itself), and codes it as
  `[batch, time, 4, 4]` tokens equal to the clip's index in params['videos'] (`distinct`) or
  to 0."""

  error: float = 0.0
  distinct: bool = True

  def __call__(self, video):
    pixels = jnp.clip(pixels_01(video), 0.0, 1.0)
    pixels = jnp.where(pixels < 0.5, pixels + self.error, pixels - self.error)
    recon = video if self.error == 0 else (pixels - MEAN_RGB) / STD_RGB
    index = find_clip(self.get_variable('params', 'videos'), video)
    tokens = jnp.broadcast_to((index if self.distinct else 0 * index)[:, None, None, None],
                              (len(video), video.shape[1], 4, 4)).astype(jnp.int32)
    return recon, tokens


def test_video_tokenizer_psnr_and_code_statistics(tiny_data_dir, tmp_path):
  """Read from eval/<step>.json: an exact reconstruction is at the PSNR cap (100 dB), an error
  of 0.1 on every pixel 20 dB. Tokens equal to the clip's index use 40 codes of 1000 evenly
  (usage 0.04, perplexity 40: padded copies of the last clip would skew the perplexity); one
  code for everything is usage 1/1000, perplexity 1."""
  config = load('configs/video_tokenizer.py:tiny', tiny_data_dir, 'video_tokenizer',
                num_examples=40, batch_size=16)
  num_codes = math.prod(config.model.levels)
  assert num_codes == 1000
  test = clips(config.data, 'test', max_examples=40)
  params = {'videos': flat(test['video'])}
  exact = evaluate(config, Tokenizer(error=0.0), params, str(tmp_path / 'exact'))
  assert exact['tokenizer_psnr'] == 100.0
  assert exact == pytest.approx({'step': STEP, 'tokenizer_psnr': 100.0, 'code_usage': 40 / 1000,
                                 'code_perplexity': 40.0}, abs=1e-12)
  error = evaluate(config, Tokenizer(error=0.1, distinct=False), params, str(tmp_path / 'error'))
  assert error == pytest.approx({'step': STEP, 'tokenizer_psnr': 20.0, 'code_usage': 1 / 1000,
                                 'code_perplexity': 1.0}, abs=1e-4)
  grid = picture_rows(os.path.join(tmp_path, 'exact', 'video_tokenizer', f'{STEP}.png'), 2,
                      config.data.num_frames, config.data.image_size)
  assert len(grid) == 4
  np.testing.assert_array_equal(grid[:, 1], grid[:, 0])  # original over reconstruction


# ------------------------------------------------------------------ world-model evaluators


@pytest.fixture(scope='module')
def tokenizer_run(tiny_data_dir, tmp_path_factory):
  """An untrained video tokenizer run (config.json and a checkpoint of its initial params, as
  the trainer writes them): the world-model evaluators read the test clips through its token
  cache, and known-answer LMs need no trained codes."""
  workdir = str(tmp_path_factory.mktemp('tokenizer'))
  config = config_lib.load('configs/video_tokenizer.py:tiny')
  config.data.update(name='moving_shapes/tiny', data_dir=tiny_data_dir, num_workers=0)
  model = train.build_model(config)
  video = jnp.zeros((1, config.data.num_frames, config.data.image_size, config.data.image_size,
                     3))
  # LeCun-normal kernels and zero biases drawn in numpy: `model.init` compiles for seconds.
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), video)['params'])
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (rng.normal(size=s.shape) / math.sqrt(math.prod(s.shape[:-1]))
                                   if len(s.shape) > 1 else np.zeros(s.shape)).astype(s.dtype),
                        shapes)
  with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
    f.write(config.to_json())
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                             async_save=False)
  checkpointer.save(1, {'params': params}, None, config.to_dict())
  checkpointer.close()
  return workdir


def world_model(tokenizer_run, data_dir, name, **eval_overrides):
  """The tiny world-model config with evaluator `name` on the first 32 test clips (one token
  cache for all these tests)."""
  return load(f'configs/world_model.py:tiny,stage=1,tokenizer={tokenizer_run}', data_dir, name,
              num_examples=32, **eval_overrides)


def fed_tokens(module, tokens, positions):
  """Decoding: (every token fed so far `[batch, cache length]`, kept in the `cache`
  collection, and the position of the last one `[batch]`); None while the generator sizes
  the cache."""
  cache = module.variable('cache', 'tokens', jnp.zeros, tokens.shape, jnp.int32)
  if module.is_initializing():
    return None
  cache.value = cache.value.at[jnp.arange(len(tokens))[:, None], positions].set(tokens)
  return cache.value, positions[:, -1]


def choosing(ids, tokens, vocab_size):
  """Logits `[batch, length, vocab]` that pick `ids` [batch] next, greedy or sampled (a margin
  of 100 beats any Gumbel noise)."""
  logits = 100.0 * jax.nn.one_hot(ids, vocab_size)
  return jnp.broadcast_to(logits[:, None], (*tokens.shape, vocab_size))


class StandInLM(nn.Module):
  """The fields of a world model that the evaluators and the generator read or clone
  (`decode`, `attention`, `remat`), and the logits' width."""

  vocab_size: int = 0
  decode: bool = False
  attention: str = 'ring'
  remat: bool = False


class FixedLM(StandInLM):
  """The same logits after every token: `video_logit` on every id from `text_size` on (video
  codes and structure tokens), `eos_logit` on EOS, 0 on the other text ids."""

  text_size: int = 0
  video_logit: float = 0.0
  eos_logit: float = 0.0

  def __call__(self, tokens, positions=None, segment_ids=None):
    ids = jnp.arange(self.vocab_size)
    row = jnp.where(ids >= self.text_size, self.video_logit,
                    jnp.where(ids == tokenizer_lib.EOS_ID, self.eos_logit, 0.0))
    return jnp.broadcast_to(row, (*tokens.shape, self.vocab_size))


class NeedleCopier(StandInLM):
  """An induction head: the next token is the one after the latest earlier occurrence of the
  last two (PAD when there is none), so `<fact> key` is answered with the hidden value. With
  `whole_value=False` it copies only right after `<fact>`: the value's first token, never the
  second."""

  fact: int = 0
  whole_value: bool = True

  @nn.compact
  def __call__(self, tokens, positions=None, segment_ids=None):
    fed = fed_tokens(self, tokens, positions)
    if fed is None:
      return jnp.zeros((*tokens.shape, self.vocab_size))
    seen, last = fed
    at = lambda i: jnp.take_along_axis(seen, i[:, None], axis=1)[:, 0]
    before, current = at(last - 1), at(last)
    ends = jnp.arange(1, seen.shape[1])  # of the pairs (end - 1, end)
    hits = ((seen[:, :-1] == before[:, None]) & (seen[:, 1:] == current[:, None])
            & (ends[None] < last[:, None]))
    latest = jnp.max(jnp.where(hits, ends[None], 0), axis=1)
    copied = jnp.where(latest > 0, at(latest + 1), PAD)
    if not self.whole_value:
      copied = jnp.where(before == self.fact, copied, PAD)
    return choosing(copied, tokens, self.vocab_size)


class TableLM(StandInLM):
  """Continues a prompt of params['prompts'] (rows padded with -1, lengths in
  params['lengths']) with its row of params['continuations'] (its last token once past it)."""

  @nn.compact
  def __call__(self, tokens, positions=None, segment_ids=None):
    fed = fed_tokens(self, tokens, positions)
    if fed is None:
      return jnp.zeros((*tokens.shape, self.vocab_size))
    seen, last = fed
    prompts, lengths, continuations = (self.get_variable('params', k) for k in (
        'prompts', 'lengths', 'continuations'))
    match = (seen[:, None, :prompts.shape[1]] == prompts[None]) | (prompts[None] < 0)
    row = jnp.argmax(jnp.all(match, axis=-1), axis=1)  # [batch]
    step = jnp.clip(last - lengths[row] + 1, 0, continuations.shape[1] - 1)
    return choosing(continuations[row, step], tokens, self.vocab_size)


def padded(rows, value):
  """Ragged int rows -> one array, right-padded with `value`."""
  out = np.full((len(rows), max(map(len, rows))), value, np.int32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


def test_perplexity_of_fixed_logits(tiny_data_dir, tokenizer_run, tmp_path):
  """With the same logits everywhere the NLL of a target depends only on its id: log Z minus
  its logit. Video targets (codes and structure, weighted in the text -> video documents) have
  perplexity Z / e^a; text targets (the captions of the video -> text documents, one EOS each)
  Z e^(-b * clips / caption tokens). Weight-0 conditioning tokens and padding rows counted
  would shift the EOS share."""
  config = world_model(tokenizer_run, tiny_data_dir, 'perplexity', batch_size=24)
  vocab = sequences.vocabulary(config.data)
  a, b = 1.0, 2.0
  model = FixedLM(vocab_size=vocab.size, text_size=vocab.text_size, video_logit=a, eos_logit=b)
  results = evaluate(config, model, {}, str(tmp_path))

  tokenizer = tokenizer_lib.load_tokenizer(pipeline.tokenizer_path(config.data))
  captions = inputs.token_cache(config.data, 'test', 32).captions
  text_targets = sum(len(sequences.caption_ids(tokenizer, c)) for c in captions)  # BOS..EOS
  z = (vocab.text_size - 1) + math.exp(b) + (vocab.size - vocab.text_size) * math.exp(a)
  assert results == pytest.approx({
      'step': STEP, 'perplexity_video': z / math.exp(a),
      'perplexity_text': z * math.exp(-b * len(captions) / text_targets)}, rel=1e-5)


def test_needle_of_a_copier_and_of_a_half_copier(tiny_data_dir, tokenizer_run, tmp_path):
  """A model that copies the hidden value answers every haystack (1.0 at every length and
  depth); one that copies only the value's first token never matches exactly (0.0)."""
  lengths, depths = (64, 160), (0.0, 0.5, 1.0)
  config = world_model(tokenizer_run, tiny_data_dir, 'needle', lengths=lengths, depths=depths,
                       samples=3)
  assert config.data.lm.needle_value_len == 2
  vocab = sequences.vocabulary(config.data)
  keys = ([f'needle_{n}_{d:.2f}' for n in lengths for d in depths]
          + [f'needle_{n}' for n in lengths] + ['needle_mean'])
  for whole_value, accuracy in ((True, 1.0), (False, 0.0)):
    model = NeedleCopier(vocab_size=vocab.size, fact=vocab.special('fact'),
                         whole_value=whole_value)
    results = evaluate(config, model, {}, str(tmp_path / str(whole_value)))
    assert results == {'step': STEP, **{k: accuracy for k in keys}}, f'{whole_value=}'


def test_captioning_of_a_perfect_and_of_a_one_caption_captioner(tiny_data_dir, tokenizer_run,
                                                                tmp_path):
  """A captioner that returns each clip's own caption (found by its video tokens) scores 1 on
  every label and on shape + motion; one that returns clip c's caption for every clip scores the
  share of the one-object clips that have c's labels. Every scored clip has a line in
  captions/<step>.txt, marked `ok` when shape and motion are both right."""
  config = world_model(tokenizer_run, tiny_data_dir, 'captioning', batch_size=8)
  assert dict(config.evals.captioning.subset) == {'num_objects': 1}
  vocab, stride = sequences.vocabulary(config.data), config.data.lm.frame_stride
  tokenizer = tokenizer_lib.load_tokenizer(pipeline.tokenizer_path(config.data))
  cache = inputs.token_cache(config.data, 'test', 32)
  prompts = np.stack([np.concatenate([sequences.video_part(vocab, cache[i]['video_tokens'][
      ::stride]), [tokenizer_lib.BOS_ID]]) for i in range(len(cache))])
  assert len({p.tobytes() for p in prompts}) == len(cache)  # every clip found by its tokens
  chosen = np.flatnonzero(cache.labels['num_objects'] == 1)
  length, one = config.data.max_text_len, chosen[0]
  for case in ('own', 'one'):
    captions = cache.captions if case == 'own' else [cache.captions[one]] * len(cache)
    continuations = padded([sequences.caption_ids(tokenizer, c)[1:length + 1] for c in captions],
                           tokenizer_lib.EOS_ID)
    params = {'prompts': prompts, 'lengths': np.full(len(cache), prompts.shape[1]),
              'continuations': continuations}
    results = evaluate(config, TableLM(vocab_size=vocab.size), params, str(tmp_path / case))
    said = chosen if case == 'own' else np.full(len(chosen), one)
    right = {k: cache.labels[f'{k}_label'][said] == cache.labels[f'{k}_label'][chosen]
             for k in ('shape', 'colour', 'motion')}
    right['shape_motion'] = right['shape'] & right['motion']
    assert results == pytest.approx(
        {'step': STEP, **{f'caption_{k}_acc': np.mean(v) for k, v in right.items()}}, abs=1e-12)
    with open(os.path.join(tmp_path, case, 'captions', f'{STEP}.txt'), encoding='utf-8') as f:
      lines = f.read().splitlines()
    assert len(lines) == len(chosen)
    assert sum(line.startswith('ok ') for line in lines) == right['shape_motion'].sum()
  assert 0 < results['caption_shape_acc'] < 1  # the 'one' case


def test_text_to_video_of_a_known_generator(tiny_data_dir, tokenizer_run, tmp_path):
  """A generator that returns each caption's own clip codes (found by the caption) has code
  accuracy 1 and a picture whose generated rows are the real ones; one that returns the next
  clip's codes scores their agreement with the real ones."""
  config = world_model(tokenizer_run, tiny_data_dir, 'text_to_video', num_samples=3)
  vocab, stride = sequences.vocabulary(config.data), config.data.lm.frame_stride
  tokenizer = tokenizer_lib.load_tokenizer(pipeline.tokenizer_path(config.data))
  cache = inputs.token_cache(config.data, 'test', 32)
  codes = np.stack([cache[i]['video_tokens'][::stride] for i in range(len(cache))])
  prompts = [np.concatenate([sequences.caption_ids(tokenizer, c), [vocab.special('vision_start')]])
             for c in cache.captions]
  count = config.evals.text_to_video.num_samples
  for shift in (0, 1):
    following = np.roll(np.arange(len(cache)), -shift)  # clip i continues with clip i + shift
    params = {'prompts': padded(prompts, -1), 'lengths': np.array(list(map(len, prompts))),
              'continuations': np.stack([sequences.video_part(vocab, codes[j])[1:]
                                         for j in following])}
    results = evaluate(config, TableLM(vocab_size=vocab.size), params, str(tmp_path / str(shift)))
    expected = np.mean(codes[following[:count]] == codes[:count])
    assert results == pytest.approx({'step': STEP, 't2v_code_accuracy': expected}, abs=1e-12)
  assert 0 < expected < 1  # the shifted case
  grid = picture_rows(os.path.join(tmp_path, '0', 't2v', f'{STEP}.png'), 2, codes.shape[1],
                      config.data.image_size)
  assert len(grid) == count
  np.testing.assert_array_equal(grid[:, 1], grid[:, 0])  # generated under real
