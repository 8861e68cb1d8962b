"""Every benchmark's `--smoke` mode runs and writes a result that benchmarks/report.py
renders, so that none of them rots (`make test-bench`; .ci/run runs it). The numbers of a smoke
run mean nothing; `make bench` measures."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.bench

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / 'benchmarks'
NOT_BENCHMARKS = {'harness', 'steps', 'report', 'profile_step'}  # shared, or a tool
# Need the [hf] extra (torch).
TORCH_PEERS = {'lm_vs_llama', 'masked_video_vs_videomae', 'attention_one_device'}
FIELDS = {'figure', 'goal', 'ours', 'peer', 'ratio', 'unit', 'met', 'note'}


def benchmark_names() -> list[str]:
  return sorted(p.stem for p in BENCHMARKS.glob('*.py') if p.stem not in NOT_BENCHMARKS)


def test_make_bench_runs_every_benchmark():
  makefile = (ROOT / 'Makefile').read_text().replace('\\\n', ' ')
  line = next(line for line in makefile.splitlines() if line.startswith('BENCHMARKS :='))
  assert sorted(line.split(':=')[1].split()) == benchmark_names()


@pytest.mark.parametrize('name', benchmark_names())
def test_smoke(name, tmp_path):
  if name in TORCH_PEERS and os.environ.get('CI') != 'true':
    pytest.importorskip('torch')
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  env.pop('XLA_FLAGS', None)  # each benchmark sets the devices it needs
  done = subprocess.run([sys.executable, str(BENCHMARKS / f'{name}.py'), '--smoke', '--out',
                         str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  result = json.loads((tmp_path / f'{name}.json').read_text())
  assert result['smoke'] is True and result['figures'], result
  for row in result['figures']:
    assert FIELDS <= set(row), row
    assert isinstance(row['ours'], (int, float)) and row['ours'] == row['ours'], row  # not NaN
    if row['peer'] is not None:
      assert row['ratio'] == pytest.approx(row['ours'] / row['peer']), row
  out = tmp_path / 'RESULTS.md'
  subprocess.run([sys.executable, str(BENCHMARKS / 'report.py'), '--results', str(tmp_path),
                  '--out', str(out), '--allow-smoke'], cwd=ROOT, check=True, timeout=60)
  assert all(row['figure'] in out.read_text() for row in result['figures'])
  refused = subprocess.run([sys.executable, str(BENCHMARKS / 'report.py'), '--results',
                            str(tmp_path), '--out', str(out)], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
  assert refused.returncode != 0 and '--smoke' in refused.stderr


def test_profile_step_attributes_the_ops(tmp_path):
  """The profiling tool of docs/performance.md: every op of the LM step gets a part."""
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  subprocess.run([sys.executable, str(BENCHMARKS / 'profile_step.py'), '--family', 'lm',
                  '--smoke', '--out', str(tmp_path)], cwd=ROOT, env=env, check=True,
                 capture_output=True, timeout=600)
  profile = json.loads((tmp_path / 'profile_lm.json').read_text())
  parts = {row['part'] for row in profile['parts']}
  assert {'attention kernel', 'MLP', 'LM head'} <= parts, parts
  assert sum(row['share'] for row in profile['parts']) == pytest.approx(1.0)
