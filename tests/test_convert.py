"""Converters against the library they convert from: a tiny random transformers LLaMA, saved with
`save_pretrained`, converted and loaded with `vidlang_jax.load_pretrained`, gives transformers'
logits (fp32, torch on the CPU). The option checks need no torch and run in the fast suite.

The random weights are scaled so that a wrong detail shows: every norm scale and bias is random
(a swapped or dropped one changes the logits), matrices are ~1/sqrt(fan_in) (logits of order 1),
and the embeddings are small (rms ~0.003), so that the first RMSNorm's epsilon (1e-5 vs the
model's default 1e-6) changes its output by ~40 %.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vidlang_jax
from vidlang_jax import convert, main
from vidlang_jax.convert import hf_llama, weights

from helpers import hf_libraries

TINY = dict(model_type='llama', vocab_size=300, hidden_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            rope_theta=10_000.0, rms_norm_eps=1e-5, max_position_embeddings=64,
            hidden_act='silu', tie_word_embeddings=False)
TOLERANCE = 1e-4  # max abs logit difference, fp32


_hf = hf_libraries


def tiny_llama(path, embed_std=0.003, **overrides):
  """A random `LlamaForCausalLM` with TINY's sizes (and `overrides`), saved to `path`."""
  torch, transformers = _hf()
  options = {k: v for k, v in (TINY | overrides).items() if k != 'model_type'}
  theta = options.pop('rope_theta')
  config = transformers.LlamaConfig(
      **options, rope_parameters={'rope_type': 'default', 'rope_theta': theta})
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():  # a tied lm_head is listed once, as the embedding
      if 'norm' in name:
        p.copy_(1 + 0.3 * torch.randn_like(p))
      elif 'embed_tokens' in name:
        p.normal_(0, embed_std)
      elif p.ndim == 1:  # attention biases
        p.normal_(0, 0.3)
      else:
        p.normal_(0, p.shape[1] ** -0.5)
  model.save_pretrained(path)
  return model


def max_logit_diff(hf_model, release_dir, length, batch=2):
  torch, _ = _hf()
  tokens = np.random.default_rng(length).integers(0, TINY['vocab_size'], (batch, length))
  with torch.no_grad():
    want = hf_model(torch.from_numpy(tokens)).logits.numpy()  # [batch, length, vocab]
  model, params, _ = vidlang_jax.load_pretrained(release_dir)
  got = np.asarray(jax.jit(model.apply)({'params': params}, jnp.asarray(tokens, jnp.int32)))
  assert got.shape == want.shape
  return float(np.max(np.abs(got - want))), float(np.std(want))


CASES = {
    # name: (LlamaConfig overrides, scan, embedding std)
    'scanned': (dict(), True, 0.003),
    'unrolled_theta_bias': (dict(rope_theta=500_000.0, rms_norm_eps=1e-6, attention_bias=True),
                            False, 0.003),
    'tied': (dict(tie_word_embeddings=True), True, 0.1),
}


@pytest.mark.hf
@pytest.mark.parametrize('case', sorted(CASES))
def test_hf_llama_logits_match_transformers(tmp_path, case):
  overrides, scan, embed_std = CASES[case]
  hf_model = tiny_llama(tmp_path / 'hf', embed_std, **overrides)
  out = str(tmp_path / 'release')
  (tmp_path / 'hf' / 'tokenizer.json').write_text('{"stand-in": true}', encoding='utf-8')
  if scan:
    hf_llama.convert(str(tmp_path / 'hf'), out)
  else:  # the CLI's path
    convert.main(['hf_llama', '--src', str(tmp_path / 'hf'), '--out', out, '--no-scan'])

  for length in (7, 19):
    diff, scale = max_logit_diff(hf_model, out, length)
    print(f'{case}: length {length}: max |logits - transformers| = {diff:.2e} '
          f'(logits std {scale:.2f})')
    assert diff <= TOLERANCE, (case, length, diff)
  _, params, config = vidlang_jax.load_pretrained(out)
  m, hf = config.model, TINY | overrides
  assert (m.vocab_size, m.width, m.depth, m.num_heads, m.num_kv_heads, m.mlp_dim) == (
      hf['vocab_size'], hf['hidden_size'], hf['num_hidden_layers'], hf['num_attention_heads'],
      hf['num_key_value_heads'], hf['intermediate_size'])
  assert (m.rope_theta, m.norm_eps, m.scan) == (hf['rope_theta'], hf['rms_norm_eps'], scan)
  assert ('blocks' in params) == scan and ('block_1' in params) != scan
  assert config.data.tokenizer == os.path.join(out, 'tokenizer.json')  # the source's ids
  assert open(config.data.tokenizer, encoding='utf-8').read() == '{"stand-in": true}'
  assert not config.data.video_tokenizer


@pytest.mark.hf
def test_hf_llama_reads_shards_and_torch_files(tmp_path):
  """Sharded safetensors (an index and its shards) and `pytorch_model.bin`, in bfloat16 as most
  LLaMA weights ship, read to the same arrays as torch holds."""
  torch, _ = _hf()
  model = tiny_llama(tmp_path / 'hf')
  model.to(torch.bfloat16).save_pretrained(tmp_path / 'sharded', max_shard_size='40KB')
  assert os.path.exists(tmp_path / 'sharded' / 'model.safetensors.index.json')
  state = {k: v.float().numpy() for k, v in model.state_dict().items()}
  sharded = weights.read_state_dict(str(tmp_path / 'sharded'))
  os.makedirs(tmp_path / 'bin')
  torch.save(model.state_dict(), tmp_path / 'bin' / 'pytorch_model.bin')
  for read in (sharded, weights.read_state_dict(str(tmp_path / 'bin'))):
    assert set(read) >= set(state) - {'lm_head.weight'}
    for name in read:
      assert read[name].dtype == jnp.bfloat16, name
      np.testing.assert_array_equal(read[name].astype(np.float32), state[name], err_msg=name)


@pytest.mark.hf
@pytest.mark.parametrize('overrides, named', [
    (dict(mlp_bias=True), 'mlp_bias'),
    (dict(rope_parameters={'rope_type': 'linear', 'rope_theta': 1e4, 'factor': 2.0}),
     'rope_parameters.rope_type'),
])
def test_hf_llama_unsupported_transformers_option_is_named(tmp_path, overrides, named):
  """The option names as transformers writes them in config.json."""
  _, transformers = _hf()
  options = {k: v for k, v in (TINY | overrides).items() if k not in ('model_type', 'rope_theta')}
  transformers.LlamaForCausalLM(transformers.LlamaConfig(**options)).save_pretrained(
      tmp_path / 'hf')
  with pytest.raises(ValueError, match=named):
    hf_llama.convert(str(tmp_path / 'hf'), str(tmp_path / 'release'))
  assert not os.path.exists(tmp_path / 'release')


# The fast suite: the option checks read config.json only, no torch.

def _write_config(path, **overrides):
  os.makedirs(path)
  with open(os.path.join(path, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(TINY | overrides, f)
  return str(path)


@pytest.mark.parametrize('overrides, named', [
    (dict(mlp_bias=True), 'mlp_bias'),
    (dict(rope_scaling={'rope_type': 'llama3', 'factor': 8.0}), 'rope_scaling.rope_type'),
    (dict(rope_parameters={'rope_type': 'yarn', 'rope_theta': 1e4}), 'rope_parameters.rope_type'),
    (dict(hidden_act='gelu'), 'hidden_act'),
    (dict(head_dim=32), 'head_dim'),
    (dict(model_type='mistral'), 'model_type'),
])
def test_hf_llama_unsupported_option_is_named(tmp_path, overrides, named):
  src = _write_config(tmp_path / 'hf', **overrides)
  with pytest.raises(ValueError, match=named):
    hf_llama.convert(src, str(tmp_path / 'release'))
  assert not os.path.exists(tmp_path / 'release')


def test_hf_llama_options():
  hf = TINY | dict(rope_theta=None, rope_parameters={'rope_type': 'default', 'rope_theta': 5e5},
                   num_key_value_heads=None)
  assert hf_llama.model_options(hf) == dict(
      vocab_size=300, width=64, depth=2, num_heads=4, num_kv_heads=4, mlp_dim=128,
      rope_theta=5e5, norm_eps=1e-5)


def test_convert_cli_errors_name_the_problem(tmp_path, monkeypatch):
  """`vidlang convert` ends on `error: <message>`: an unsupported option, a hub id."""
  src = _write_config(tmp_path / 'hf', mlp_bias=True)
  for argv, named in ((['--src', src], 'mlp_bias'),
                      (['--src', 'meta-llama/Llama-2-7b-hf'], 'never the hub')):
    monkeypatch.setattr(sys, 'argv', ['vidlang', 'convert', 'hf_llama', *argv,
                                      '--out', str(tmp_path / 'release')])
    with pytest.raises(SystemExit) as e:
      main.run()
    assert str(e.value.code).startswith('error: ') and named in str(e.value.code), e.value.code
