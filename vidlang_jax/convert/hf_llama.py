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

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidlang_jax import registry
from vidlang_jax.convert import common, weights


def _unsupported(key: str, value: Any, why: str) -> ValueError:
  return common.unsupported('hf_llama', key, value, why)


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
  config = common.base_config('world_model')
  config.model.update(model_options(hf))
  config.model.update(dict(attention='dot_product', scan=scan, dtype='float32'))
  config.data.video_tokenizer = ''  # a text LM: no video tokenizer came with it
  return config


def convert_params(tensors: dict[str, np.ndarray], hf: dict[str, Any], scan: bool = True,
                   src: str = '') -> dict[str, Any]:
  """The world model's params tree (fp32 numpy) from an HF LLaMA state dict."""
  options = model_options(hf)
  width, heads, kv_heads = options['width'], options['num_heads'], options['num_kv_heads']
  head_dim = width // heads
  # Old checkpoints store RoPE's inverse frequencies as a buffer; the model computes them.
  take = common.Tensors(tensors, src, ignore=('rotary_emb.inv_freq',))
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
  params = {'token_embedding': embedding, 'norm_out': {'scale': take(f'{prefix}norm.weight')},
            'lm_head': {'kernel': lm_head},
            **common.stack([block(i) for i in range(options['depth'])], scan)}
  take.check_all_taken('hf_llama')
  return params


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
  common.check_params(params, config, jax.ShapeDtypeStruct((1, 1), jnp.int32))
  return common.write_release(
      src, out, config, params, lambda path, n: _model_card(path, hf, config, n))
