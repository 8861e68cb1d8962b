"""LLaMA-style decoder for the long-context world model (LWM): RMSNorm, SwiGLU, RoPE, grouped-query
attention, scan over layers with optional remat, and attention that is either the reference
op or ring attention over the `sequence` mesh axis (`attention='dot_product' | 'ring'`).

Packed rows carry `segment_ids` (0 = padding) and `positions` that restart at every document;
RoPE and causality both follow `positions`, so the same model runs on any sequence layout.
With `decode=True` every attention layer keeps a KV cache (flax's `cache` collection), sized by
the first call (`init` on a `[batch, max_length]` input), then fed the prompt and one token at a
time; see vidlang_jax/generate.py.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vidlang_jax import registry
from vidlang_jax.losses.language_model import weighted_next_token_loss
from vidlang_jax.models import Objective, layers
from vidlang_jax.ops.attention import dot_product_attention
from vidlang_jax.ops.ring_attention import layout_permutation, ring_attention

Dtype = Any


def rope_table(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """(cos, sin) `[batch, length, 1, head_dim // 2]` fp32 of the rotary angles at `positions`
  `[batch, length]`: computed once per forward pass and shared by every layer (XLA fused the
  cosines into each layer's q and k, evaluating them per head, twice per layer)."""
  half = head_dim // 2
  freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [half]
  angles = positions.astype(jnp.float32)[..., None] * freqs  # [batch, length, half]
  return jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]


def rope(x: jax.Array, positions: jax.Array | tuple[jax.Array, jax.Array],
         theta: float = 10_000.0) -> jax.Array:
  """Rotary position embedding of `[batch, length, heads, head_dim]` at `positions`
  `[batch, length]` or at a precomputed `rope_table` (rotate-half convention, as LLaMA / LWM)."""
  cos, sin = (positions if isinstance(positions, tuple)
              else rope_table(positions, x.shape[-1], theta))
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class RMSNorm(nn.Module):
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param('scale', layers.partitioned(nn.initializers.ones, 'embed'),
                       (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (x32 * scale).astype(self.dtype)


class Attention(nn.Module):
  num_heads: int
  num_kv_heads: int
  rope_theta: float = 10_000.0
  attention: str = 'dot_product'
  block_size: int = 512
  decode: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
               angles: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    width = x.shape[-1]
    head_dim = width // self.num_heads
    proj = lambda heads, name: layers.DenseND((heads, head_dim), ('embed', 'heads', 'kv'),
                                              dtype=self.dtype, name=name)
    if angles is None:
      angles = rope_table(positions, head_dim, self.rope_theta)
    q = rope(proj(self.num_heads, 'query')(x), angles)
    k = rope(proj(self.num_kv_heads, 'key')(x), angles)
    v = proj(self.num_kv_heads, 'value')(x)
    q = layers.constrain(q, 'batch', 'length', 'heads', 'kv')
    if self.decode:
      out = self.cached_attention(q, k, v)
    elif self.attention == 'ring':
      out = ring_attention(q, k, v, mesh=jax.sharding.get_abstract_mesh(), causal=True,
                           segment_ids=segment_ids, positions=positions,
                           block_size=self.block_size)
    elif self.attention == 'dot_product':
      out = dot_product_attention(q, k, v, causal=True, segment_ids=segment_ids)
    else:
      raise ValueError(f"model.attention must be 'dot_product' or 'ring', got "
                       f'{self.attention!r}.')
    return layers.DenseND((width,), ('heads', 'kv', 'embed'), contract=2, dtype=self.dtype,
                          name='out')(out)

  def cached_attention(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Appends k, v `[batch, new, kv_heads, head_dim]` to the cache and attends causally over
    everything cached so far (one batch of equal-length prompts; no segments)."""
    initialized = self.has_variable('cache', 'cached_key')
    cached_k = self.variable('cache', 'cached_key', jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable('cache', 'cached_value', jnp.zeros, v.shape, v.dtype)
    index = self.variable('cache', 'cache_index', lambda: jnp.zeros((), jnp.int32))
    if not initialized:  # the sizing call: the cache is as long as this input
      return dot_product_attention(q, k, v, causal=True)
    start = index.value
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, start, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, start, 0, 0))
    index.value = start + q.shape[1]
    return dot_product_attention(q, cached_k.value, cached_v.value, causal=True, q_offset=start)


class SwiGLU(nn.Module):
  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = layers.partitioned(nn.initializers.lecun_normal(), 'embed', 'mlp')
    gate = nn.Dense(self.mlp_dim, use_bias=False, dtype=self.dtype, kernel_init=init,
                    name='gate')(x)
    up = nn.Dense(self.mlp_dim, use_bias=False, dtype=self.dtype, kernel_init=init, name='up')(x)
    hidden = layers.constrain(nn.silu(gate) * up, 'batch', 'length', 'mlp')
    return nn.Dense(x.shape[-1], use_bias=False, dtype=self.dtype, name='down',
                    kernel_init=layers.partitioned(nn.initializers.lecun_normal(), 'mlp',
                                                   'embed'))(hidden)


class DecoderBlock(nn.Module):
  num_heads: int
  num_kv_heads: int
  mlp_dim: int
  rope_theta: float
  attention: str
  block_size: int
  decode: bool = False
  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, positions, segment_ids, angles=None):
    norm = lambda name: RMSNorm(self.norm_eps, self.dtype, name=name)
    y = Attention(self.num_heads, self.num_kv_heads, self.rope_theta, self.attention,
                  self.block_size, self.decode, self.dtype, name='attn')(
                      norm('norm_attn')(x), positions, segment_ids, angles)
    x = layers.constrain(x + y, 'batch', 'length', 'embed')
    y = SwiGLU(self.mlp_dim, self.dtype, name='mlp')(norm('norm_mlp')(x))
    return layers.constrain(x + y, 'batch', 'length', 'embed'), None


@registry.register('model.world_model')
class WorldModel(nn.Module):
  """Causal LM over a shared vocabulary of text and video tokens: `[batch, length]` ids ->
  fp32 logits `[batch, length, vocab]`.

  `norm_eps` is the RMSNorm epsilon of every norm: 1e-6 as LWM; converted LLaMA checkpoints
  set theirs (1e-5 for LLaMA 1 / 2), which matters where activations are small.
  """

  vocab_size: int = 32_000
  width: int = 4096
  depth: int = 32
  num_heads: int = 32
  num_kv_heads: int | None = None
  mlp_dim: int = 11_008
  rope_theta: float = 10_000.0
  attention: str = 'dot_product'
  block_size: int = 512
  norm_eps: float = 1e-6
  scan: bool = True
  remat: bool = False
  decode: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> jax.Array:
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    if segment_ids is None:
      segment_ids = jnp.ones_like(tokens)
    embedding = self.param('token_embedding', layers.partitioned(
        nn.initializers.normal(0.02), 'vocab', 'embed'), (self.vocab_size, self.width))
    x = layers.constrain(jnp.take(embedding, tokens, axis=0).astype(self.dtype),
                         'batch', 'length', 'embed')
    # The rotary angles of every layer, computed once.
    angles = rope_table(positions, self.width // self.num_heads, self.rope_theta)
    x = layers.stack_blocks(
        DecoderBlock, x, positions, segment_ids, angles, depth=self.depth, scan=self.scan,
        remat=self.remat, collections=('params', 'cache'), num_heads=self.num_heads,
        num_kv_heads=self.num_kv_heads or self.num_heads, mlp_dim=self.mlp_dim,
        rope_theta=self.rope_theta, attention=self.attention, block_size=self.block_size,
        decode=self.decode, norm_eps=self.norm_eps, dtype=self.dtype)
    x = RMSNorm(self.norm_eps, self.dtype, name='norm_out')(x)
    logits = nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype, name='lm_head',
                      kernel_init=layers.partitioned(nn.initializers.lecun_normal(), 'embed',
                                                     'vocab'))(x)
    return layers.constrain(logits.astype(jnp.float32), 'batch', 'length', 'vocab')


LAYOUT_KEYS = ('inputs', 'targets', 'weights', 'modality', 'segment_ids', 'positions')


@registry.register('objective.world_model')
def world_model_objective(model: WorldModel, config: ml_collections.ConfigDict) -> Objective:
  """Weighted next-token loss over packed rows (see data/sequences.py).

  With ring attention the rows are permuted into the load-balanced zigzag layout first (the
  loss is a sum over tokens, so the order does not change it; positions travel along).
  """
  layout = config.get('sequence_layout', 'zigzag')

  def init(rng, batch):
    del batch  # the params do not depend on the sequence length or layout
    return model.clone(attention='dot_product').init(rng, jnp.zeros((1, 8), jnp.int32))['params']

  def loss(params, batch, rng, train=True):
    del rng, train
    if model.attention == 'ring' and layout != 'contiguous':
      shards = jax.sharding.get_abstract_mesh().shape['sequence']
      perm = layout_permutation(batch['inputs'].shape[1], shards, layout)
      batch = {k: jnp.take(batch[k], perm, axis=1) for k in LAYOUT_KEYS}
    logits = model.apply({'params': params}, batch['inputs'], batch['positions'],
                         batch['segment_ids'])
    weights = batch['weights'] * (batch['segment_ids'] > 0)
    return weighted_next_token_loss(logits, batch['targets'], weights, batch['modality'])

  return Objective(init=init, loss=loss)
