"""The reference attention op against a naive numpy loop: masks, segments, grouped-query heads,
values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidlang_jax.ops.attention import dot_product_attention


def naive_attention(q, k, v, causal, segment_ids):
  batch, q_len, heads, dim = q.shape
  kv_heads = k.shape[2]
  out = np.zeros_like(q)
  for b in range(batch):
    for h in range(heads):
      kh = h // (heads // kv_heads)
      for i in range(q_len):
        allowed = [j for j in range(k.shape[1])
                   if (not causal or j <= i) and (segment_ids is None or (
                       segment_ids[b, i] != 0 and segment_ids[b, i] == segment_ids[b, j]))]
        if not allowed:
          continue  # fully masked rows are zero
        logits = np.array([q[b, i, h] @ k[b, j, kh] / np.sqrt(dim) for j in allowed])
        weights = np.exp(logits - logits.max())
        weights /= weights.sum()
        out[b, i, h] = sum(w * v[b, j, kh] for w, j in zip(weights, allowed))
  return out


@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('segments', [False, True])
@pytest.mark.parametrize('kv_heads', [4, 2])
def test_matches_naive(causal, segments, kv_heads):
  rng = np.random.default_rng(0)
  q = rng.normal(size=(2, 7, 4, 8)).astype(np.float32)
  k = rng.normal(size=(2, 7, kv_heads, 8)).astype(np.float32)
  v = rng.normal(size=(2, 7, kv_heads, 8)).astype(np.float32)
  segment_ids = np.array([[1, 1, 1, 2, 2, 0, 0], [1, 2, 2, 2, 3, 3, 3]]) if segments else None
  got = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), causal=causal,
                              segment_ids=None if segment_ids is None else jnp.asarray(segment_ids))
  np.testing.assert_allclose(got, naive_attention(q, k, v, causal, segment_ids), atol=1e-5)


def numeric_gradients(fn, arrays, weights, eps=1e-4):
  """d sum(fn(*arrays) * weights) / d arrays by central differences in float64."""
  arrays = [np.asarray(a, np.float64) for a in arrays]
  loss = lambda *a: float(np.sum(fn(*a) * weights))
  grads = []
  for i, a in enumerate(arrays):
    grad = np.zeros_like(a)
    for index in np.ndindex(a.shape):
      plus, minus = [x.copy() for x in arrays], [x.copy() for x in arrays]
      plus[i][index] += eps
      minus[i][index] -= eps
      grad[index] = (loss(*plus) - loss(*minus)) / (2 * eps)
    grads.append(grad)
  return grads


@pytest.mark.parametrize('causal,segments', [(False, False), (True, True)])
def test_gradients_match_naive_loop(causal, segments):
  """The unmasked path (a plain softmax) and the masked one, differentiated by JAX, against
  central differences of the naive loop, for q, k and v with grouped-query heads."""
  rng = np.random.default_rng(2)
  q = rng.normal(size=(2, 5, 4, 4))
  k, v = rng.normal(size=(2, 2, 5, 2, 4))
  weights = rng.normal(size=q.shape)
  segment_ids = np.array([[1, 1, 2, 2, 0], [1, 1, 1, 2, 2]]) if segments else None
  naive = lambda q, k, v: naive_attention(q, k, v, causal, segment_ids)
  want = numeric_gradients(naive, (q, k, v), weights)

  def loss(q, k, v):
    out = dot_product_attention(q, k, v, causal=causal, segment_ids=None if segment_ids is None
                                else jnp.asarray(segment_ids))
    return jnp.sum(out * weights)

  got = jax.grad(loss, (0, 1, 2))(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)))
  for name, g, w in zip('qkv', got, want):
    np.testing.assert_allclose(g, w, atol=1e-4, err_msg=f'd{name}')


def test_unmasked_path_equals_all_ones_segments():
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 5, 2, 4)), jnp.float32) for _ in range(3))
  np.testing.assert_allclose(dot_product_attention(q, k, v),
                             dot_product_attention(q, k, v, segment_ids=jnp.ones((2, 5), int)),
                             atol=1e-6)
