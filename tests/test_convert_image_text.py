"""CLIP / SigLIP converters against transformers: a tiny random CLIPModel / SiglipModel, saved
with `save_pretrained`, converted and loaded with `vidlang_jax.load_pretrained`, gives
transformers' image features on clips of identical frames (at several frame counts: the
inflated tubelets and zero time embeddings must make a static clip the image) and its text
features at several lengths (fp32, torch on the CPU). The option checks run in the fast suite.

Weights are random at scales where a wrong detail shows: every norm scale and bias is random,
matrices ~1/sqrt(fan_in), so that a dropped bias, swapped norm or wrong transpose moves the
features by far more than the 1e-4 bound.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vidlang_jax
from vidlang_jax import convert, pixels
from vidlang_jax.convert import hf_image_text
from vidlang_jax.data import caption_tokenizer

from helpers import hf_libraries

TOLERANCE = 1e-4
VOCAB = 99
TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=16)
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8)


_hf = hf_libraries


def _randomize(model):
  torch, _ = _hf()
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'norm' in name and name.endswith('weight'):
        p.copy_(1 + 0.3 * torch.randn_like(p))
      elif name.endswith('logit_scale'):
        p.fill_(2.3)
      elif p.ndim <= 1 or 'class_embedding' in name or 'probe' in name:
        p.normal_(0, 0.3)
      elif 'embedding' in name:
        p.normal_(0, 0.5)
      else:
        p.normal_(0, p[0].numel() ** -0.5)
  return model.eval()


def tiny_clip(path, eos_token_id=VOCAB - 1, **vision):
  _, transformers = _hf()
  config = transformers.CLIPConfig(
      text_config=TEXT | dict(bos_token_id=VOCAB - 2, eos_token_id=eos_token_id, pad_token_id=0,
                              hidden_act='quick_gelu'),
      vision_config=VISION | dict(hidden_act='quick_gelu') | vision, projection_dim=24)
  model = _randomize(transformers.CLIPModel(config))
  model.save_pretrained(path)
  return model


def tiny_siglip(path):
  _, transformers = _hf()
  config = transformers.SiglipConfig(
      text_config=TEXT | dict(layer_norm_eps=1e-6), vision_config=VISION | dict(
          layer_norm_eps=1e-6))
  model = _randomize(transformers.SiglipModel(config))
  model.save_pretrained(path)
  return model


def _hf_features(kind, hf_model, images, mean, std, tokens):
  torch, _ = _hf()
  pixel_values = torch.from_numpy(((images - mean) / std).transpose(0, 3, 1, 2).copy())
  ids = torch.from_numpy(tokens.astype(np.int64))
  with torch.no_grad():
    image = hf_model.vision_model(pixel_values=pixel_values).pooler_output
    text = hf_model.text_model(input_ids=ids).pooler_output
    if kind == 'clip':
      image, text = hf_model.visual_projection(image), hf_model.text_projection(text)
  return image.numpy(), text.numpy()


def _our_features(release_dir, video, tokens):
  model, params, config = vidlang_jax.load_pretrained(release_dir)
  video_fn = jax.jit(lambda p, v: model.apply(
      {'params': p}, v, method=lambda m, v: m.video_proj(m.video_tower(v)[0])))
  text_fn = jax.jit(lambda p, t: model.apply(
      {'params': p}, t, method=lambda m, t: m.text_proj(m.text_tower(t)[0])))
  return (np.asarray(video_fn(params, jnp.asarray(video))),
          np.asarray(text_fn(params, jnp.asarray(tokens, jnp.int32))), params, config)


def _caption_ids(rng, length, bos, eos, batch=3):
  """Rows as CLIP's tokenizer writes them: BOS, words, EOS, padding, EOS at varying places."""
  tokens = rng.integers(1, VOCAB - 2, (batch, length))
  tokens[:, 0] = bos
  for row, end in enumerate(rng.integers(2, length, batch)):
    tokens[row, end] = eos
    tokens[row, end + 1:] = 0
  return tokens


# CLIP's class token appears once while a static clip repeats each patch once per tubelet in
# time, so the class token's attention weight, and so its output, equals the image model's only
# with one tubelet in time: its frame counts are tubelet_time's. SigLIP has no class token: a
# static clip is the image at any frame count (8 frames: time embeddings interpolated).
CASES = {
    # name: (kind, eos override, how: api | cli, scan, inflate, tubelet_time, frames,
    #        preprocessor stats)
    'clip': ('clip', {}, 'api', True, 'central', 2, (2,), None),
    'clip_legacy_eos_cli': ('clip', dict(eos_token_id=2), 'cli', False, 'average', 4, (4,),
                            ([0.4, 0.5, 0.6], [0.2, 0.3, 0.25])),
    'siglip': ('siglip', {}, 'api', True, 'central', 2, (2, 4, 8), None),
    'siglip_cli': ('siglip', {}, 'cli', False, 'average', 2, (2, 4, 8),
                   ([0.3, 0.5, 0.7], [0.4, 0.5, 0.6])),
}


@pytest.mark.hf
@pytest.mark.parametrize('case', sorted(CASES))
def test_image_text_features_match_transformers(tmp_path, case):
  kind, overrides, how, scan, inflate, tubelet_time, frame_counts, stats = CASES[case]
  src, out = tmp_path / 'hf', str(tmp_path / 'release')
  hf_model = tiny_clip(src, **overrides) if kind == 'clip' else tiny_siglip(src)
  mean, std = hf_image_text.DEFAULT_PIXELS[kind]
  if stats:  # the folder's processor statistics are the ones folded into the patch kernel
    mean, std = stats
    (src / 'preprocessor_config.json').write_text(json.dumps(dict(image_mean=mean,
                                                                  image_std=std)))
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  if how == 'api':
    hf_image_text.convert(kind, str(src), out, scan=scan, num_frames=4,
                          tubelet_time=tubelet_time, inflate=inflate)
  else:
    convert.main([f'hf_{kind}', '--src', str(src), '--out', out, '--num-frames', '4',
                  '--tubelet-time', str(tubelet_time), '--inflate', inflate]
                 + ([] if scan else ['--no-scan']))

  rng = np.random.default_rng(0)
  images = rng.uniform(0, 1, (3, 32, 32, 3)).astype(np.float32)
  model_config = vidlang_jax.load_pretrained(out)[2].model
  eos = model_config.text.eos_id if kind == 'clip' else VOCAB - 1
  for frames in frame_counts:
    for length in (7, 16):
      tokens = (_caption_ids(rng, length, VOCAB - 2, eos) if kind == 'clip'
                else rng.integers(0, VOCAB, (3, length)))
      want_image, want_text = _hf_features(kind, hf_model, images, mean, std, tokens)
      video = np.repeat(pixels.normalize(images)[:, None], frames, axis=1)
      got_image, got_text, params, config = _our_features(out, video, tokens)
      image_diff = float(np.max(np.abs(got_image - want_image)))
      text_diff = float(np.max(np.abs(got_text - want_text)))
      print(f'{case}: {frames} frames, {length} tokens: max |image - transformers| = '
            f'{image_diff:.2e} (std {np.std(want_image):.2f}), |text - transformers| = '
            f'{text_diff:.2e} (std {np.std(want_text):.2f})')
      assert image_diff <= TOLERANCE and text_diff <= TOLERANCE, (case, frames, length)

  assert float(params['logit_scale']) == pytest.approx(float(hf_model.logit_scale))
  if kind == 'siglip':
    assert float(params['logit_bias']) == pytest.approx(float(hf_model.logit_bias))
    assert config.loss.kind == 'sigmoid' and config.data.bos_id is None
  else:
    assert config.loss.kind == 'softmax' and 'logit_bias' not in params
    assert (config.data.bos_id, config.data.eos_id) == (VOCAB - 2, VOCAB - 1)
  assert ('blocks' in params['video']['encoder']) == scan
  assert config.model.video.num_frames == 4
  assert tuple(config.model.video.tubelet) == (tubelet_time, 8, 8)


@pytest.mark.hf
def test_clip_patch_kernel_is_inflated_as_asked(tmp_path):
  """`central` puts the image kernel on the middle frame of the tubelet, `average` spreads it;
  both are the image model on a static clip (the parity test), but not on a moving one."""
  tiny_clip(tmp_path / 'hf')
  kernels = {}
  for inflate in ('central', 'average'):
    out = str(tmp_path / inflate)
    hf_image_text.convert('clip', str(tmp_path / 'hf'), out, num_frames=4, tubelet_time=2,
                          inflate=inflate)
    kernels[inflate] = np.asarray(vidlang_jax.load_pretrained(out)[1]['video']['patch_embed'][
        'kernel']).reshape(2, 8 * 8 * 3, 32)
  central, average = kernels['central'], kernels['average']
  assert not central[0].any() and central[1].any()  # frames (0, 1): the middle one is 1
  np.testing.assert_allclose(average[0], average[1])
  np.testing.assert_allclose(average[0] * 2, central[1], rtol=1e-6)


# Fast suite: options from hand-written config.json files, no torch.

def _clip_json(**text):
  return dict(model_type='clip', projection_dim=24,
              text_config=TEXT | dict(bos_token_id=97, eos_token_id=98) | text,
              vision_config=VISION | dict(hidden_act='quick_gelu'))


def test_clip_options():
  model = hf_image_text.model_options('clip', _clip_json(), num_frames=8, tubelet_time=2)
  video, text = model['video'], model['text']
  assert (video['pool'], video['norm_pre'], video['act'], video['norm_eps']) == (
      'cls', True, 'quick_gelu', 1e-5)
  assert video['tubelet'] == (2, 8, 8) and video['num_frames'] == 8
  assert (text['causal'], text['pool'], text['eos_id'], text['pad_id']) == (True, 'eos', 98, None)
  assert model['embed_dim'] == 24 and model['bias_init'] is None and not model['proj_bias']
  legacy = hf_image_text.model_options('clip', _clip_json(eos_token_id=2))
  assert legacy['text']['eos_id'] == VOCAB - 1  # argmax pooling = the largest id


@pytest.mark.parametrize('config, named', [
    (dict(_clip_json(), model_type='siglip'), 'model_type'),
    (dict(_clip_json(), vision_config=VISION | dict(hidden_act='relu')),
     'vision_config.hidden_act'),
    (dict(_clip_json(), vision_config=VISION | dict(num_channels=1)), 'num_channels'),
])
def test_clip_unsupported_option_is_named(config, named):
  with pytest.raises(ValueError, match=named):
    hf_image_text.model_options('clip', config)


def test_siglip_unsupported_option_is_named():
  config = dict(model_type='siglip', text_config=TEXT | dict(projection_size=16),
                vision_config=VISION)
  with pytest.raises(ValueError, match='projection_size'):
    hf_image_text.model_options('siglip', config)
  config['vision_config'] = VISION | dict(vision_use_head=False)
  with pytest.raises(ValueError, match='vision_use_head'):
    hf_image_text.model_options('siglip', config)


def test_video_flags_refused_by_llama(tmp_path, capsys):
  with pytest.raises(SystemExit):
    convert.main(['hf_llama', '--src', str(tmp_path), '--out', str(tmp_path / 'r'),
                  '--num-frames', '8'])
  assert '--num-frames is not an option of hf_llama' in capsys.readouterr().err


def test_patch_embedding_folds_the_source_normalisation():
  """The converted kernel on our normalisation = the source kernel on the source's."""
  rng = np.random.default_rng(0)
  weight, bias = rng.normal(size=(5, 3, 2, 2)), rng.normal(size=(5,))
  mean, std = np.array([0.3, 0.5, 0.7]), np.array([0.4, 0.5, 0.6])
  out = hf_image_text.patch_embedding(weight, bias, (mean, std), 1, 'central')
  patch = rng.uniform(0, 1, (2, 2, 3))  # [ph, pw, c] raw pixels
  want = np.einsum('dchw,hwc->d', weight, (patch - mean) / std) + bias
  got = pixels.normalize(patch).reshape(-1) @ out['kernel'] + out['bias']
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_tokenize_with_a_converted_towers_ids(tmp_path):
  tokenizer = caption_tokenizer.train_tokenizer(['a red circle', 'a blue square'],
                                                str(tmp_path / 'tokenizer.json'), vocab_size=50)
  ids = caption_tokenizer.tokenize(tokenizer, ['a red circle'], 6, bos_id=None, eos_id=40,
                                   pad_id=41)[0]
  words = tokenizer.encode('a red circle', add_special_tokens=False).ids
  assert ids.tolist() == [*words, 40] + [41] * (5 - len(words))
