"""Hugging Face transformers CLIP / SigLIP (`CLIPModel` / `SiglipModel`, `save_pretrained`
folders) -> two-tower video-text releases whose video tower is the image tower inflated to
tubelets (tests/test_convert.py; docs/converters.md).

  vidlang convert hf_clip --src path/to/clip --out releases/clip [--num-frames 16]
      [--tubelet-time 2] [--inflate central|average] [--no-scan]
  vidlang convert hf_siglip --src path/to/siglip --out releases/siglip ...

On a static clip (every frame the same image) the converted video tower gives the image
tower's features, whatever the frame count: the time position embeddings start at zero and the
2D patch kernel is inflated so that a tubelet of identical frames sees the image patch
(`central`: the kernel on the middle frame, as ViViT recommends for fine-tuning; `average`:
spread evenly). The source's pixel normalisation is folded into the patch embedding, so the
release reads our pipeline's input (`vidlang_jax.pixels.normalize`) unchanged.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidlang_jax import registry
from vidlang_jax.convert import common, weights
from vidlang_jax.ops.resample import inflate_patch_kernel

log = logging.getLogger(__name__)

# transformers' hidden_act -> the MLP activations of vidlang_jax.models.layers.
ACTIVATIONS = {'quick_gelu': 'quick_gelu', 'gelu': 'gelu', 'gelu_pytorch_tanh': 'gelu_tanh',
               'gelu_new': 'gelu_tanh'}
# The processors' pixel statistics when a folder has no preprocessor_config.json.
DEFAULT_PIXELS = {
    'clip': ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    'siglip': ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def _tower_options(name: str, kind: str, hf: dict[str, Any]) -> dict[str, Any]:
  """Options both towers take from an HF tower config; raises, naming the option, on what our
  towers cannot compute."""
  act = hf.get('hidden_act', 'quick_gelu' if kind == 'clip' else 'gelu_pytorch_tanh')
  if act not in ACTIVATIONS:
    raise common.unsupported(f'hf_{kind}', f'{name}.hidden_act', act,
                             f'the towers have {sorted(ACTIVATIONS)}')
  width, heads = hf['hidden_size'], hf['num_attention_heads']
  if width % heads:
    raise common.unsupported(f'hf_{kind}', f'{name}.num_attention_heads', heads,
                             f'hidden_size={width} must be a multiple of it')
  return dict(width=width, depth=hf['num_hidden_layers'], num_heads=heads,
              mlp_dim=hf['intermediate_size'], act=ACTIVATIONS[act],
              norm_eps=float(hf.get('layer_norm_eps', 1e-5 if kind == 'clip' else 1e-6)))


def _special_ids(kind: str, text: dict[str, Any], src: str) -> dict[str, int | None]:
  """The caption ids the text tower was trained with: BOS, EOS, PAD.

  CLIP configs written before transformers PR #24773 say eos_token_id=2 and transformers then
  pools at the largest id (argmax), which in CLIP's vocabulary is <|endoftext|>, the last id.
  """
  if kind == 'siglip':  # no BOS; rows end in EOS and are padded to full length
    eos = text.get('eos_token_id', 1)
    return dict(bos=None, eos=eos, pad=text.get('pad_token_id', eos))
  bos, eos = text.get('bos_token_id', 49406), text.get('eos_token_id', 49407)
  if eos == 2:
    vocab = text['vocab_size']
    bos, eos = vocab - 2, vocab - 1
    path = os.path.join(src, 'tokenizer.json')
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        added = {t['content']: t['id'] for t in json.load(f).get('added_tokens', [])}
      bos, eos = added.get('<|startoftext|>', bos), added.get('<|endoftext|>', eos)
  # CLIP's tokenizer pads with <|endoftext|>; under the causal mask nothing reads the padding.
  return dict(bos=bos, eos=eos, pad=eos)


def model_options(kind: str, hf: dict[str, Any], src: str = '', *, num_frames: int = 16,
                  tubelet_time: int = 2, scan: bool = True) -> dict[str, Any]:
  """`config.model` of `model.two_tower` for an HF CLIP / SigLIP config.json."""
  if hf.get('model_type') != kind:
    raise common.unsupported(f'hf_{kind}', 'model_type', hf.get('model_type'),
                             f"only '{kind}' is converted by hf_{kind}")
  vision, text = hf['vision_config'], hf['text_config']
  if vision.get('num_channels', 3) != 3:
    raise common.unsupported(f'hf_{kind}', 'vision_config.num_channels',
                             vision['num_channels'], 'videos are RGB')
  if kind == 'siglip' and not vision.get('vision_use_head', True):
    raise common.unsupported('hf_siglip', 'vision_config.vision_use_head', False,
                             'the video tower pools with the MAP head')
  patch, image_size = vision['patch_size'], vision['image_size']
  if image_size % patch or num_frames % tubelet_time:
    raise ValueError(f'image_size {image_size} / patch_size {patch} and --num-frames '
                     f'{num_frames} / --tubelet-time {tubelet_time} must divide.')
  video = _tower_options('vision_config', kind, vision) | dict(
      tubelet=(tubelet_time, patch, patch), num_frames=num_frames, image_size=image_size,
      attention='joint', pool='cls' if kind == 'clip' else 'map', norm_pre=kind == 'clip',
      dropout=0.0, scan=scan, remat=False)
  ids = _special_ids(kind, text, src)
  text_tower = _tower_options('text_config', kind, text) | dict(
      vocab_size=text['vocab_size'], max_len=text['max_position_embeddings'],
      causal=kind == 'clip', pool='eos' if kind == 'clip' else 'last', pad_id=None,
      eos_id=ids['eos'] if kind == 'clip' else None, dropout=0.0, scan=scan, remat=False)
  if kind == 'clip':
    embed_dim = hf.get('projection_dim', 512)
  else:
    embed_dim = text.get('projection_size') or text['hidden_size']
    if embed_dim != vision['hidden_size']:
      raise common.unsupported('hf_siglip', 'text_config.projection_size', embed_dim,
                               f"the text head must map to the image features' width "
                               f"{vision['hidden_size']}")
  return dict(name='two_tower', video=video, text=text_tower, embed_dim=embed_dim,
              proj_bias=kind == 'siglip', bias_init=None if kind == 'clip' else -10.0,
              temperature_init=float(hf.get('logit_scale_init_value', 2.6592)))


def read_pixel_stats(src: str, default: tuple[Any, Any]) -> tuple[np.ndarray, np.ndarray]:
  """The (mean, std) the source's processor normalises pixels with."""
  mean, std = default
  path = os.path.join(src, 'preprocessor_config.json')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      processor = json.load(f)
    mean, std = processor.get('image_mean', mean), processor.get('image_std', std)
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def patch_embedding(weight: np.ndarray, bias: np.ndarray, source_pixels: tuple[np.ndarray,
                    np.ndarray], tubelet_time: int, inflate: str) -> dict[str, np.ndarray]:
  """A torch Conv2d patch embedding `[width, 3, p, p]` reading the source's normalisation ->
  our tubelet Dense `[pt*p*p*3, width]` reading `pixels.normalize`'s
  (`common.patch_kernel`), inflated over the tubelet's frames."""
  kernel, bias = common.patch_kernel(weight, bias, source_pixels)
  return {'kernel': inflate_patch_kernel(kernel, tubelet_time * kernel.shape[0], inflate),
          'bias': bias}


def _layer(take: common.Tensors, p: str, width: int, heads: int) -> dict[str, Any]:
  """One CLIP / SigLIP encoder layer (pre-LN; the two share names) as an `EncoderBlock`."""
  head_dim = width // heads

  def projection(name: str) -> dict[str, np.ndarray]:
    # torch [heads * head_dim, embed] (rows head-major) -> [embed, heads, head_dim]
    return {'kernel': take(f'{p}self_attn.{name}.weight').T.reshape(width, heads, head_dim),
            'bias': take(f'{p}self_attn.{name}.bias').reshape(heads, head_dim)}

  norm = lambda name: {'scale': take(f'{p}{name}.weight'), 'bias': take(f'{p}{name}.bias')}
  dense = lambda name: {'kernel': take(f'{p}mlp.{name}.weight').T,
                        'bias': take(f'{p}mlp.{name}.bias')}
  return {
      'norm_attn': norm('layer_norm1'),
      'attn': {'query': projection('q_proj'), 'key': projection('k_proj'),
               'value': projection('v_proj'),
               'out': {'kernel': take(f'{p}self_attn.out_proj.weight').T.reshape(
                   heads, head_dim, width), 'bias': take(f'{p}self_attn.out_proj.bias')}},
      'norm_mlp': norm('layer_norm2'),
      'mlp': {'Dense_0': dense('fc1'), 'Dense_1': dense('fc2')},
  }


def _encoder(take: common.Tensors, prefix: str, tower: dict[str, Any], scan: bool,
             final_norm: str) -> dict[str, Any]:
  blocks = [_layer(take, f'{prefix}encoder.layers.{i}.', tower['width'], tower['num_heads'])
            for i in range(tower['depth'])]
  return {**common.stack(blocks, scan),
          'norm_out': {'scale': take(f'{prefix}{final_norm}.weight'),
                       'bias': take(f'{prefix}{final_norm}.bias')}}


def _map_head(take: common.Tensors, p: str, width: int, heads: int) -> dict[str, Any]:
  """SigLIP's attention-pooling head (a torch MultiheadAttention with one packed in_proj)."""
  head_dim = width // heads
  qkv_w = take(f'{p}attention.in_proj_weight').reshape(3, width, width)
  qkv_b = take(f'{p}attention.in_proj_bias').reshape(3, width)
  attention = {name: {'kernel': qkv_w[i].T.reshape(width, heads, head_dim),
                      'bias': qkv_b[i].reshape(heads, head_dim)}
               for i, name in enumerate(('query', 'key', 'value'))}
  attention['out'] = {'kernel': take(f'{p}attention.out_proj.weight').T.reshape(
      heads, head_dim, width), 'bias': take(f'{p}attention.out_proj.bias')}
  dense = lambda name: {'kernel': take(f'{p}mlp.{name}.weight').T,
                        'bias': take(f'{p}mlp.{name}.bias')}
  return {'pool_query': take(f'{p}probe'), 'pool_attention': attention,
          'pool_norm': {'scale': take(f'{p}layernorm.weight'),
                        'bias': take(f'{p}layernorm.bias')},
          'pool_mlp': {'Dense_0': dense('fc1'), 'Dense_1': dense('fc2')}}


def convert_params(kind: str, tensors: dict[str, np.ndarray], model: dict[str, Any], *,
                   source_pixels: tuple[np.ndarray, np.ndarray], inflate: str = 'central',
                   src: str = '') -> dict[str, Any]:
  """The two-tower params tree (fp32 numpy) from a CLIPModel / SiglipModel state dict."""
  take = common.Tensors(tensors, src, ignore=('position_ids',))
  video, text = model['video'], model['text']
  width, scan = video['width'], video['scan']
  v, t = 'vision_model.', 'text_model.'
  grid_time = video['num_frames'] // video['tubelet'][0]
  positions = take(f'{v}embeddings.position_embedding.weight')  # [(1 +) h * w, width]
  video_params = {
      'patch_embed': patch_embedding(
          take(f'{v}embeddings.patch_embedding.weight'),
          (take(f'{v}embeddings.patch_embedding.bias') if kind == 'siglip'
           else np.zeros((width,), np.float32)), source_pixels, video['tubelet'][0], inflate),
      'pos_time': np.zeros((grid_time, width), np.float32),  # static clips: the image model
      'encoder': _encoder(take, v, video, scan, 'post_layernorm'),
  }
  if kind == 'clip':
    video_params['cls'] = take(f'{v}embeddings.class_embedding') + positions[0]
    video_params['pos_space'] = positions[1:]
    video_params['norm_pre'] = {'scale': take(f'{v}pre_layrnorm.weight'),
                                'bias': take(f'{v}pre_layrnorm.bias')}
  else:
    video_params['pos_space'] = positions
    video_params |= _map_head(take, f'{v}head.', width, video['num_heads'])
  params = {
      'video': video_params,
      'text': {'token_embedding': take(f'{t}embeddings.token_embedding.weight'),
               'pos_embedding': take(f'{t}embeddings.position_embedding.weight'),
               'encoder': _encoder(take, t, text, scan, 'final_layer_norm')},
      'logit_scale': take('logit_scale').reshape(()),
  }
  if kind == 'clip':
    params['video_proj'] = {'kernel': take('visual_projection.weight').T}
    params['text_proj'] = {'kernel': take('text_projection.weight').T}
  else:  # SigLIP's image features are the MAP head's output: an identity projection
    params['video_proj'] = {'kernel': np.eye(width, dtype=np.float32),
                            'bias': np.zeros((width,), np.float32)}
    params['text_proj'] = {'kernel': take(f'{t}head.weight').T, 'bias': take(f'{t}head.bias')}
    params['logit_bias'] = take('logit_bias').reshape(())
  take.check_all_taken(f'hf_{kind}')
  return params


def release_config(kind: str, hf: dict[str, Any], src: str = '', *, num_frames: int = 16,
                   tubelet_time: int = 2, scan: bool = True) -> ml_collections.ConfigDict:
  """configs/two_tower.py:base with the model, the loss and the caption ids set from `hf`."""
  config = common.base_config('two_tower')
  model = model_options(kind, hf, src, num_frames=num_frames, tubelet_time=tubelet_time,
                        scan=scan)
  config.model = ml_collections.ConfigDict(model)
  config.loss.kind = 'softmax' if kind == 'clip' else 'sigmoid'
  ids = _special_ids(kind, hf['text_config'], src)
  config.data.update(dict(
      num_frames=num_frames, image_size=model['video']['image_size'],
      max_text_len=model['text']['max_len'], vocab_size=model['text']['vocab_size'],
      bos_id=ids['bos'], eos_id=ids['eos'], pad_id=ids['pad']))
  return config


def _model_card(kind: str, src: str, config: ml_collections.ConfigDict, num_params: int,
                inflate: str) -> str:
  v, t = config.model.video, config.model.text
  return '\n'.join([
      f'# two_tower converted from Hugging Face {kind.upper()} ({num_params / 1e6:.2f}M '
      'params)', '', f'Converted from `{src}` by `vidlang convert hf_{kind}` '
      '(docs/converters.md).', '',
      f'Video tower: width {v.width}, depth {v.depth}, {v.num_frames} frames, tubelet '
      f'{tuple(v.tubelet)} inflated `{inflate}`, {v.image_size}² frames, pool `{v.pool}`. Text '
      f'tower: width {t.width}, depth {t.depth}, vocab {t.vocab_size}, {t.max_len} tokens, '
      f'pool `{t.pool}`. Loss `{config.loss.kind}`.', '',
      '## Use', '', '```python', 'import vidlang_jax',
      "model, params, config = vidlang_jax.load_pretrained('.')",
      'video_emb = model.apply({"params": params}, video, method="encode_video")',
      '```', '',
      'On a clip of identical frames the video features equal the source image features to '
      '1e-4 (fp32; tests/test_convert.py). Fine-tune on video: '
      '`configs/finetune_retrieval.py:init=<this folder>`.', ''])


def convert(kind: str, src: str, out: str, *, scan: bool = True, num_frames: int = 16,
            tubelet_time: int = 2, inflate: str = 'central') -> str:
  hf = weights.read_config(src)
  config = release_config(kind, hf, src, num_frames=num_frames, tubelet_time=tubelet_time,
                          scan=scan)
  params = convert_params(kind, weights.read_state_dict(src), config.model.to_dict(),
                          source_pixels=read_pixel_stats(src, DEFAULT_PIXELS[kind]),
                          inflate=inflate, src=src)
  video = jax.ShapeDtypeStruct((1, num_frames, config.data.image_size, config.data.image_size,
                                3), jnp.float32)
  common.check_params(params, config, video,
                      jax.ShapeDtypeStruct((1, config.data.max_text_len), jnp.int32))
  tokenizer = os.path.join(src, 'tokenizer.json')
  if not os.path.exists(tokenizer):
    log.warning('%s has no tokenizer.json: set data.tokenizer to the tokenizer the text tower '
                'was trained with before fine-tuning (the ids of another mean other words).',
                src)
  return common.write_release(
      src, out, config, params, lambda path, n: _model_card(kind, path, config, n, inflate))


@registry.register('convert.hf_clip')
def convert_clip(src: str, out: str, *, scan: bool = True, num_frames: int = 16,
                 tubelet_time: int = 2, inflate: str = 'central') -> str:
  """A local transformers CLIPModel folder as a two-tower release (softmax loss)."""
  return convert('clip', src, out, scan=scan, num_frames=num_frames,
                 tubelet_time=tubelet_time, inflate=inflate)


@registry.register('convert.hf_siglip')
def convert_siglip(src: str, out: str, *, scan: bool = True, num_frames: int = 16,
                   tubelet_time: int = 2, inflate: str = 'central') -> str:
  """A local transformers SiglipModel folder as a two-tower release (sigmoid loss)."""
  return convert('siglip', src, out, scan=scan, num_frames=num_frames,
                 tubelet_time=tubelet_time, inflate=inflate)
