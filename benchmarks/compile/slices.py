"""Every `base` config compiled for its intended TPU slice on this CPU (`vidlang compile`,
libtpu from the [tpu] extra): per-chip memory against HBM, FLOPs, collectives, roofline step
time. JSON to benchmarks/results/compile_slices.json and a markdown table (README "Launch").

  .venv/bin/python benchmarks/compile/slices.py [--only two_tower_base,...]

About 3-5 minutes a case on 2 CPU cores; nothing runs on a TPU.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FSDP_ALL = ['--config.mesh.data=1', '--config.mesh.fsdp=-1']
# name -> (config, topology, overrides). World-model stages bring their own mesh (8K tokens of
# a row per chip); stages after the first need an `init` run, which compiling never reads.
CASES = {
    'two_tower_base': ('configs/two_tower.py:base', 'v5e:16x16', FSDP_ALL),
    'two_tower_base_2_slices': ('configs/two_tower.py:base', 'v5e:16x16', [
        '--num_slices=2', '--config.mesh.data=1', '--config.mesh.fsdp=256',
        '--config.mesh.dcn.data=2', '--config.batch_size=8192']),
    'masked_video_base': ('configs/masked_video.py:base', 'v5e:16x16', FSDP_ALL),
    'video_tokenizer_base': ('configs/video_tokenizer.py:base', 'v5e:16x16', FSDP_ALL),
    **{f'world_model_base_stage{k}': (
        f'configs/world_model.py:base,stage={k}' + (',init=gs://unused' if k > 1 else ''),
        'v5p:8x8x8', []) for k in range(1, 6)},
}


def run_case(name: str) -> dict:
  config, topology, overrides = CASES[name]
  num_slices = [o for o in overrides if o.startswith('--num_slices')]
  overrides = [o for o in overrides if not o.startswith('--num_slices')]
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'report.json')
    command = [sys.executable, '-m', 'vidlang_jax', 'compile', '--config',
               os.path.join(ROOT, config), '--topology', topology, *num_slices, '--json', out,
               *overrides]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
      return {'name': name, 'error': done.stderr[-3000:]}
    report = json.load(open(out))
  report.update(name=name, command='vidlang compile --config ' + config + ' --topology '
                + topology + ''.join(' ' + o for o in num_slices + overrides),
                wall_s=time.perf_counter() - start)
  return report


def table(reports: list[dict]) -> str:
  rows = ['| config | slice | mesh | params | memory / chip (peak) | FLOPs / chip / step | '
          'roofline step | collectives (AG / AR / RS / A2A / CP) |',
          '|---|---|---|---|---|---|---|---|']
  for r in reports:
    if 'error' in r or 'flops_per_chip' not in r:
      rows.append(f"| {r['name']} | | | | failed: see JSON | | | |")
      continue
    mesh = ' × '.join(f'{k} {v}' for k, v in r['mesh'].items() if v > 1)
    slices = f" × {r['num_slices']}" if r['num_slices'] > 1 else ''
    c = r['collectives']
    rows.append(
        f"| `{r['name']}` | {r['topology']}{slices} | {mesh} | {r['params'] / 1e9:.2f}B | "
        f"{r['memory_per_chip_bytes'] / 2**30:.1f} of {r['hbm_bytes'] / 2**30:.2f} GiB"
        f"{'' if r['fits'] else ' (does not fit)'} | {r['flops_per_chip']:.2e} | "
        f"{r['roofline_step_s']:.2f} s | {c['all-gather']} / {c['all-reduce']} / "
        f"{c['reduce-scatter']} / {c['all-to-all']} / {c['collective-permute']} |")
  return '\n'.join(rows)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--only', default='', help='comma-separated case names')
  args = parser.parse_args()
  names = [n for n in args.only.split(',') if n] or list(CASES)
  path = os.path.join(ROOT, 'benchmarks', 'results', 'compile_slices.json')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  previous = {r['name']: r for r in json.load(open(path))} if os.path.exists(path) else {}
  for name in names:
    previous[name] = run_case(name)
    print(json.dumps({k: v for k, v in previous[name].items() if k != 'memory'}), flush=True)
    ordered = [previous[n] for n in CASES if n in previous]
    with open(path, 'w') as f:
      json.dump(ordered, f, indent=2)
  print(table([previous[n] for n in CASES if n in previous]))


if __name__ == '__main__':
  main()
