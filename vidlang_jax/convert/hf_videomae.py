"""Hugging Face transformers VideoMAE (`VideoMAEForPreTraining`, a `save_pretrained` folder) ->
a masked-video release: the encoder as our video tower, the decoder as our MAE decoder, whose
encoder tokens and reconstructions match transformers' (tests/test_convert_videomae.py).

  vidlang convert hf_videomae --src path/to/videomae --out releases/videomae [--no-scan]

Fine-tune the encoder for classification with
`configs/finetune_classification.py:base,init=releases/videomae` (its head starts from scratch).

VideoMAE's options become ours: its fixed sin-cos positions over the t-major token index
(`posemb='sincos'`), erf GELU, LayerNorm eps 1e-12, no final LayerNorm in mean-pooling encoders
(`final_norm=False`; the classifier's `head_norm` plays fc_norm's part) and the decoder's last
norm at torch's default 1e-5. Its keys have no bias: a bias on the keys adds the same q·b to
every logit of a query, which the softmax removes, so our zero key bias computes the same.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidlang_jax import masking, registry
from vidlang_jax.convert import common, weights
from vidlang_jax.convert.hf_image_text import ACTIVATIONS, read_pixel_stats

# The pixel statistics VideoMAE's processor and its pretraining loss use (ImageNet's).
DEFAULT_PIXELS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _unsupported(key: str, value: Any, why: str) -> ValueError:
  return common.unsupported('hf_videomae', key, value, why)


def model_options(hf: dict[str, Any], scan: bool = True) -> dict[str, Any]:
  """`config.model` of `model.masked_video` for an HF VideoMAE config.json."""
  if hf.get('model_type') != 'videomae':
    raise _unsupported('model_type', hf.get('model_type'), "only 'videomae' is converted")
  act = hf.get('hidden_act', 'gelu')
  if act not in ACTIVATIONS:
    raise _unsupported('hidden_act', act, f'the towers have {sorted(ACTIVATIONS)}')
  if hf.get('num_channels', 3) != 3:
    raise _unsupported('num_channels', hf['num_channels'], 'videos are RGB')
  for key in ('hidden_size', 'decoder_hidden_size'):
    heads_key = key.replace('hidden_size', 'num_attention_heads')
    if hf[key] % hf[heads_key]:
      raise _unsupported(heads_key, hf[heads_key], f'{key}={hf[key]} must be a multiple of it')
  eps = float(hf.get('layer_norm_eps', 1e-12))
  patch, tubelet = hf['patch_size'], hf['tubelet_size']
  if hf['image_size'] % patch or hf['num_frames'] % tubelet:
    raise _unsupported('image_size', hf['image_size'], f'image_size / patch_size {patch} and '
                       f"num_frames {hf['num_frames']} / tubelet_size {tubelet} must divide")
  video = dict(width=hf['hidden_size'], depth=hf['num_hidden_layers'],
               num_heads=hf['num_attention_heads'], mlp_dim=hf['intermediate_size'],
               tubelet=(tubelet, patch, patch), num_frames=hf['num_frames'],
               image_size=hf['image_size'], attention='joint', pool='gap', posemb='sincos',
               final_norm=not hf.get('use_mean_pooling', True), act=ACTIVATIONS[act],
               norm_eps=eps, dropout=0.0, scan=scan, remat=False)
  decoder = dict(width=hf['decoder_hidden_size'], depth=hf['decoder_num_hidden_layers'],
                 num_heads=hf['decoder_num_attention_heads'],
                 mlp_dim=hf['decoder_intermediate_size'], posemb='sincos', act=ACTIVATIONS[act],
                 norm_eps=eps, final_norm_eps=1e-5, scan=scan, remat=False)
  return dict(name='masked_video', video=video, decoder=decoder, text=None)


def release_config(hf: dict[str, Any], scan: bool = True) -> ml_collections.ConfigDict:
  """configs/masked_video.py:base with the model, its input and the loss's targets from `hf`."""
  config = common.base_config('masked_video')
  model = model_options(hf, scan)
  base = config.model.to_dict()
  config.model = ml_collections.ConfigDict(base | model)
  config.data.update(dict(num_frames=model['video']['num_frames'],
                          image_size=model['video']['image_size']))
  config.loss.normalize_target = bool(hf.get('norm_pix_loss', True))
  return config


def _layer(take: common.Tensors, p: str, width: int, heads: int, qv_bias: bool
           ) -> dict[str, Any]:
  """One VideoMAE layer (pre-LN, ViT names) as an `EncoderBlock`."""
  head_dim = width // heads

  def projection(name: str, bias: bool) -> dict[str, np.ndarray]:
    # torch [heads * head_dim, embed] (rows head-major) -> [embed, heads, head_dim]
    kernel = take(f'{p}attention.attention.{name}.weight').T.reshape(width, heads, head_dim)
    if not bias:
      return {'kernel': kernel, 'bias': np.zeros((heads, head_dim), np.float32)}
    # Released checkpoints (and save_pretrained) name the biases q_bias / v_bias.
    legacy = f'{p}attention.attention.{name[0]}_bias'
    bias = take(legacy if legacy in take else f'{p}attention.attention.{name}.bias')
    return {'kernel': kernel, 'bias': bias.reshape(heads, head_dim)}

  norm = lambda name: {'scale': take(f'{p}{name}.weight'), 'bias': take(f'{p}{name}.bias')}
  dense = lambda name: {'kernel': take(f'{p}{name}.dense.weight').T,
                        'bias': take(f'{p}{name}.dense.bias')}
  return {
      'norm_attn': norm('layernorm_before'),
      'attn': {'query': projection('query', qv_bias), 'key': projection('key', False),
               'value': projection('value', qv_bias),
               'out': {'kernel': take(f'{p}attention.output.dense.weight').T.reshape(
                   heads, head_dim, width), 'bias': take(f'{p}attention.output.dense.bias')}},
      'norm_mlp': norm('layernorm_after'),
      'mlp': {'Dense_0': dense('intermediate'), 'Dense_1': dense('output')},
  }


def convert_params(tensors: dict[str, np.ndarray], hf: dict[str, Any], model: dict[str, Any],
                   *, source_pixels: tuple[np.ndarray, np.ndarray], src: str = ''
                   ) -> dict[str, Any]:
  """The masked-video params tree (fp32 numpy) from a VideoMAEForPreTraining state dict."""
  if 'decoder.head.weight' not in tensors:
    raise ValueError(f'{src} has no decoder (decoder.head.weight): convert hf_videomae reads '
                     'VideoMAEForPreTraining folders (encoder and decoder); a VideoMAEModel or '
                     'VideoMAEForVideoClassification one has only the encoder.')
  take = common.Tensors(tensors, src)
  video, decoder = model['video'], model['decoder']
  qv_bias = bool(hf.get('qv_bias', True))
  e = 'videomae.'
  # Conv3d [width, 3, pt, p, p] -> [pt*p*p*3, width], the source's normalisation folded in.
  kernel, bias = common.patch_kernel(
      take(f'{e}embeddings.patch_embeddings.projection.weight'),
      take(f'{e}embeddings.patch_embeddings.projection.bias'), source_pixels)
  blocks = [_layer(take, f'{e}encoder.layer.{i}.', video['width'], video['num_heads'], qv_bias)
            for i in range(video['depth'])]
  encoder = common.stack(blocks, video['scan'])
  if video['final_norm']:
    encoder['norm_out'] = {'scale': take(f'{e}layernorm.weight'),
                           'bias': take(f'{e}layernorm.bias')}
  dec_blocks = [_layer(take, f'decoder.decoder_layers.{i}.', decoder['width'],
                       decoder['num_heads'], qv_bias) for i in range(decoder['depth'])]
  return_params = {
      'video': {'patch_embed': {'kernel': kernel, 'bias': bias}, 'encoder': encoder},
      'decoder': {
          'embed': {'kernel': take('encoder_to_decoder.weight').T,
                    'bias': np.zeros((decoder['width'],), np.float32)},
          'mask_token': take('mask_token').reshape(decoder['width']),
          'encoder': {**common.stack(dec_blocks, decoder['scan']),
                      'norm_out': {'scale': take('decoder.norm.weight'),
                                   'bias': take('decoder.norm.bias')}},
          'pred': {'kernel': take('decoder.head.weight').T, 'bias': take('decoder.head.bias')},
      },
  }
  take.check_all_taken('hf_videomae')
  return return_params


def _model_card(src: str, config: ml_collections.ConfigDict, num_params: int) -> str:
  v, d = config.model.video, config.model.decoder
  return '\n'.join([
      f'# masked_video converted from Hugging Face VideoMAE ({num_params / 1e6:.2f}M params)',
      '', f'Converted from `{src}` by `vidlang convert hf_videomae` (docs/converters.md).', '',
      f'Encoder: width {v.width}, depth {v.depth}, heads {v.num_heads}, {v.num_frames} frames '
      f'of {v.image_size}², tubelet {tuple(v.tubelet)}, sin-cos positions, final norm '
      f'{v.final_norm}. Decoder: width {d.width}, depth {d.depth}.', '',
      '## Use', '', '```python', 'import vidlang_jax',
      "model, params, config = vidlang_jax.load_pretrained('.')", '```', '',
      'Fine-tune for classification: `configs/finetune_classification.py:base,'
      'init=<this folder>` (the encoder is loaded, the head starts at zero).', ''])


@registry.register('convert.hf_videomae')
def convert(src: str, out: str, *, scan: bool = True) -> str:
  """`src` (a local transformers VideoMAEForPreTraining folder) as a masked-video release."""
  hf = weights.read_config(src)
  config = release_config(hf, scan)  # fails on unsupported options before reading weights
  params = convert_params(weights.read_state_dict(src), hf, config.model.to_dict(),
                          source_pixels=read_pixel_stats(src, DEFAULT_PIXELS), src=src)
  size = config.data.image_size
  common.check_params(params, config,
                      jax.ShapeDtypeStruct((1, config.data.num_frames, size, size, 3),
                                           jnp.float32), *_example_mask(config))
  return common.write_release(src, out, config, params,
                               lambda path, n: _model_card(path, config, n))


def _example_mask(config: ml_collections.ConfigDict) -> tuple[masking.Mask]:
  """A mask to trace the model's init with (every other token hidden)."""
  v = config.model.video
  tokens = (v.num_frames // v.tubelet[0]) * (v.image_size // v.tubelet[1]) ** 2
  return (masking.from_boolean(jnp.arange(tokens)[None] % 2 == 1, tokens - tokens // 2),)
