"""vidlang_jax: video-language pretraining in JAX/Flax, from a laptop CPU to a TPU pod."""

__version__ = '0.1.0'


def load_pretrained(path, mesh=None):
  """(model, params, config) of a release (`vidlang export`) or a training run's workdir; see
  vidlang_jax/release.py. Imported on first use, so that `import vidlang_jax` stays light."""
  from vidlang_jax import release

  return release.load_pretrained(path, mesh)
