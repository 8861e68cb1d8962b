from vidlang_jax.main import run

run()
