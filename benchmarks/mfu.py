"""MFU of each family's `tiny` train step on one CPU device: the analytic model FLOPs
(vidlang_jax/flops.py, as maxtext counts) and XLA's count of the compiled step, each over the
matmul peak measured in the same run, with the two counts set side by side.

  .venv/bin/python benchmarks/mfu.py

The tiny configs are small for a CPU's matmuls (widths 64-128): their MFU says how much of a
step is not matmul work at that size, not how a base config runs. The mid-size LM's MFU is in
lm_vs_llama.json.
"""

from __future__ import annotations

import harness
import steps

CONFIGS = {  # family: (config, synthetic text vocabulary)
    'two_tower': ('two_tower.py:tiny', 1000),
    'masked_video': ('masked_video.py:tiny', 1000),
    'video_tokenizer': ('video_tokenizer.py:tiny', 1000),
    'world_model': ('world_model.py:tiny', None),
}
SMOKE = {'batch_size': 2}


def main() -> None:
  args = harness.parser(__doc__.splitlines()[0]).parse_args()
  repeats = 1 if args.smoke else args.repeats
  built = {}
  for family, (spec, vocab) in CONFIGS.items():
    config = steps.load(spec, SMOKE if args.smoke else {})
    built[family] = steps.Step(config, vocab or config.model.vocab_size)
  candidates = {family: step.step for family, step in built.items()}
  candidates['jax matmul'] = harness.jax_matmul()
  times = harness.time_interleaved(candidates, repeats=repeats)
  t = {k: harness.median(v) for k, v in times.items()}
  peak = 2 * 2048**3 / t['jax matmul']
  figures, details = [], {}
  for family, step in built.items():
    xla_mfu = step.flops / t[family] / peak
    model_mfu = step.model_flops / t[family] / peak if step.model_flops else None
    details[family] = dict(config=CONFIGS[family][0], seconds=t[family], xla_flops=step.flops,
                           model_flops=step.model_flops, params=step.params,
                           batch_size=step.config.batch_size)
    cross = ('' if step.model_flops is None else
             f'XLA counts {step.flops / step.model_flops:.2f}x the model FLOPs')
    if model_mfu is None:
      name, value, note = f'{family} tiny train step MFU (XLA FLOPs)', xla_mfu, (
          'no analytic count for this family')
    else:
      name, value, note = f'{family} tiny train step MFU (model FLOPs)', model_mfu, cross
    figures.append(harness.figure(name, value, note=note, lower_is_better=False))
  harness.write(args, 'mfu', figures, families=details, times=times, medians=t,
                jax_matmul_flops_per_s=peak)


if __name__ == '__main__':
  main()
