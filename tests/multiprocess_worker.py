"""One of several local processes of a multi-host run (started by test_multiprocess.py)."""

import os
import sys

process_id, num_processes, port, data_dir, workdir, total_steps = sys.argv[1:7]
os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
os.environ['JAX_PLATFORMS'] = 'cpu'

import jax  # noqa: E402

jax.distributed.initialize(f'localhost:{port}', num_processes=int(num_processes),
                           process_id=int(process_id))
sys.path.insert(0, os.path.dirname(__file__))

from vidlang_jax import train  # noqa: E402

from helpers import tiny_config  # noqa: E402

config = tiny_config(total_steps=int(total_steps), log_every=1, checkpoint_every=2,
                     eval_every=100)
config.model.video.depth = config.model.text.depth = 1
config.mesh.update(data=2, fsdp=4)
config.data.update(name='moving_shapes/tiny', data_dir=data_dir, num_workers=0)
config.evals.retrieval.batch_size = 32
config.peak_flops_per_device = 1e11
metrics = train.train_and_evaluate(config, workdir)
print(f'process {process_id}: devices={jax.device_count()} loss={float(metrics["loss"]):.6f}')
