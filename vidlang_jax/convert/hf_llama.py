"""Hugging Face transformers LLaMA (`LlamaForCausalLM`, `save_pretrained` folder) -> a world-model
release whose logits match transformers' (tests/test_convert.py; docs/converters.md).

  vidlang convert hf_llama --src path/to/llama --out releases/llama [--no-scan]

The world model is the same decoder (pre-norm RMSNorm, SwiGLU, rotate-half RoPE, grouped-query
attention with kv head h // (heads / kv_heads) serving query head h), so the conversion is
renames, transposes (torch Linear weights are `[out, in]`) and head reshapes. A config option
the world model has no counterpart for fails, naming it, rather than converting to a model that
computes something else.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidlang_jax import config as config_lib
from vidlang_jax import registry, release
from vidlang_jax.convert import weights
from vidlang_jax.sharding import tree_paths

log = logging.getLogger(__name__)

# The release config starts from the world model's base config (optimizer, mesh, evals for
# fine-tuning); configs/ sits beside the package in a source checkout.
WORLD_MODEL_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'configs', 'world_model.py')


def _unsupported(key: str, value: Any, why: str) -> ValueError:
  return ValueError(f'config.json: {key}={value!r} is not supported by convert hf_llama: {why}; '
                    'converting it anyway would give a model with other logits.')


def _rope_theta(hf: dict[str, Any]) -> float:
  """RoPE theta from `rope_parameters` (transformers v5) or `rope_theta` (v4); only plain RoPE
  (`rope_type` default) is what the world model computes."""
  for key in ('rope_parameters', 'rope_scaling'):
    rope = hf.get(key) or {}
    kind = rope.get('rope_type', rope.get('type', 'default'))
    if kind != 'default':
      raise _unsupported(f'{key}.rope_type', kind, 'the world model has plain RoPE only (no '
                         'linear / dynamic / yarn / llama3 scaling)')
  return float((hf.get('rope_parameters') or {}).get('rope_theta', hf.get('rope_theta', 1e4)))


def model_options(hf: dict[str, Any]) -> dict[str, Any]:
  """The world model's `config.model` fields for an HF LLaMA config.json; raises, naming the
  option, on what the world model cannot compute."""
  if hf.get('model_type') != 'llama':
    raise _unsupported('model_type', hf.get('model_type'), "only 'llama' is converted")
  if hf.get('hidden_act', 'silu') != 'silu':
    raise _unsupported('hidden_act', hf['hidden_act'], 'the world model MLP is SwiGLU (silu)')
  if hf.get('mlp_bias'):
    raise _unsupported('mlp_bias', hf['mlp_bias'], 'the world model MLP has no biases')
  width, heads = hf['hidden_size'], hf['num_attention_heads']
  kv_heads = hf.get('num_key_value_heads') or heads
  if width % heads or heads % kv_heads:
    raise _unsupported('num_attention_heads', heads, f'hidden_size={width} and '
                       f'num_key_value_heads={kv_heads} must be multiples of it / divide it')
  if hf.get('head_dim') not in (None, width // heads):
    raise _unsupported('head_dim', hf['head_dim'], f'the world model uses hidden_size / '
                       f'num_attention_heads = {width // heads}')
  return dict(vocab_size=hf['vocab_size'], width=width, depth=hf['num_hidden_layers'],
              num_heads=heads, num_kv_heads=kv_heads, mlp_dim=hf['intermediate_size'],
              rope_theta=_rope_theta(hf), norm_eps=float(hf.get('rms_norm_eps', 1e-6)))


def release_config(hf: dict[str, Any], scan: bool = True) -> ml_collections.ConfigDict:
  """configs/world_model.py:base with the model set from `hf`.

  The vocabulary is the checkpoint's, exactly (no padding to a multiple of 128 as the config
  does for our own vocabulary: the extra rows would be logits the source model never had).
  Attention is the reference op, which runs without a mesh; set `model.attention=ring` to train
  long rows. Activations are fp32, as the params are.
  """
  if not os.path.exists(WORLD_MODEL_CONFIG):
    raise FileNotFoundError(f'{WORLD_MODEL_CONFIG} does not exist: converters build the release '
                            'config from configs/world_model.py of a source checkout.')
  config = config_lib.load(f'{WORLD_MODEL_CONFIG}:base')
  config.model.update(model_options(hf))
  config.model.update(dict(attention='dot_product', scan=scan, dtype='float32'))
  config.data.video_tokenizer = ''  # a text LM: no video tokenizer came with it
  return config


class _Tensors:
  """The state dict, each tensor taken once as fp32, so that what was not taken can be named."""

  def __init__(self, tensors: dict[str, np.ndarray], src: str):
    self.tensors, self.src, self.taken = tensors, src, set()

  def __call__(self, name: str) -> np.ndarray:
    if name not in self.tensors:
      raise KeyError(f'{self.src} has no tensor {name!r} (it has e.g. '
                     f'{sorted(self.tensors)[:6]}).')
    self.taken.add(name)
    return np.asarray(self.tensors[name], np.float32)

  def left(self) -> list[str]:
    # Old checkpoints store RoPE's inverse frequencies as a buffer; the model computes them.
    return sorted(k for k in set(self.tensors) - self.taken
                  if not k.endswith('rotary_emb.inv_freq'))


def convert_params(tensors: dict[str, np.ndarray], hf: dict[str, Any], scan: bool = True,
                   src: str = '') -> dict[str, Any]:
  """The world model's params tree (fp32 numpy) from an HF LLaMA state dict."""
  options = model_options(hf)
  width, heads, kv_heads = options['width'], options['num_heads'], options['num_kv_heads']
  head_dim = width // heads
  take = _Tensors(tensors, src)
  prefix = 'model.' if 'model.embed_tokens.weight' in tensors else ''  # ForCausalLM | Model
  bias = hf.get('attention_bias', False)

  def projection(name: str, num_heads: int) -> dict[str, np.ndarray]:
    # torch [heads * head_dim, embed] (rows head-major) -> [embed, heads, head_dim]
    kernel = take(f'{name}.weight').T.reshape(width, num_heads, head_dim)
    return {'kernel': kernel, 'bias': (take(f'{name}.bias').reshape(num_heads, head_dim) if bias
                                       else np.zeros((num_heads, head_dim), np.float32))}

  def block(i: int) -> dict[str, Any]:
    p = f'{prefix}layers.{i}.'
    # torch [embed, heads * head_dim] -> [heads, head_dim, embed]
    out = take(f'{p}self_attn.o_proj.weight').T.reshape(heads, head_dim, width)
    return {
        'norm_attn': {'scale': take(f'{p}input_layernorm.weight')},
        'attn': {
            'query': projection(f'{p}self_attn.q_proj', heads),
            'key': projection(f'{p}self_attn.k_proj', kv_heads),
            'value': projection(f'{p}self_attn.v_proj', kv_heads),
            'out': {'kernel': out, 'bias': (take(f'{p}self_attn.o_proj.bias') if bias else
                                            np.zeros((width,), np.float32))},
        },
        'norm_mlp': {'scale': take(f'{p}post_attention_layernorm.weight')},
        'mlp': {name: {'kernel': take(f'{p}mlp.{name}_proj.weight').T}
                for name in ('gate', 'up', 'down')},
    }

  embedding = take(f'{prefix}embed_tokens.weight')  # [vocab, embed]
  if hf.get('tie_word_embeddings', False):
    lm_head = embedding.T  # untied from here on: fine-tuning trains them apart
    if 'lm_head.weight' in tensors:
      take('lm_head.weight')
  else:
    lm_head = take('lm_head.weight').T  # [embed, vocab]
  blocks = [block(i) for i in range(options['depth'])]
  params = {'token_embedding': embedding, 'norm_out': {'scale': take(f'{prefix}norm.weight')},
            'lm_head': {'kernel': lm_head}}
  if scan:  # one stacked tree, layers first
    params['blocks'] = jax.tree.map(lambda *xs: np.stack(xs), *blocks)
  else:
    params.update({f'block_{i}': b for i, b in enumerate(blocks)})
  if take.left():
    raise ValueError(f'{src} has tensors convert hf_llama does not map (an option of '
                     f'config.json it does not know?): {take.left()[:10]}')
  return params


def check_params(params: dict[str, Any], config: ml_collections.ConfigDict) -> None:
  """Fails unless `params` has exactly the model's param names and shapes."""
  model = registry.lookup(config.model.name, kind='model')(
      **{k: v for k, v in config.model.items() if k != 'name'})
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                          jnp.zeros((1, 1), jnp.int32)))['params']
  shapes = lambda tree: {p: tuple(x.shape) for p, x in zip(jax.tree.leaves(tree_paths(tree)),
                                                           jax.tree.leaves(tree))}
  want, got = shapes(abstract), shapes(params)
  wrong = sorted(f'{p}: model {want.get(p)}, converted {got.get(p)}'
                 for p in set(want) | set(got) if want.get(p) != got.get(p))
  if wrong:
    raise ValueError('converted params do not fit the world model: ' + '; '.join(wrong[:10]))


def _model_card(src: str, hf: dict[str, Any], config: ml_collections.ConfigDict,
                num_params: int) -> str:
  m = config.model
  return '\n'.join([
      f'# world_model converted from Hugging Face LLaMA ({num_params / 1e6:.2f}M params)', '',
      f'Converted from `{src}` by `vidlang convert hf_llama` (docs/converters.md).', '',
      f'width {m.width}, depth {m.depth}, heads {m.num_heads}, kv heads {m.num_kv_heads}, '
      f'mlp_dim {m.mlp_dim}, vocab {m.vocab_size}, rope_theta {m.rope_theta:g}, RMSNorm eps '
      f'{m.norm_eps:g}, tied embeddings {bool(hf.get("tie_word_embeddings", False))}, '
      f'layers {"scanned" if m.scan else "unrolled"}.', '',
      '## Use', '', '```python', 'import vidlang_jax',
      "model, params, config = vidlang_jax.load_pretrained('.')",
      'logits = model.apply({"params": params}, tokens)  # [batch, length] ids', '```', '',
      "Logits match transformers' LlamaForCausalLM to 1e-4 (fp32) on the models of "
      'tests/test_convert.py. Fine-tune: `--config.init_from.path=<this folder>`; the ids are '
      "the source's tokenizer's (tokenizer.json, when the source had one).", ''])


@registry.register('convert.hf_llama')
def convert(src: str, out: str, *, scan: bool = True) -> str:
  """`src` (a local transformers LLaMA folder) as a world-model release at `out`; returns it."""
  hf = weights.read_config(src)
  config = release_config(hf, scan)  # fails on unsupported options before reading weights
  params = convert_params(weights.read_state_dict(src), hf, scan, src)
  check_params(params, config)
  tokenizer = os.path.join(src, 'tokenizer.json')
  out = release.write(out, config, params, source=os.path.abspath(src),
                      tokenizer_file=tokenizer if os.path.exists(tokenizer) else None)
  num_params = sum(x.size for x in jax.tree.leaves(params))
  with open(os.path.join(out, 'README.md'), 'w', encoding='utf-8') as f:
    f.write(_model_card(os.path.abspath(src), hf, config, num_params))
  log.info('Converted %s (%d params) to %s.', src, num_params, out)
  return out
