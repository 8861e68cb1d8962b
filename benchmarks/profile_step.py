"""Where a train step's time goes: a `jax.profiler` trace of the LM or masked-video step of
the torch comparisons, its ops attributed to parts of the model through the optimized HLO
(XLA's dump names each op's jax source), summed by part and kind.

  .venv/bin/python benchmarks/profile_step.py --family lm [--top 15] [--smoke]

Prints the table of docs/performance.md and writes results/profile_<family>.json. Times are
the sum over the threads of XLA:CPU's ops (two cores: about twice the wall time where both
run), so the shares are what to read.
"""

from __future__ import annotations

import os
import tempfile

DUMP = tempfile.mkdtemp(prefix='profile_step_')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + f' --xla_dump_to={DUMP}'
                           ' --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*train_step.*')

import collections  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402

import harness  # noqa: E402
import jax  # noqa: E402

# (part, regex on the op's jax source path), first match wins.
PARTS = [
    ('attention kernel', r'while/body|shard_map|cond/branch|_ring|dot_product_attention'),
    ('RoPE', r'attn/(concatenate|cos|sin|split|mul)'),
    ('LM head', r'lm_head'),
    ('cross-entropy + accuracy', r'log_softmax|logsumexp|take_along_axis|jvp\(\)/(exp|ge|eq|'
     r'reduce_max|argmax|and|sub)'),
    ('MLP', r'/mlp/'),
    ('q, k, v, out projections', r'/attn/(query|key|value|out)|/attention/'),
    ('norms', r'norm'),
    ('embeddings, patches', r'token_embedding|patch_embed|take|gather'),
    ('decoder (masked video)', r'decoder'),
    ('optimizer, clipping, guard', r'jit\(train_step\)/(add|mul|sub|div|sqrt|pow|integer_pow|'
     r'select_n|max|min|reduce_sum|lt|gt|is_finite|and|convert)'),
]


def op_sources(dump_dir: str) -> tuple[dict[str, str], dict[str, str]]:
  """HLO op name -> jax source path (`op_name` metadata; a fusion takes its dot's or first
  op's), and op name -> shape, from the optimized module of the train step."""
  files = glob.glob(f'{dump_dir}/*train_step*after_optimizations.txt')
  text = open(max(files, key=os.path.getsize)).read()
  names, shapes, calls = {}, {}, {}
  ops_in = collections.defaultdict(list)
  computation = None
  for line in text.splitlines():
    header = re.match(r'^%?([\w.\-]+) .*\{\s*$', line)
    if header and not line.startswith(' '):
      computation = header.group(1)
    op = re.match(r'\s*(?:ROOT )?%([\w.\-]+) = (\S+) ', line)
    if not op:
      continue
    shapes[op.group(1)] = op.group(2)
    source = re.search(r'op_name="([^"]*)"', line)
    if source:
      names[op.group(1)] = source.group(1)
      ops_in[computation].append(source.group(1))
    called = re.search(r'calls=%([\w.\-]+)', line)
    if called:
      calls[op.group(1)] = called.group(1)
  for op, computation in calls.items():
    inner = ops_in.get(computation, [])
    dots = [s for s in inner if 'dot_general' in s]
    if (dots or inner) and not names.get(op):
      names[op] = (dots or inner)[0]
  return names, shapes


def op_times(fn, repeats: int) -> collections.Counter:
  """Nanoseconds per call of each XLA op (leaf thunks) over a profiled run of `fn`."""
  fn()
  trace_dir = tempfile.mkdtemp(prefix='trace_')
  with jax.profiler.trace(trace_dir):
    for _ in range(repeats):
      fn()
  path = glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True)[0]
  totals: collections.Counter = collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    if not plane.name.startswith('/host:CPU'):
      continue
    for line in plane.lines:
      if line.name == 'python':
        continue
      for event in line.events:
        if not event.name.startswith(('ThunkExecutor', 'while', 'cond', 'SlinkyThreadPool')):
          totals[event.name] += event.duration_ns / repeats
  return totals


def kind(op: str, source: str) -> str:
  """A library fusion (YNNPACK) may be a reduction: its source says whether it is a dot."""
  if op.startswith('dot') or op.startswith(('ynn_fusion', 'xnn_fusion')) and (
      'dot_general' in source or not source):
    return 'matmul'
  return 'copy, transpose' if ('copy' in op or 'transpose' in op) else 'elementwise, reduce'


def main() -> None:
  p = harness.parser(__doc__.splitlines()[0])
  p.add_argument('--family', choices=('lm', 'masked_video'), default='lm')
  p.add_argument('--top', type=int, default=12)
  args = p.parse_args()
  if args.family == 'lm':
    import lm_vs_llama as bench
  else:
    import masked_video_vs_videomae as bench
  step = bench.ours(bench.SMOKE if args.smoke else bench.SIZES)
  times = op_times(step.step, 1 if args.smoke else 2)
  sources, shapes = op_sources(DUMP)
  by_part: collections.Counter = collections.Counter()
  ops = []
  for op, ns in times.items():
    source = sources.get(op, '')
    part = next((name for name, rx in PARTS if re.search(rx, source)), 'other')
    by_part[(part, kind(op, source))] += ns
    ops.append(dict(op=op, ms=ns / 1e6, part=part, kind=kind(op, source), shape=shapes.get(op, ''),
                    source=source[-120:]))
  total = sum(by_part.values())
  rows = [dict(part=part, kind=k, ms=ns / 1e6, share=ns / total)
          for (part, k), ns in by_part.most_common()]
  print(f'{args.family} step: {total / 1e6:.0f} ms of op time (summed over threads)')
  print(f'{"part":28s} {"kind":20s} {"ms":>8s} {"share":>6s}')
  for row in rows:
    print(f'{row["part"]:28s} {row["kind"]:20s} {row["ms"]:8.1f} {row["share"]:6.1%}')
  print('\ntop ops:')
  for op in sorted(ops, key=lambda o: -o['ms'])[:args.top]:
    print(f'{op["ms"]:7.2f} ms  {op["op"]:28s} {op["shape"][:34]:34s} {op["source"][-60:]}')
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, f'profile_{args.family}.json')
  with open(path, 'w') as f:
    json.dump(dict(family=args.family, machine=harness.machine(), smoke=args.smoke,
                   total_ms=total / 1e6, parts=rows,
                   top_ops=sorted(ops, key=lambda o: -o['ms'])[:50]), f, indent=2)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
