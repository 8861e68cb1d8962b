"""`vidlang compile`: the train step compiled for a TPU slice on this CPU (libtpu, the [tpu]
extra: `make test-tpu`), and the pieces of its report that need no libtpu."""

import json
import os
import subprocess
import sys

import pytest

from vidlang_jax import aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HLO = '''
ENTRY %main {
  %all-gather-start.1 = (f32[4], f32[16]) all-gather-start(f32[4] %p), dimensions={0}
  %all-gather-done.1 = f32[16] all-gather-done((f32[4], f32[16]) %all-gather-start.1)
  %all-reduce.2 = f32[] all-reduce(f32[] %loss), to_apply=%add
  %fusion.3 = (f32[2], f32[2]) fusion(f32[8] %g), kind=kCustom, calls=%all-reduce-scatter.33
  %add.4 = f32[16] add(f32[16] %all-gather-done.1, f32[16] %x)
}
'''


def test_collective_counts():
  assert aot.collective_counts(HLO) == {'all-gather': 1, 'all-reduce': 1, 'reduce-scatter': 1,
                                        'all-to-all': 0, 'collective-permute': 0}


def test_unknown_generation_is_named():
  with pytest.raises(ValueError, match="--topology 'v9z:4x4' is not GENERATION:SHAPE"):
    aot.topology_devices('v9z:4x4')


@pytest.mark.tpu
def test_tiny_two_tower_compiles_for_a_v5e_2x2(tmp_path):
  out = tmp_path / 'report.json'
  done = subprocess.run(
      [sys.executable, '-m', 'vidlang_jax', 'compile', '--config',
       os.path.join(ROOT, 'configs/two_tower.py:tiny'), '--topology', 'v5e:2x2',
       '--config.mesh.fsdp=4', '--config.mesh.data=1', '--config.batch_size=16',
       '--json', str(out)],
      capture_output=True, text=True, timeout=900, cwd=ROOT,
      env={k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')})
  assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
  assert 'two_tower on v5e:2x2 (4 chips' in done.stdout and 'fits' in done.stdout
  report = json.loads(out.read_text())
  assert report['chips'] == 4 and report['mesh']['fsdp'] == 4 and report['fits']
  assert 0 < report['memory_per_chip_bytes'] < 1e9
  # FSDP: weights gathered for use, gradients reduced and scattered back.
  assert report['collectives']['all-gather'] > 0 and report['collectives']['reduce-scatter'] > 0
  # The step's FLOPs per chip: the model's forward and backward over a quarter of the batch.
  assert 1e8 < report['flops_per_chip'] < 1e11
  assert 0 < report['roofline_step_s'] < 1
