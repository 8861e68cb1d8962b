"""Video-text contrastive losses (CLIP softmax, SigLIP sigmoid) for a batch sharded over devices.

Both take global `[batch, dim]` L2-normalised embeddings and the *log* scale parameter, and
return `(loss, metrics)`. The sharded versions run under `jax.shard_map` over the batch axes:
the sigmoid loss passes text chunks around a ring (SigLIP paper, "chunked" implementation) so
no device ever holds more than a `[B/N, B/N]` block of logits, and its custom VJP runs the ring
again rather than storing N blocks for the backward pass; the softmax loss needs whole
rows, so each device all-gathers the other tower and computes its `[B/N, B]` rows.
Results equal the dense `*_dense` references up to float rounding, values and gradients.

Accuracy metrics count a tie against the model: a row is right only when its positive scores
strictly above every negative (as `evaluators.retrieval_metrics` does).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from vidlang_jax import registry

Metrics = dict[str, jax.Array]


def _prep(video_emb, text_emb, logit_scale, logit_bias):
  """float32 embeddings and scalar parameters (a `[1]` parameter is fine too)."""
  if video_emb.shape != text_emb.shape or video_emb.ndim != 2:
    raise ValueError(f'Expected two [batch, dim] arrays: {video_emb.shape}, {text_emb.shape}.')
  scale = jnp.exp(jnp.reshape(jnp.asarray(logit_scale, jnp.float32), ()))
  bias = None if logit_bias is None else jnp.reshape(jnp.asarray(logit_bias, jnp.float32), ())
  return video_emb.astype(jnp.float32), text_emb.astype(jnp.float32), scale, bias


def _scalar_metrics(scale, bias) -> Metrics:
  metrics = {'temperature': scale}  # exp(logit_scale): SigLIP's t, the multiplier on cosines.
  if bias is not None:
    metrics['bias'] = bias
  return metrics


def _masked_max(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
  return jnp.max(jnp.where(mask, -jnp.inf, x), axis=axis)


def _batch_mesh(mesh, batch_axes: Sequence[str]):
  """(mesh, number of batch shards); (None, 1) means: compute densely."""
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()  # The one set with `jax.set_mesh`, if any.
  if mesh is None or mesh.empty:
    return None, 1
  unknown = [a for a in batch_axes if a not in mesh.shape]
  if unknown:
    raise ValueError(f'batch_axes {unknown} are not in the mesh axes {tuple(mesh.shape)}.')
  return mesh, math.prod(mesh.shape[a] for a in batch_axes)


def _check_divisible(batch: int, n: int, batch_axes) -> None:
  if batch % n:
    raise ValueError(f'Batch {batch} is not divisible by the {n} shards of {tuple(batch_axes)}.')


# ---------------------------------------------------------------------------------------------
# Sigmoid (SigLIP).


def sigmoid_loss_dense(
    video_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array
) -> tuple[jax.Array, Metrics]:
  """Reference: -sum_ij log_sigmoid(z_ij (t <v_i, u_j> + b)) / B, z = +1 on the diagonal."""
  v, t, scale, bias = _prep(video_emb, text_emb, logit_scale, logit_bias)
  batch = v.shape[0]
  logits = scale * v @ t.T + bias  # [B, B]
  eye = jnp.eye(batch, dtype=bool)
  loss = -jnp.sum(jax.nn.log_sigmoid(jnp.where(eye, logits, -logits))) / batch
  diag = jnp.diagonal(logits)
  metrics = _scalar_metrics(scale, bias) | {
      'v2t_acc': jnp.mean(diag > _masked_max(logits, eye, 1)),
      't2v_acc': jnp.mean(diag > _masked_max(logits, eye, 0)),
  }
  return loss, metrics


def _sigmoid_block(v, t_blk, scale, bias, positive: bool):
  """One [b, b] block: (summed loss, logits, labels z, similarities); positives on the diagonal."""
  sims = v @ t_blk.T  # [b, b]
  logits = scale * sims + bias
  z = 2.0 * jnp.eye(v.shape[0]) - 1.0 if positive else -1.0
  return -jnp.sum(jax.nn.log_sigmoid(z * logits)), logits, z, sims


def _ring_fwd(v, t, scale, bias, axes):
  """Forward ring. v, t: local chunks [b, dim]. Step k holds the texts of device (i - k) % N.

  Per-text metric statistics (positive logit, best negative so far) travel with their texts.
  """
  n = jax.lax.axis_size(axes)
  ring = [(j, (j + 1) % n) for j in range(n)]
  loss, logits, *_ = _sigmoid_block(v, t, scale, bias, positive=True)
  eye = jnp.eye(v.shape[0], dtype=bool)
  pos = jnp.diagonal(logits)  # [b] positive logit of each local video (= of each local text).
  v_neg = _masked_max(logits, eye, 1)  # [b] best negative text per video so far.
  t_neg = _masked_max(logits, eye, 0)  # [b] best negative video per text so far; travels.

  def step(carry, _):
    loss, t, t_pos, t_neg, v_neg = carry
    t, t_pos, t_neg = jax.lax.ppermute((t, t_pos, t_neg), axes, perm=ring)
    block_loss, logits, *_ = _sigmoid_block(v, t, scale, bias, positive=False)
    v_neg = jnp.maximum(v_neg, logits.max(1))
    t_neg = jnp.maximum(t_neg, logits.max(0))
    return (loss + block_loss, t, t_pos, t_neg, v_neg), None

  carry, _ = jax.lax.scan(step, (loss, t, pos, t_neg, v_neg), length=n - 1)
  loss, _, t_pos, t_neg, v_neg = carry
  # Wherever the texts are now, their statistics are complete: count them where they lie.
  out = loss, jnp.sum(pos > v_neg).astype(jnp.float32), jnp.sum(t_pos > t_neg).astype(jnp.float32)
  return out, (v, t, scale, bias)


def _ring_bwd(axes, residuals, cotangents):
  """Backward ring: recomputes each block instead of storing N of them (the point of the ring).

  Text gradients travel with their texts and take one last hop home.
  """
  v, t, scale, bias = residuals
  g = cotangents[0]  # Cotangent of this device's summed loss; the metrics have none.
  n = jax.lax.axis_size(axes)
  ring = [(j, (j + 1) % n) for j in range(n)]

  def block_grads(t_blk, positive):
    _, logits, z, sims = _sigmoid_block(v, t_blk, scale, bias, positive)
    dlogits = -g * z * jax.nn.sigmoid(-z * logits)  # d/dx -log_sigmoid(z x) = -z sigmoid(-z x).
    return scale * dlogits @ t_blk, scale * dlogits.T @ v, jnp.sum(dlogits * sims), jnp.sum(dlogits)

  dv, dt, dscale, dbias = block_grads(t, positive=True)

  def step(carry, _):
    t, dt, dv, dscale, dbias = carry
    t, dt = jax.lax.ppermute((t, dt), axes, perm=ring)
    dv_k, dt_k, dscale_k, dbias_k = block_grads(t, positive=False)
    return (t, dt + dt_k, dv + dv_k, dscale + dscale_k, dbias + dbias_k), None

  carry, _ = jax.lax.scan(step, (t, dt, dv, dscale, dbias), length=n - 1)
  _, dt, dv, dscale, dbias = carry
  dt = jax.lax.ppermute(dt, axes, perm=ring)  # After N-1 hops the chunk is one hop from home.
  return dv, dt, dscale, dbias


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _sigmoid_ring(v, t, scale, bias, axes):
  """(summed local loss, local v2t hits, local t2v hits); all arguments device-varying."""
  return _ring_fwd(v, t, scale, bias, axes)[0]


_sigmoid_ring.defvjp(_ring_fwd, _ring_bwd)


def sigmoid_loss(
    video_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array,
    logit_bias: jax.Array,
    *,
    mesh: jax.sharding.Mesh | None = None,
    batch_axes: tuple[str, ...] = ('data', 'fsdp'),
) -> tuple[jax.Array, Metrics]:
  """SigLIP loss with a ring over the batch shards; never builds the global [B, B] logits.

  `mesh` defaults to the ambient one (`jax.set_mesh`); without a mesh, or with one batch
  shard, this is `sigmoid_loss_dense`.
  """
  mesh, n = _batch_mesh(mesh, batch_axes)
  if n == 1:
    return sigmoid_loss_dense(video_emb, text_emb, logit_scale, logit_bias)
  v, t, scale, bias = _prep(video_emb, text_emb, logit_scale, logit_bias)
  batch = v.shape[0]
  _check_divisible(batch, n, batch_axes)
  axes = tuple(batch_axes)

  def body(v, t, scale, bias):
    # Scalars made device-varying so the custom VJP's cotangents match; JAX psums them back.
    scale, bias = jax.lax.pcast((scale, bias), axes, to='varying')
    return tuple(x / batch for x in jax.lax.psum(_sigmoid_ring(v, t, scale, bias, axes), axes))

  loss, v2t, t2v = jax.shard_map(
      body, mesh=mesh, in_specs=(P(axes), P(axes), P(), P()), out_specs=(P(), P(), P())
  )(v, t, scale, bias)
  return loss, _scalar_metrics(scale, bias) | {'v2t_acc': v2t, 't2v_acc': t2v}


# ---------------------------------------------------------------------------------------------
# Softmax (CLIP).


def softmax_loss_dense(
    video_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array,
    logit_bias: jax.Array | None = None,
) -> tuple[jax.Array, Metrics]:
  """Reference: mean of the video->text and text->video cross-entropies over the batch."""
  v, t, scale, bias = _prep(video_emb, text_emb, logit_scale, logit_bias)
  logits = scale * v @ t.T  # [B, B]; a bias would cancel in the softmax, so it is not added.
  eye = jnp.eye(v.shape[0], dtype=bool)
  v2t = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=1)))
  t2v = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=0)))
  diag = jnp.diagonal(logits)
  metrics = _scalar_metrics(scale, bias) | {
      'v2t_acc': jnp.mean(diag > _masked_max(logits, eye, 1)),
      't2v_acc': jnp.mean(diag > _masked_max(logits, eye, 0)),
  }
  return (v2t + t2v) / 2, metrics


def _softmax_rows(v, t, scale, *, axes: tuple[str, ...], batch: int):
  """shard_map body: local rows [b, B] of both directions against the gathered other tower."""
  b = v.shape[0]
  labels = jax.lax.axis_index(axes) * b + jnp.arange(b)  # Global column of each local positive.
  own = jnp.arange(batch)[None, :] == labels[:, None]  # [b, B]

  def direction(q, keys_local):
    keys = jax.lax.all_gather(keys_local, axes, tiled=True)  # [B, dim]
    logits = scale * q @ keys.T  # [b, B]
    logp = jax.nn.log_softmax(logits, axis=1)
    nll = -jnp.sum(jnp.where(own, logp, 0.0))
    sg = jax.lax.stop_gradient(logits)
    hits = jnp.sum(jnp.sum(jnp.where(own, sg, 0.0), 1) > _masked_max(sg, own, 1))
    return nll, hits

  v_nll, v_hits = direction(v, t)
  t_nll, t_hits = direction(t, v)
  out = jax.lax.psum((v_nll + t_nll, v_hits, t_hits), axes)
  return out[0] / (2 * batch), out[1] / batch, out[2] / batch


def softmax_loss(
    video_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array,
    logit_bias: jax.Array | None = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
    batch_axes: tuple[str, ...] = ('data', 'fsdp'),
) -> tuple[jax.Array, Metrics]:
  """CLIP loss; each shard computes its [B/N, B] rows (per direction) with global labels.

  `logit_bias` is accepted for a uniform signature and only reported: softmax ignores it.
  """
  mesh, n = _batch_mesh(mesh, batch_axes)
  if n == 1:
    return softmax_loss_dense(video_emb, text_emb, logit_scale, logit_bias)
  v, t, scale, bias = _prep(video_emb, text_emb, logit_scale, logit_bias)
  batch = v.shape[0]
  _check_divisible(batch, n, batch_axes)
  axes = tuple(batch_axes)
  body = lambda *a: _softmax_rows(*a, axes=axes, batch=batch)
  loss, v2t, t2v = jax.shard_map(
      body, mesh=mesh, in_specs=(P(axes), P(axes), P()), out_specs=(P(), P(), P())
  )(v, t, scale)
  return loss, _scalar_metrics(scale, bias) | {'v2t_acc': v2t, 't2v_acc': t2v}


registry.register('loss.softmax')(softmax_loss)
registry.register('loss.sigmoid')(sigmoid_loss)
