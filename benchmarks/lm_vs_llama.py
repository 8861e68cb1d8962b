"""The world model's train step against HF transformers' LlamaForCausalLM in PyTorch: the same
decoder (RMSNorm, SwiGLU, RoPE, causal attention), batch, sequence, fp32, AdamW with global-norm
clipping, on the same CPU threads; and its MFU over the matmul peak measured in the same run.

  .venv/bin/python benchmarks/lm_vs_llama.py   # needs the [hf] extra (make bench installs it)

Ours is `configs/world_model.py:tiny` at d512 x 8 layers, SwiGLU 1408, vocab 8192, 8 heads of
64, seq 2048, batch 1, with ring attention on one device (its blockwise kernel); torch's is
LlamaForCausalLM with `attn_implementation='sdpa'`. MFU counts the model's FLOPs as maxtext
does (vidlang_jax/flops.py): 6 x matmul params x tokens, plus causal attention
6 x L^2 x heads x head_dim x layers (half of the full product's 12).
"""

from __future__ import annotations

import harness
import steps

SIZES = dict(width=512, depth=8, heads=8, mlp=1408, vocab=8192, length=2048, batch=1,
             block=512)
SMOKE = dict(width=64, depth=2, heads=2, mlp=128, vocab=256, length=128, batch=1, block=64)


def ours(s: dict[str, int]) -> steps.Step:
  config = steps.load('world_model.py:tiny', {
      'model.width': s['width'], 'model.depth': s['depth'], 'model.num_heads': s['heads'],
      'model.num_kv_heads': s['heads'], 'model.mlp_dim': s['mlp'],
      'model.vocab_size': s['vocab'], 'model.block_size': s['block'],
      'model.attention': 'ring', 'data.sequence_length': s['length'],
      'batch_size': s['batch']})
  return steps.Step(config, s['vocab'])


def torch_llama(s: dict[str, int]):
  import torch
  import transformers
  config = transformers.LlamaConfig(
      vocab_size=s['vocab'], hidden_size=s['width'], intermediate_size=s['mlp'],
      num_hidden_layers=s['depth'], num_attention_heads=s['heads'],
      num_key_value_heads=s['heads'], max_position_embeddings=s['length'], rms_norm_eps=1e-6,
      tie_word_embeddings=False, attn_implementation='sdpa')
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(config)
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
  tokens = torch.randint(4, s['vocab'], (s['batch'], s['length']))

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()

  matmul_params = sum(p.numel() for n, p in model.named_parameters()
                      if p.ndim >= 2 and 'embed_tokens' not in n)
  return step, matmul_params


def main() -> None:
  args = harness.parser(__doc__.splitlines()[0]).parse_args()
  s = SMOKE if args.smoke else SIZES
  repeats = 1 if args.smoke else args.repeats
  step = ours(s)
  torch_step, torch_params = torch_llama(s)
  params = steps.matmul_params(step.state['params'])
  assert params == torch_params, (params, torch_params)  # the same model, counted twice
  run = harness.against_torch(step.step, torch_step, step.model_flops, repeats)
  t = run['medians']
  figures = [
      harness.figure('LM train step, ours / LlamaForCausalLM (torch, sdpa)', t['ours'],
                     t['torch'], goal='<= 0.85', unit='s/step'),
      harness.figure('LM train step MFU (ours), over the jax matmul peak', run['mfu'],
                     goal='>= 0.70', note=f"torch: {run['torch_mfu']:.0%} over its own matmul "
                     'peak', lower_is_better=False),
  ]
  harness.write(args, 'lm_vs_llama', figures, sizes=s, xla_flops=step.flops,
                matmul_params=params, **run)


if __name__ == '__main__':
  main()
