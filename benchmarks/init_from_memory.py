"""Per-device memory of `init_from` (checkpoint.load_params) on 8 devices with fsdp=8: a
checkpoint many times larger than one device's share is loaded without any device holding more
than about its share, against the replicated read the loader used to do, side by side.

A widened `two_tower:tiny` train state (params + AdamW moments) is saved with the run's
Checkpointer; everything is dropped; then, as the trainer does, a fresh sharded state is
initialised and `load_params(workdir, state['params'])` reads the params onto its shardings.
Memory is the bytes of live jax arrays on each device (unique buffers of their addressable
shards), sampled before the load, after it, and at its peak: the max over a background thread
that polls `jax.live_arrays()` during the load (as often as the GIL lets it; tens of samples),
and a deterministic sample taken the moment `read_params_subset` returns (every restored param
and its target alive: the loader's high point). The 8 fake CPU devices share one host memory,
so the per-device measure is live-array bytes, not RSS (the RSS rise, all devices together, is
recorded too). The contrast is the old path: `read_params` (every param replicated on every
device) then a `device_put` onto the target shardings.

  .venv/bin/python benchmarks/init_from_memory.py [--smoke]   # writes benchmarks/results/*.json
"""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8')

import gc
import shutil
import tempfile
import threading
import time

import harness
import jax
import numpy as np

from vidlang_jax import checkpoint as checkpoint_lib
from vidlang_jax import config as config_lib
from vidlang_jax import sharding, train

# two_tower:tiny with towers widened to 384 (11.5M params, 44 MiB in float32; the train state
# with Adam's two moments 132 MiB): clear numbers, saved and read in seconds on 2 CPU cores.
OVERRIDES = {
    'mesh.data': 1, 'mesh.fsdp': 8, 'model.embed_dim': 384,
    'model.video.width': 384, 'model.video.mlp_dim': 1536, 'model.video.num_heads': 6,
    'model.text.width': 384, 'model.text.mlp_dim': 1536, 'model.text.num_heads': 6,
}
POLL_SECONDS = 0.001
MIB = 2**20


def per_device_bytes(arrays=None):
  """Bytes on each device (in jax.devices() order) of the unique buffers of `arrays`' shards
  (default: every live array); a buffer two arrays share is counted once."""
  devices = jax.devices()
  seen, totals = set(), {d.id: 0 for d in devices}
  for array in jax.live_arrays() if arrays is None else arrays:
    try:
      for shard in array.addressable_shards:
        key = (shard.device.id, shard.data.unsafe_buffer_pointer())
        if key not in seen:
          seen.add(key)
          totals[shard.device.id] += shard.data.nbytes
    except Exception:  # deleted (freed) while we looked
      continue
  return np.array([totals[d.id] for d in devices], dtype=np.int64)


def rss_bytes():
  with open('/proc/self/statm', encoding='ascii') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


class PeakSampler:
  """Polls live-array bytes per device (and the process RSS) in a thread; keeps the max."""

  def __init__(self):
    self.peak = per_device_bytes()
    self.peak_rss = rss_bytes()
    self.samples = 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.is_set():
      self.peak = np.maximum(self.peak, per_device_bytes())
      self.peak_rss = max(self.peak_rss, rss_bytes())
      self.samples += 1
      self._stop.wait(POLL_SECONDS)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = np.maximum(self.peak, per_device_bytes())


class AfterRead:
  """Samples live bytes per device the moment `checkpoint.read_params_subset` returns."""

  def __enter__(self):
    self.original, self.bytes = checkpoint_lib.read_params_subset, None

    def spy(*args, **kwargs):
      out = self.original(*args, **kwargs)
      self.bytes = per_device_bytes()
      return out

    checkpoint_lib.read_params_subset = spy
    return self

  def __exit__(self, *exc):
    checkpoint_lib.read_params_subset = self.original


def collect():
  gc.collect()
  return per_device_bytes()


def summary(values):
  return dict(device0=int(values[0]), max=int(values.max()))


def measure_load(name, load, new_state):
  """Fresh sharded train state (the trainer's target), then `load(params) -> params`."""
  state = new_state()
  before = collect()
  rss_before = rss_bytes()
  start = time.perf_counter()
  with PeakSampler() as sampler, AfterRead() as after_read:
    params = load(state['params'])
    jax.block_until_ready(params)
  seconds = time.perf_counter() - start
  after = collect()
  sample = jax.device_get(params['text']['token_embedding'])
  del params, state
  end = collect()
  assert not end.any(), f'{name}: {end} bytes still live'
  row = dict(
      path=name, seconds=seconds, poll_samples=sampler.samples,
      before=summary(before), after=summary(after),
      peak_polled=summary(sampler.peak), peak_at_read=summary(after_read.bytes),
      extra_at_peak=summary(np.maximum(sampler.peak, after_read.bytes) - before),
      extra_after=summary(after - before),
      rss_peak_extra_bytes=int(sampler.peak_rss - rss_before))
  return row, sample


def main():
  args = harness.parser(__doc__.splitlines()[0]).parse_args()
  wall = time.perf_counter()
  config = config_lib.load('configs/two_tower.py:tiny')
  # --smoke: the tiny towers as they are (1.9M params), on the same mesh.
  overrides = {k: v for k, v in OVERRIDES.items() if k.startswith('mesh.')} if args.smoke else (
      OVERRIDES)
  config_lib.apply_overrides(config, overrides)
  mesh = sharding.make_mesh(config.mesh)
  workdir = tempfile.mkdtemp(prefix='init_from_memory_')
  try:
    with sharding.use_mesh(mesh, sharding.logical_rules(config)):
      setup = train.build(config, mesh)
      init = jax.jit(setup.init, out_shardings=setup.shardings)

      # ------------------------------------------------------------ the checkpoint
      state = init(jax.random.key(0))
      saved = jax.device_get(state['params']['text']['token_embedding'])
      params_leaves = jax.tree.leaves(state['params'])
      sizes = dict(
          num_params=sum(x.size for x in params_leaves),
          params_bytes=sum(x.nbytes for x in params_leaves),
          train_state_bytes=sum(x.nbytes for x in jax.tree.leaves(state)),
          target_share=summary(per_device_bytes(params_leaves)),
          train_state_share=summary(per_device_bytes(jax.tree.leaves(state))),
          params_sharded_over_fsdp=sum(x.nbytes for x in params_leaves
                                       if x.addressable_shards[0].data.size * 8 == x.size))
      start = time.perf_counter()
      checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                                 async_save=False)
      checkpointer.save(1, state, None, config.to_dict())
      checkpointer.close()
      save_seconds = time.perf_counter() - start
      del state, params_leaves
      assert not collect().any()

      # ------------------------------------------------------------ the loads
      def new_state():
        return init(jax.random.key(7))

      def init_from(params):  # the trainer's path
        return checkpoint_lib.load_params(workdir, params)

      def replicated_then_put(params):  # the old path: whole params on every device
        flat, _ = checkpoint_lib.read_params(workdir, mesh)
        targets = dict(zip(jax.tree.leaves(sharding.tree_paths(params)),
                           jax.tree.leaves(params)))
        placed = {p: jax.device_put(flat[p], targets[p].sharding) for p in targets}
        jax.block_until_ready(placed)
        del flat
        return jax.tree.map(lambda p, _: placed[p], sharding.tree_paths(params), params)

      rows = []
      for name, load in (('init_from (load_params, sharded)', init_from),
                         ('replicated read_params + device_put', replicated_then_put)):
        row, loaded = measure_load(name, load, new_state)
        np.testing.assert_array_equal(loaded, saved, err_msg=name)
        rows.append(row)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)

  share = sizes['target_share']['max']
  for row in rows:
    extra = row['extra_at_peak']['max']
    row.update(peak_extra_over_target_share=extra / share,
               peak_extra_over_whole_params=extra / sizes['params_bytes'],
               peak_extra_over_whole_train_state=extra / sizes['train_state_bytes'])
  result = dict(
      devices=jax.device_count(), mesh=dict(mesh.shape), overrides=overrides, **sizes,
      checkpoint_over_target_share=sizes['train_state_bytes'] / share,
      save_seconds=save_seconds, rows=rows,
      ratio_replicated_over_sharded_peak_extra=(rows[1]['extra_at_peak']['max']
                                                / rows[0]['extra_at_peak']['max']),
      wall_seconds=time.perf_counter() - wall)

  print(f'{sizes["num_params"] / 1e6:.1f}M params on mesh {dict(mesh.shape)}; checkpoint '
        f'(params + Adam) {sizes["train_state_bytes"] / MIB:.1f} MiB = '
        f'{result["checkpoint_over_target_share"]:.1f}x the target\'s share per device')
  print(f'  (a) target share per device  {share / MIB:8.2f} MiB (device 0 '
        f'{sizes["target_share"]["device0"] / MIB:.2f})')
  print(f'  (b) whole params, replicated {sizes["params_bytes"] / MIB:8.2f} MiB per device')
  print(f'  (c) whole train state        {sizes["train_state_bytes"] / MIB:8.2f} MiB')
  print(f'{"live MiB per device (max over devices)":40s} {"before":>8s} {"peak":>8s} '
        f'{"after":>8s} {"extra@peak":>10s} {"/(a)":>6s} {"/(b)":>6s} {"/(c)":>6s} '
        f'{"RSS+":>7s} {"s":>5s}')
  for row in rows:
    peak = max(row['peak_polled']['max'], row['peak_at_read']['max'])
    print(f'{row["path"]:40s} {row["before"]["max"] / MIB:8.2f} {peak / MIB:8.2f} '
          f'{row["after"]["max"] / MIB:8.2f} {row["extra_at_peak"]["max"] / MIB:10.2f} '
          f'{row["peak_extra_over_target_share"]:6.2f} {row["peak_extra_over_whole_params"]:6.2f} '
          f'{row["peak_extra_over_whole_train_state"]:6.2f} '
          f'{row["rss_peak_extra_bytes"] / MIB:7.1f} {row["seconds"]:5.1f}')
  ratio = result['ratio_replicated_over_sharded_peak_extra']
  print(f'replicated / sharded extra at peak: x{ratio:.1f}; host RSS+ is all 8 CPU devices '
        f'together (one host memory); wall {result["wall_seconds"]:.1f} s')
  sharded, replicated = (row['extra_at_peak']['max'] / MIB for row in rows)
  figures = [
      harness.figure('init_from peak extra memory per device, sharded load / replicated read',
                     sharded, replicated, unit='MiB', goal='<= 0.5'),
      harness.figure("init_from peak extra memory per device / the target's share",
                     rows[0]['peak_extra_over_target_share'], goal='<= 1.25',
                     note=f"checkpoint = {result['checkpoint_over_target_share']:.1f}x the share"),
  ]
  harness.write(args, 'init_from_memory', figures, **result)


if __name__ == '__main__':
  main()
