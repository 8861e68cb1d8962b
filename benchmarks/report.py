"""Writes benchmarks/RESULTS.md from benchmarks/results/*.json (run by `make bench` last).

  .venv/bin/python benchmarks/report.py [--results DIR] [--out FILE]

One row per figure: what it is, its goal, ours, the peer, the ratio (both measured in the same
run), whether the goal is met, the machine and date of the run and the command behind it.
Results of `--smoke` runs are refused: their numbers mean nothing.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import harness

# Headline comparisons first, then the rest by name.
FIRST = ('lm_vs_llama', 'masked_video_vs_videomae', 'attention_one_device', 'mfu',
         'input_pipeline', 'masked_encoder')

HEADER = """# Benchmark results

Written by `make bench` (`benchmarks/report.py`) from `benchmarks/results/*.json`; do not edit
by hand. Every ratio is of two things measured in the same run, interleaved, median of the
repeats after a warm-up (benchmarks/harness.py). What limits the figures that miss their goal,
with the profiles that show it: docs/performance.md.
"""


def _number(x) -> str:
  if x is None:
    return ''
  return f'{x:.3g}' if isinstance(x, float) else str(x)


def _machine(m: dict) -> str:
  parts = [m.get('cpu', '?'), f"{m.get('cores', '?')} cores", f"jax {m.get('jax', '?')}"]
  if m.get('torch'):
    parts.append(f"torch {m['torch']} ({m.get('torch_threads', '?')} threads)")
  if m.get('jax_devices', 1) > 1:
    parts.append(f"{m['jax_devices']} {m.get('jax_device', '')} devices")
  flags = [f for f in m.get('xla_flags', '').split() if 'device_count' not in f]
  if flags:
    parts.append('XLA_FLAGS ' + ' '.join(flags))
  return ', '.join(parts)


def render(results: list[dict]) -> str:
  lines = [HEADER, '| figure | goal | ours | peer | ratio | met | note |',
           '|---|---|---|---|---|---|---|']
  runs = []
  for result in results:
    for row in result['figures']:
      met = '' if row['met'] is None else ('yes' if row['met'] else '**no**')
      ours = f"{_number(row['ours'])} {row.get('unit', '')}".strip()
      peer = '' if row['peer'] is None else f"{_number(row['peer'])} {row.get('unit', '')}"
      lines.append(f"| {row['figure']} | {row['goal'] or ''} | {ours} | {peer.strip()} | "
                   f"{_number(row['ratio'])} | {met} | {row.get('note', '')} |")
    runs.append(f"- `{result['name']}`: {result['date']}, {_machine(result['machine'])}; "
                f"`{result['command']}`")
  return '\n'.join(lines + ['', '## Runs', ''] + runs) + '\n'


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--results', default=harness.RESULTS)
  p.add_argument('--out', default=os.path.join(os.path.dirname(harness.RESULTS), 'RESULTS.md'))
  p.add_argument('--allow-smoke', action='store_true', help='(tests) render smoke results')
  args = p.parse_args()
  results = []
  for path in sorted(glob.glob(os.path.join(args.results, '*.json'))):
    with open(path) as f:
      result = json.load(f)
    if 'figures' not in result:
      continue  # another tool's JSON (e.g. compile_slices.json)
    if result.get('smoke') and not args.allow_smoke:
      raise SystemExit(f'{path} is from a --smoke run; rerun it without --smoke.')
    results.append(result)
  results.sort(key=lambda r: (FIRST.index(r['name']) if r['name'] in FIRST else len(FIRST),
                              r['name']))
  if not results:
    raise SystemExit(f'No benchmark results in {args.results}: run `make bench`.')
  with open(args.out, 'w') as f:
    f.write(render(results))
  print(f'wrote {args.out} ({sum(len(r["figures"]) for r in results)} figures)')


if __name__ == '__main__':
  main()
