"""The masked-video (VideoMAE) train step against HF transformers' VideoMAEForPreTraining in
PyTorch: the same encoder and decoder, clips, tube mask ratio, batch, fp32, AdamW with
global-norm clipping, on the same CPU threads; and the step's MFU over the matmul peak
measured in the same run.

  .venv/bin/python benchmarks/masked_video_vs_videomae.py   # needs the [hf] extra

Ours is `configs/masked_video.py:tiny` at 16 x 64² clips, tubelet 2 x 8 x 8, encoder d384 x 6
(6 heads, MLP 1536), decoder d192 x 2 (3 heads, MLP 768), tube masking at 0.9, batch 8, target
pixels normalised per tubelet; torch's is VideoMAEForPreTraining with the same sizes,
`norm_pix_loss=True` and a tube mask of the same ratio.
"""

from __future__ import annotations

import harness
import numpy as np
import steps

SIZES = dict(frames=16, image=64, tubelet=(2, 8, 8), width=384, depth=6, heads=6, mlp=1536,
             dec_width=192, dec_depth=2, dec_heads=3, dec_mlp=768, batch=8, ratio=0.9)
SMOKE = dict(SIZES, frames=4, image=32, width=64, depth=1, heads=2, mlp=128, dec_width=32,
             dec_depth=1, dec_heads=2, dec_mlp=64, batch=2)


def ours(s: dict) -> steps.Step:
  config = steps.load('masked_video.py:tiny', {
      'data.num_frames': s['frames'], 'data.image_size': s['image'],
      'model.video.num_frames': s['frames'], 'model.video.image_size': s['image'],
      'model.video.tubelet': s['tubelet'], 'model.video.width': s['width'],
      'model.video.depth': s['depth'], 'model.video.num_heads': s['heads'],
      'model.video.mlp_dim': s['mlp'], 'model.decoder.width': s['dec_width'],
      'model.decoder.depth': s['dec_depth'], 'model.decoder.num_heads': s['dec_heads'],
      'model.decoder.mlp_dim': s['dec_mlp'], 'masking.kind': 'tube', 'masking.ratio': s['ratio'],
      'batch_size': s['batch']})
  return steps.Step(config, vocab=1000)


def tokens(s: dict) -> tuple[int, int]:
  """(tubelets per clip, of which visible)."""
  pt, ph, pw = s['tubelet']
  grid = (s['frames'] // pt, s['image'] // ph, s['image'] // pw)
  spatial = grid[1] * grid[2]
  return grid[0] * spatial, grid[0] * (spatial - int(round(s['ratio'] * spatial)))


def torch_videomae(s: dict):
  import torch
  import transformers
  config = transformers.VideoMAEConfig(
      image_size=s['image'], patch_size=s['tubelet'][1], num_channels=3,
      num_frames=s['frames'], tubelet_size=s['tubelet'][0], hidden_size=s['width'],
      num_hidden_layers=s['depth'], num_attention_heads=s['heads'],
      intermediate_size=s['mlp'], decoder_hidden_size=s['dec_width'],
      decoder_num_hidden_layers=s['dec_depth'], decoder_num_attention_heads=s['dec_heads'],
      decoder_intermediate_size=s['dec_mlp'], norm_pix_loss=True, hidden_act='gelu')
  torch.manual_seed(0)
  model = transformers.VideoMAEForPreTraining(config)
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
  pixels = torch.rand(s['batch'], s['frames'], 3, s['image'], s['image'])
  total, visible = tokens(s)
  time_steps = s['frames'] // s['tubelet'][0]
  spatial = total // time_steps
  rng = np.random.default_rng(0)

  def tube_mask():  # one spatial mask per clip, repeated over time (the same count masked)
    masks = []
    for _ in range(s['batch']):
      spatial_mask = np.zeros(spatial, bool)
      spatial_mask[rng.permutation(spatial)[:spatial - visible // time_steps]] = True
      masks.append(np.tile(spatial_mask, time_steps))
    return torch.from_numpy(np.stack(masks))

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = model(pixel_values=pixels, bool_masked_pos=tube_mask()).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()

  return step, sum(p.numel() for p in model.parameters())


def main() -> None:
  args = harness.parser(__doc__.splitlines()[0]).parse_args()
  s = SMOKE if args.smoke else SIZES
  repeats = 1 if args.smoke else args.repeats
  step = ours(s)
  torch_step, torch_params = torch_videomae(s)
  run = harness.against_torch(step.step, torch_step, step.model_flops, repeats)
  t = run['medians']
  figures = [
      harness.figure('masked video train step, ours / VideoMAEForPreTraining (torch)',
                     t['ours'], t['torch'], goal='<= 0.7', unit='s/step'),
      harness.figure('masked video train step MFU (ours), over the jax matmul peak', run['mfu'],
                     note=f"torch: {run['torch_mfu']:.0%} over its own matmul peak",
                     lower_is_better=False),
  ]
  harness.write(args, 'masked_video_vs_videomae', figures, sizes=s, xla_flops=step.flops,
                params=step.params, torch_params=torch_params, **run)


if __name__ == '__main__':
  main()
