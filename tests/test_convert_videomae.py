"""The VideoMAE converter against transformers: a tiny random VideoMAEForPreTraining, saved
with `save_pretrained`, converted and loaded with `vidlang_jax.load_pretrained`, gives
transformers' encoder tokens on whole clips and its decoder's predictions of the hidden
tubelets under a mask (fp32, torch on the CPU), at two frame counts (VideoMAE's position table
is built for its own count: one model each).
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vidlang_jax
from vidlang_jax import convert, masking, pixels
from vidlang_jax.convert import hf_videomae

from helpers import hf_libraries

TOLERANCE = 1e-4
TINY = dict(image_size=16, patch_size=8, tubelet_size=2, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=48, decoder_hidden_size=24,
            decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
            decoder_intermediate_size=40)


_hf = hf_libraries


def tiny_videomae(path, **overrides):
  torch, transformers = _hf()
  model = transformers.VideoMAEForPreTraining(transformers.VideoMAEConfig(**TINY | overrides))
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'norm' in name and name.endswith('weight'):
        p.copy_(1 + 0.3 * torch.randn_like(p))
      elif p.ndim <= 1 or 'mask_token' in name:
        p.normal_(0, 0.3)
      else:
        p.normal_(0, p[0].numel() ** -0.5)
  model.eval().save_pretrained(path)
  return model


CASES = {
    # name: (VideoMAEConfig overrides, scan, through the CLI)
    'mean_pooling_4_frames': (dict(num_frames=4), True, False),
    'final_norm_8_frames_cli': (dict(num_frames=8, use_mean_pooling=False), False, True),
    'no_qv_bias': (dict(num_frames=4, qv_bias=False), True, False),
}


@pytest.mark.hf
@pytest.mark.parametrize('case', sorted(CASES))
def test_videomae_encoder_and_decoder_match_transformers(tmp_path, case):
  torch, _ = _hf()
  overrides, scan, cli = CASES[case]
  hf_model = tiny_videomae(tmp_path / 'hf', **overrides)
  out = str(tmp_path / 'release')
  if cli:
    convert.main(['hf_videomae', '--src', str(tmp_path / 'hf'), '--out', out, '--no-scan'])
  else:
    hf_videomae.convert(str(tmp_path / 'hf'), out, scan=scan)
  model, params, config = vidlang_jax.load_pretrained(out)

  frames = overrides['num_frames']
  rng = np.random.default_rng(0)
  clips = rng.uniform(0, 1, (2, frames, 16, 16, 3)).astype(np.float32)
  video = pixels.normalize(clips)
  tokens = (frames // 2) * 2 * 2
  hidden = np.zeros((2, tokens), bool)  # the same count per row, at different places
  for row in range(2):
    hidden[row, rng.permutation(tokens)[:tokens * 3 // 4]] = True
  pixel_values = torch.from_numpy(video.transpose(0, 1, 4, 2, 3).copy())  # [b, t, c, h, w]
  with torch.no_grad():
    want_tokens = hf_model.videomae(pixel_values).last_hidden_state.numpy()
    want_pred = hf_model(pixel_values, bool_masked_pos=torch.from_numpy(hidden)).logits.numpy()

  got_tokens = np.asarray(jax.jit(lambda p, v: model.apply(
      {'params': p}, v, method=lambda m, v: m.video_tower.encode_tokens(
          m.video_tower.embed(v))))(params, jnp.asarray(video)))
  mask = masking.from_boolean(jnp.asarray(hidden), tokens - tokens * 3 // 4)
  pred = np.asarray(jax.jit(lambda p, v, m: model.apply({'params': p}, v, m)['pred'])(
      params, jnp.asarray(video), mask))
  got_pred = np.take_along_axis(pred, np.asarray(mask.masked_indices)[..., None], axis=1)
  token_diff = float(np.max(np.abs(got_tokens - want_tokens)))
  pred_diff = float(np.max(np.abs(got_pred - want_pred)))
  print(f'{case}: max |tokens - transformers| = {token_diff:.2e} (std {want_tokens.std():.2f})'
        f', |hidden-tubelet predictions - transformers| = {pred_diff:.2e} '
        f'(std {want_pred.std():.2f})')
  assert token_diff <= TOLERANCE and pred_diff <= TOLERANCE
  assert config.model.video.final_norm == (not overrides.get('use_mean_pooling', True))
  assert config.loss.normalize_target  # norm_pix_loss, VideoMAE's default


@pytest.mark.hf
def test_videomae_encoder_only_folder_is_refused(tmp_path):
  _, transformers = _hf()
  transformers.VideoMAEModel(transformers.VideoMAEConfig(**TINY, num_frames=4)).save_pretrained(
      tmp_path / 'hf')
  with pytest.raises(ValueError, match='VideoMAEForPreTraining'):
    hf_videomae.convert(str(tmp_path / 'hf'), str(tmp_path / 'release'))


def test_videomae_options():
  model = hf_videomae.model_options(dict(TINY, model_type='videomae', num_frames=4))
  video, decoder = model['video'], model['decoder']
  assert (video['posemb'], video['act'], video['norm_eps'], video['final_norm']) == (
      'sincos', 'gelu', 1e-12, False)
  assert video['tubelet'] == (2, 8, 8) and decoder['final_norm_eps'] == 1e-5
  with pytest.raises(ValueError, match='hidden_act'):
    hf_videomae.model_options(dict(TINY, model_type='videomae', num_frames=4, hidden_act='relu'))


def test_sincos_table_is_videomaes():
  """VideoMAE's formula, written out: sin on even channels, cos on odd, 10000^(2 (j // 2) / d)."""
  from vidlang_jax.models.video_vit import sincos_table
  table = sincos_table(5, 6)
  for pos in range(5):
    for j in range(6):
      angle = pos / 10000 ** (2 * (j // 2) / 6)
      assert table[pos, j] == pytest.approx(np.sin(angle) if j % 2 == 0 else np.cos(angle),
                                            abs=1e-6)
