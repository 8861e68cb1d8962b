"""vidlang_jax: video-language pretraining in JAX/Flax, from a laptop CPU to a TPU pod."""

from vidlang_jax import xla_cpu

__version__ = '0.1.0'

xla_cpu.apply_defaults()  # before jax creates a backend


def load_pretrained(path, mesh=None):
  """(model, params, config) of a release (`vidlang export`) or a training run's workdir; see
  vidlang_jax/release.py. Imported on first use, so that `import vidlang_jax` stays light."""
  from vidlang_jax import release

  return release.load_pretrained(path, mesh)
