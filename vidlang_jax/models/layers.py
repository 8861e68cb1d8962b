"""Transformer building blocks shared by every tower, with logical axis names on every weight.

Logical names (mapped to mesh axes by `sharding.LOGICAL_AXIS_RULES`): `embed` (model width),
`mlp` (hidden width), `heads`, `kv` (head dim), `vocab`, `layers` (the scanned stack).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vidlang_jax.ops.attention import dot_product_attention

Dtype = Any


def partitioned(init: Callable[..., jax.Array], *axes: str | None) -> Callable[..., jax.Array]:
  return nn.with_logical_partitioning(init, axes)


def constrain(x: jax.Array, *axes: str | None) -> jax.Array:
  """Activation sharding hint by logical names (a no-op outside a mesh)."""
  return nn.with_logical_constraint(x, axes)


class DenseND(nn.Module):
  """Dense over the last `contract` input dims to `features`, with the kernel initialised in its
  ND shape (flax's DenseGeneral initialises a flat 2D kernel, which breaks sharding constraints
  on 3D kernels under logical-axis rules).
  """

  features: tuple[int, ...]
  kernel_axes: tuple[str | None, ...]
  contract: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_shape = x.shape[-self.contract:]
    in_axis = tuple(range(self.contract))
    out_axis = tuple(range(self.contract, self.contract + len(self.features)))
    init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform', in_axis=in_axis,
                                            out_axis=out_axis)
    kernel = self.param('kernel', partitioned(init, *self.kernel_axes),
                        in_shape + self.features)
    bias = self.param('bias', partitioned(nn.initializers.zeros,
                                          *self.kernel_axes[self.contract:]), self.features)
    x_axes = tuple(range(x.ndim - self.contract, x.ndim))
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                            ((x_axes, in_axis), ((), ())))
    return y + bias.astype(self.dtype)


class MultiHeadAttention(nn.Module):
  """Self-attention over `[batch, length, embed]` using the reference attention op."""

  num_heads: int
  dtype: Dtype = jnp.float32
  causal: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f'width {width} is not divisible by num_heads {self.num_heads}.')
    heads, head_dim = self.num_heads, width // self.num_heads
    proj = lambda name: DenseND((heads, head_dim), ('embed', 'heads', 'kv'), dtype=self.dtype,
                                name=name)
    # [batch, length, heads, head_dim]
    q, k, v = proj('query')(x), proj('key')(x), proj('value')(x)
    out = dot_product_attention(q, k, v, causal=self.causal, segment_ids=segment_ids)
    return DenseND((width,), ('heads', 'kv', 'embed'), contract=2, dtype=self.dtype,
                   name='out')(out)


def quick_gelu(x: jax.Array) -> jax.Array:
  """OpenAI CLIP's sigmoid approximation of GELU."""
  return x * jax.nn.sigmoid(1.702 * x)


# The MLP's activation by name; checkpoints converted from other code need theirs exactly.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'gelu_tanh': functools.partial(nn.gelu, approximate=True),  # ours, SigLIP (gelu_pytorch_tanh)
    'gelu': functools.partial(nn.gelu, approximate=False),  # erf GELU: VideoMAE, torch's default
    'quick_gelu': quick_gelu,  # OpenAI CLIP
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f'activation={name!r} is not one of {sorted(ACTIVATIONS)}.')
  return ACTIVATIONS[name]


class Mlp(nn.Module):
  mlp_dim: int
  dtype: Dtype = jnp.float32
  act: str = 'gelu_tanh'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    init = nn.initializers.xavier_uniform()
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=partitioned(init, 'embed', 'mlp'),
                 bias_init=partitioned(nn.initializers.zeros, 'mlp'))(x)
    x = activation(self.act)(x)
    x = constrain(x, 'batch', 'length', 'mlp')
    return nn.Dense(width, dtype=self.dtype, kernel_init=partitioned(init, 'mlp', 'embed'),
                    bias_init=partitioned(nn.initializers.zeros, 'embed'))(x)


def layer_norm(name: str | None = None, dtype: Dtype = jnp.float32,
               eps: float = 1e-6) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, dtype=dtype, name=name,
                      scale_init=partitioned(nn.initializers.ones, 'embed'),
                      bias_init=partitioned(nn.initializers.zeros, 'embed'))


def stack_blocks(block: type[nn.Module], x: jax.Array, *args: Any, depth: int, scan: bool,
                 remat: bool, static_argnums: tuple[int, ...] = (),
                 rngs: tuple[str, ...] = ('params',),
                 collections: tuple[str, ...] = ('params',), **block_kwargs: Any) -> jax.Array:
  """`depth` blocks `(x, *args) -> (x, None)` applied in turn, inside a compact method.

  `scan`: one compiled block with params stacked on a leading `layers` axis (`blocks/...`);
  otherwise unrolled (`block_0/...`). `remat` recomputes each block's activations in the
  backward pass; `static_argnums` counts `self` as 0. `collections` are stacked too (e.g. the
  decoder's KV `cache`).
  """
  if remat:
    block = nn.remat(block, static_argnums=static_argnums, prevent_cse=not scan)
  if scan:
    stack = nn.scan(block, variable_axes={c: 0 for c in collections},
                    split_rngs={r: True for r in rngs}, in_axes=(nn.broadcast,) * len(args),
                    length=depth, metadata_params={nn.PARTITION_NAME: 'layers'})
    x, _ = stack(name='blocks', **block_kwargs)(x, *args)
  else:
    for i in range(depth):
      x, _ = block(name=f'block_{i}', **block_kwargs)(x, *args)
  return x


class EncoderBlock(nn.Module):
  """Pre-LN transformer block; `attention='divided'` attends over time, then space (TimeSformer).

  For divided attention `x` is `[batch, time, space, embed]`; otherwise `[batch, length, embed]`.
  Returns `(x, None)` so that it can be scanned.
  """

  num_heads: int
  mlp_dim: int
  attention: str = 'joint'
  causal: bool = False
  dropout: float = 0.0
  act: str = 'gelu_tanh'
  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, segment_ids: jax.Array | None = None,
               train: bool = False) -> tuple[jax.Array, None]:
    drop = lambda y: nn.Dropout(self.dropout)(y, deterministic=not train)
    norm = lambda name: layer_norm(name, self.dtype, self.norm_eps)
    attn = lambda name: MultiHeadAttention(self.num_heads, self.dtype, self.causal, name=name)
    if self.attention == 'divided':
      batch, time, space, width = x.shape
      # Time attention: each spatial location attends over frames.
      y = norm('norm_time')(x)
      y = jnp.swapaxes(y, 1, 2).reshape(batch * space, time, width)
      y = attn('attn_time')(y).reshape(batch, space, time, width)
      x = x + drop(jnp.swapaxes(y, 1, 2))
      # Space attention: each frame attends over its patches.
      y = norm('norm_space')(x).reshape(batch * time, space, width)
      y = attn('attn_space')(y).reshape(batch, time, space, width)
      x = x + drop(y)
    elif self.attention == 'joint':
      y = attn('attn')(norm('norm_attn')(x), segment_ids)
      x = x + drop(y)
    else:
      raise ValueError(f"attention must be 'joint' or 'divided', got {self.attention!r}.")
    x = x + drop(Mlp(self.mlp_dim, self.dtype, self.act, name='mlp')(norm('norm_mlp')(x)))
    return x, None


class Encoder(nn.Module):
  """A stack of `EncoderBlock`s, scanned over layers (one compiled block) with optional remat,
  then a LayerNorm (`final_norm`; VideoMAE's mean-pooling encoders have none: their norm comes
  after the pooling, in the head)."""

  num_layers: int
  num_heads: int
  mlp_dim: int
  attention: str = 'joint'
  causal: bool = False
  dropout: float = 0.0
  scan: bool = True
  remat: bool = False
  act: str = 'gelu_tanh'
  norm_eps: float = 1e-6
  final_norm: bool = True
  final_norm_eps: float | None = None  # None: norm_eps
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, segment_ids: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    x = stack_blocks(EncoderBlock, x, segment_ids, train, depth=self.num_layers, scan=self.scan,
                     remat=self.remat, static_argnums=(3,), rngs=('params', 'dropout'),
                     num_heads=self.num_heads, mlp_dim=self.mlp_dim, attention=self.attention,
                     causal=self.causal, dropout=self.dropout, act=self.act,
                     norm_eps=self.norm_eps, dtype=self.dtype)
    if not self.final_norm:
      return x
    eps = self.norm_eps if self.final_norm_eps is None else self.final_norm_eps
    return layer_norm('norm_out', self.dtype, eps)(x)
