"""The one training loop for every model family: read it top to bottom.

logging -> mesh -> input -> model & shapes -> sharded init -> update step -> restore ->
evaluators -> loop. A family plugs in with `model.<name>` + `objective.<name>` (models/) and
evaluators by name; nothing here is family-specific.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
import tqdm

from vidlang_jax import checkpoint as checkpoint_lib
from vidlang_jax import distributed, guards, inputs, paths, registry, sharding
from vidlang_jax.data import builders, pipeline
from vidlang_jax.evaluators import common as evaluators_common
from vidlang_jax.metrics import MetricWriter, to_python
from vidlang_jax.optimizer import make_optimizer

log = logging.getLogger(__name__)


def model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config.model` without its name; a `num_classes` {label: count} entry of 0 takes the
  class count of the dataset's `<label>_label` feature."""
  kwargs = {k: v for k, v in config.model.to_dict().items() if k != 'name'}
  if any(count == 0 for count in (kwargs.get('num_classes') or {}).values()):
    data = config.data
    builder = builders.prepare(data.name, data.get('data_dir'), **data.get('builder_kwargs', {}))
    kwargs['num_classes'] = builders.num_classes(builder, kwargs['num_classes'])
  return kwargs


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
  """`model.<config.model.name>(**model_kwargs(config))`."""
  return registry.lookup(config.model.name, kind='model')(**model_kwargs(config))


def measure_peak_flops(size: int = 2048, repeats: int = 5) -> float:
  """Achievable matmul FLOP/s of one local device, measured (for MFU on CPU)."""
  device = jax.local_devices()[0]
  a = jax.device_put(jnp.ones((size, size), jnp.float32), device)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    out = matmul(a)
  out.block_until_ready()
  return 2 * size**3 * repeats / (time.perf_counter() - start)


def _unscanned(model_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
  """A copy with every `scan=True` turned off, or None if nothing scans."""
  copy = ml_collections.ConfigDict(model_config.to_dict())
  found = False
  for node in [copy] + [v for v in copy.values() if isinstance(v, ml_collections.ConfigDict)]:
    if node.get('scan'):
      node.scan, found = False, True
  return copy if found else None


def step_flops_per_device(config, compiled_step, mesh, batch_spec) -> float:
  """FLOPs of one train step per device, from XLA's cost analysis.

  XLA counts a loop body once, so for models that scan over layers the count comes from the
  same step lowered (not compiled) with the layers unrolled, divided over the devices.
  """
  unscanned = _unscanned(config.model)
  if unscanned is None:
    cost = compiled_step.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get('flops', 0.0))
  twin = ml_collections.ConfigDict(config.to_dict())
  twin.model = unscanned

  def lowered_cost(mesh, batch_spec):
    setup = build(twin, mesh)
    return make_train_step(setup.objective, setup.tx, setup.schedule, setup.shardings).lower(
        setup.abstract_state, batch_spec, abstract_key()).cost_analysis()

  cost = lowered_cost(mesh, batch_spec)
  if cost is None:
    # A compile-only backend (a TPU slice described from a CPU) does not analyse lowered HLO:
    # count the same global step on one CPU device instead.
    cpu_mesh = sharding.make_mesh({}, jax.devices('cpu')[:1])
    with sharding.use_mesh(cpu_mesh, sharding.logical_rules(config)):
      cpu_batch = inputs.lookup(config.data).batch_spec(config.data, config.batch_size, cpu_mesh)
      cost = lowered_cost(cpu_mesh, cpu_batch)
  return float(cost.get('flops', 0.0)) / mesh.size


def abstract_key() -> jax.ShapeDtypeStruct:
  """A PRNG key's shape and dtype, not an array: tracing with it needs no device, so layouts
  can be computed for a mesh of devices that are not attached (a TPU slice, from a CPU)."""
  return jax.eval_shape(jax.random.key, 0)


def train_state_layout(config, objective, tx, mesh, batch_spec):
  """(init_fn, shardings, abstract state with shardings), without allocating anything."""

  def init(rng):
    params = objective.init(rng, batch_spec)
    return {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params)}

  boxed = jax.eval_shape(init, abstract_key())
  shardings = sharding.infer_shardings(boxed, mesh, sharding.logical_rules(config),
                                       [tuple(r) for r in config.sharding.rules])
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          sharding.strip_boxes(boxed), shardings)
  return (lambda rng: nn.meta.unbox(init(rng))), shardings, abstract


class Setup(NamedTuple):
  """Everything derived from a config and a mesh before any array is allocated."""

  model: nn.Module
  objective: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  batch_spec: dict[str, jax.ShapeDtypeStruct]
  init: Any  # rng -> unboxed train state, to be jitted with out_shardings=shardings
  shardings: Any
  abstract_state: Any


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Setup:
  """Model, objective, optimizer and the sharded layout of the train state (call inside
  `jax.set_mesh(mesh)`)."""
  model = build_model(config)
  objective = registry.lookup(config.objective, kind='objective')(model, config)
  tx, schedule = make_optimizer(config.optimizer, config.total_steps)
  batch_spec = inputs.lookup(config.data).batch_spec(config.data, config.batch_size, mesh)
  init, shardings, abstract = train_state_layout(config, objective, tx, mesh, batch_spec)
  return Setup(model, objective, tx, schedule, batch_spec, init, shardings, abstract)


def make_train_step(objective, tx, schedule, state_shardings):
  """jit-ed `(state, batch, rng) -> (state, metrics)`; the old state is donated.

  When the loss or the update is NaN / inf the update is skipped: params and optimizer state
  stay as they were, the step still advances (its batch is consumed) and `update_skipped` is 1.
  """

  @functools.partial(jax.jit, donate_argnums=(0,), out_shardings=(state_shardings, None))
  def train_step(state, batch, rng):
    rng = jax.random.fold_in(rng, state['step'])
    grad_fn = jax.value_and_grad(objective.loss, has_aux=True)
    (loss, metrics), grads = grad_fn(state['params'], batch, rng, True)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    grad_norm = optax.global_norm(grads)
    # NaN / inf gradients make the update non-finite; so can finite ones (an overflowing
    # learning rate), which checking the update catches too.
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(updates))
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                     (params, opt_state), (state['params'], state['opt_state']))
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, update_skipped=~finite,
                   learning_rate=schedule(state['step']))
    return {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}, metrics

  return train_step


def train_input(config: ml_collections.ConfigDict, start_step: int = 0):
  """This process's share of each global batch, from global batch `start_step` on."""
  return inputs.lookup(config.data).train_iterator(
      config.data, global_batch_size=config.batch_size, seed=config.seed, start_step=start_step)


def close_input(iterator) -> None:
  if hasattr(iterator, 'close'):  # grain's multiprocessing iterators own worker processes
    iterator.close()


def write_eval(workdir: paths.PathLike, step: int, results: dict[str, Any]) -> None:
  if jax.process_index() == 0:
    folder = paths.path(workdir) / 'eval'
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f'{step}.json').write_text(json.dumps(
        {'step': step, **{k: to_python(v) for k, v in results.items()}}, indent=2),
                                         encoding='utf-8')


def build_evaluators(config, model, mesh) -> dict[str, Any]:
  """The config's evaluators by name; one that the dataset cannot feed is left out with a
  notice (the others still run)."""
  evaluators = {}
  for name, eval_config in config.get('evals', {}).items():
    cls = registry.lookup(eval_config.type, kind='evaluator')
    try:
      evaluators[name] = cls(model=model, config=config, eval_config=eval_config, mesh=mesh,
                             name=name)
    except evaluators_common.Unavailable as e:
      log.warning('Evaluator %r (%s) left out: %s.', name, eval_config.type, e)
  return evaluators


def run_evals(evaluators, params, step: int, workdir: str) -> dict[str, Any]:
  results = {}
  for evaluator in evaluators.values():
    results.update(evaluator.run(params, step=step, workdir=workdir))
  if results:
    write_eval(workdir, step, results)
  return results


class InputWait:
  """Seconds the loop waits for a batch while the device has nothing to do (`idle`).

  The step is dispatched asynchronously, so `next()` mostly runs while the device still computes
  the previous step: that is not starvation. A thread blocks on each dispatched step and notes
  when it finished (the loop never waits for it); only the part of a wait after that counts,
  to within the thread's wake-up.
  """

  def __init__(self):
    self._dispatched = 0
    self._finished = (0, 0.0)  # steps finished, perf_counter() when the last one did
    self._queue: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=self._watch, name='input_wait', daemon=True).start()

  def _watch(self) -> None:
    while (output := self._queue.get()) is not None:
      try:
        jax.block_until_ready(output)
      except Exception:  # a failed step: the loop raises it itself
        return
      self._finished = (self._finished[0] + 1, time.perf_counter())

  def dispatched(self, output: jax.Array) -> None:
    self._dispatched += 1
    self._queue.put(output)

  def idle(self, start: float, end: float) -> float:
    """The part of a wait from `start` to `end` (just now) that the device spent idle."""
    finished, at = self._finished
    if finished < self._dispatched:  # the last step was still running at `end`
      return 0.0
    return max(0.0, end - max(start, at))

  def close(self) -> None:
    self._queue.put(None)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains to `config.total_steps` (resuming from `workdir`) and returns the last metrics.

  On SIGTERM it finishes the step, saves a checkpoint and returns (see docs/reliability.md).
  """
  # ---------------------------------------------------------------- logging
  workdir = paths.path(workdir)  # a local folder or gs://bucket/...
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'config.json').write_text(config.to_json(indent=2), encoding='utf-8')
  writer = MetricWriter(workdir)

  # ---------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.mesh)
  # Measured before the input workers start, so that they do not skew it.
  peak_flops = float(config.get('peak_flops_per_device') or measure_peak_flops())
  log.info('Mesh %s over %d devices (%d processes).', dict(mesh.shape), mesh.size,
           jax.process_count())

  with sharding.use_mesh(mesh, sharding.logical_rules(config)):
    # -------------------------------------------------------------- model & shapes
    # Every config error the layout can reveal is raised here, before data or compilation.
    setup = build(config, mesh)
    init_rng, train_rng = jax.random.split(jax.random.key(config.seed))

    # -------------------------------------------------------------- input
    train_iter = train_input(config)

    # -------------------------------------------------------------- restore or sharded init
    checkpointer = checkpoint_lib.Checkpointer(workdir / 'checkpoints',
                                               max_to_keep=config.get('keep_checkpoints', 3))
    restored = checkpointer.restore_latest(setup.abstract_state, train_iter)
    counters = {}
    if restored is not None:
      start_step, state, counters = restored.step, restored.state, restored.counters
      log.info('Resumed from %s at step %d.', checkpointer.directory, start_step)
      writer.drop_after(start_step)  # steps logged after that checkpoint are redone
      if not restored.data_restored:
        log.warning('The data iterator of step %d was saved by %s processes and this run has '
                    '%d: the input restarts at global batch %d (the same batches, unless clips '
                    'were skipped as corrupt).', start_step,
                    checkpointer.saved_process_count(start_step), jax.process_count(),
                    start_step)
        close_input(train_iter)
        train_iter = train_input(config, start_step)
    else:
      start_step = 0
      state = jax.jit(setup.init, out_shardings=setup.shardings)(init_rng)
      if config.init_from.path:
        params = checkpoint_lib.load_params(
            config.init_from.path, state['params'],
            load=[tuple(r) for r in config.init_from.load],
            dont_load=list(config.init_from.dont_load),
            resample=[tuple(r) for r in config.init_from.get(
                'resample', checkpoint_lib.DEFAULT_RESAMPLE)])
        state = dict(state, params=params)
    num_params = sum(x.size for x in jax.tree.leaves(state['params']))
    log.info('Model %s: %.2fM params.', config.model.name, num_params / 1e6)

    # -------------------------------------------------------------- update step
    train_step = make_train_step(setup.objective, setup.tx, setup.schedule, setup.shardings)
    compiled_step = train_step.lower(setup.abstract_state, setup.batch_spec, train_rng).compile()
    step_flops = step_flops_per_device(config, compiled_step, mesh, setup.batch_spec)
    log.info('Train step: %.3g FLOPs per device; peak %.3g FLOP/s per device.', step_flops,
             peak_flops)

    # -------------------------------------------------------------- evaluators
    evaluators = build_evaluators(config, setup.model, mesh)

    # -------------------------------------------------------------- guards
    tally = guards.FaultTally(config.data.get('max_bad_fraction', 1.0), config.batch_size,
                              start_step, counters)
    nonfinite = guards.NonFiniteGuard(
        config.get('max_nonfinite_in_a_row', 1 << 30),
        counters.get('updates_skipped_nonfinite', 0),
        newest_checkpoint=lambda: checkpointer.steps() and
        f'{checkpointer.directory}/{checkpointer.steps()[-1]}')
    clock = guards.SaveClock(config.get('checkpoint_every_minutes', 0))


    # -------------------------------------------------------------- loop
    metrics: dict[str, Any] = {}
    progress = tqdm.tqdm(total=config.total_steps, initial=start_step, desc='train',
                         disable=jax.process_index() != 0, dynamic_ncols=True)
    window_start, data_wait, window_steps = time.perf_counter(), 0.0, 0
    input_wait = InputWait()  # data_wait: only while the device has nothing to do
    preempted = False
    preemption = distributed.PreemptionWatch()  # from here on SIGTERM saves and stops
    try:
      for step in range(start_step + 1, config.total_steps + 1):
        wait_start = time.perf_counter()
        local_batch = next(train_iter)
        if step == start_step + 1:
          # The first batch waits for the input's workers to start: a one-off, not its rate.
          log.info('First batch after %.1f s (the input starting).',
                   time.perf_counter() - wait_start)
          window_start = time.perf_counter()
        else:
          data_wait += input_wait.idle(wait_start, time.perf_counter())
        tally.add(local_batch.pop(pipeline.FAULTS_KEY))
        state, step_metrics = compiled_step(state, sharding.shard_batch(local_batch, mesh),
                                            train_rng)
        input_wait.dispatched(step_metrics['loss'])
        nonfinite.push(step, step_metrics['update_skipped'])
        window_steps += 1
        progress.update(1)

        if step % config.log_every == 0 or step == config.total_steps:
          metrics = jax.device_get(step_metrics)
          metrics.pop('update_skipped')  # counted in updates_skipped_nonfinite
          nonfinite.resolve()
          tally.flush(step)
          tally.check(step)
          elapsed = time.perf_counter() - window_start
          metrics.update(
              examples_per_sec=config.batch_size * window_steps / elapsed,
              data_wait_fraction=data_wait / elapsed,
              mfu=step_flops * window_steps / elapsed / peak_flops,
              updates_skipped_nonfinite=nonfinite.total, **tally.metrics())
          writer.write(step, metrics)
          progress.set_postfix(loss=f'{metrics["loss"]:.3f}')
          window_start, data_wait, window_steps = time.perf_counter(), 0.0, 0

        preempted = preemption.reached(step)
        if (step % config.checkpoint_every == 0 or step == config.total_steps or preempted
            or clock.due()):
          nonfinite.resolve()  # the counters saved include this step
          tally.flush(step)
          checkpointer.save(step, state, train_iter, config.to_dict(),
                            guards.counters(tally, nonfinite))
          clock.saved()

        if preempted:
          checkpointer.wait()
          log.warning('Stopped by SIGTERM after step %d; checkpoint %s/%d saved. Rerun the '
                      'same command to resume.', step, checkpointer.directory, step)
          break

        if evaluators and (step % config.eval_every == 0 or step == config.total_steps):
          results = run_evals(evaluators, state['params'], step, workdir)
          writer.write(step, {f'eval/{k}': v for k, v in results.items()})
          # Eval time is not training throughput: start a new measurement window.
          window_start, data_wait, window_steps = time.perf_counter(), 0.0, 0
      nonfinite.resolve()

      final_eval = workdir / 'eval' / f'{config.total_steps}.json'
      if (evaluators and start_step == config.total_steps and not final_eval.exists()
          and not preempted):
        run_evals(evaluators, state['params'], start_step, workdir)  # finished, never evaluated
    finally:
      # Also on an error: a save in flight is committed (or fails loudly) before the run ends.
      progress.close()
      preemption.close()
      input_wait.close()
      checkpointer.close()
      writer.close()
      close_input(train_iter)
  return metrics


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates the latest checkpoint in `workdir`; writes and returns `eval/<step>.json`."""
  mesh = sharding.make_mesh(config.mesh)
  with sharding.use_mesh(mesh, sharding.logical_rules(config)):
    setup = build(config, mesh)
    directory = paths.path(workdir) / 'checkpoints'
    if not directory.is_dir():  # before Orbax would create it
      raise FileNotFoundError(f'No checkpoint to evaluate in {directory}: is --workdir the '
                              "training run's?")
    checkpointer = checkpoint_lib.Checkpointer(directory)
    restored = checkpointer.restore_latest(setup.abstract_state, None)
    if restored is None:
      raise FileNotFoundError(f'No checkpoint to evaluate in {directory}.')
    step, state = restored.step, restored.state
    results = run_evals(build_evaluators(config, setup.model, mesh), state['params'], step,
                        workdir)
    checkpointer.close()
  return {'step': step, **results}
