"""The MFU numerator: `train.step_flops_per_device` against an analytic count per family.

As nanoGPT / maxtext count: every matmul is 2·m·n·k FLOPs forward and twice that backward
(6·N per token for a weight applied to every token; 4·N for the patch embedding, whose input
needs no gradient), plus attention's two `[length, length]` products (4·L²·width forward, 12
with backward). Elementwise work is left out, so the towers use head_dim 64 (as real models
do) and the counts agree within 5 %. Checked on one device, and per device on fsdp=8 where
the batch really is split, for the scanned stack (counted through its unrolled twin) and the
unrolled one (XLA's compiled count of the partitioned program).
"""

import jax
import jax.numpy as jnp

from vidlang_jax import config as config_lib
from vidlang_jax import sharding, train
from vidlang_jax.models import masked_video


def step_flops(config, devices=None):
  mesh = sharding.make_mesh(config.mesh, devices)
  with jax.set_mesh(mesh):
    setup = train.build(config, mesh)
    compiled = train.make_train_step(setup.objective, setup.tx, setup.schedule,
                                     setup.shardings).lower(
        setup.abstract_state, setup.batch_spec, jax.random.key(0)).compile()
    return train.step_flops_per_device(config, compiled, mesh, setup.batch_spec)


def encoder_forward(tokens, width, mlp_dim, depth):
  """One example through a pre-LN transformer stack: qkv + out (4·w²), the MLP, attention."""
  return depth * (2 * tokens * (4 * width**2 + 2 * width * mlp_dim) + 4 * tokens**2 * width)


def video_tokens(video):
  pt, ph, pw = video.tubelet
  return (video.num_frames // pt) * (video.image_size // ph) * (video.image_size // pw), (
      pt * ph * pw * 3)


def two_tower_flops(c):
  v, t = c.model.video, c.model.text
  tokens, patch_dim = video_tokens(v)
  forward = (encoder_forward(tokens, v.width, v.mlp_dim, v.depth)
             + encoder_forward(t.max_len, t.width, t.mlp_dim, t.depth)
             + 2 * (v.width + t.width) * c.model.embed_dim)
  patch_embed = 2 * tokens * patch_dim * v.width
  logits = 2 * c.batch_size**2 * c.model.embed_dim  # every video against every caption
  return c.batch_size * (3 * forward + 2 * patch_embed) + 3 * logits


def masked_video_flops(c):
  """The encoder sees only the visible tubelets; the decoder sees all of them."""
  v, d = c.model.video, c.model.decoder
  tokens, patch_dim = video_tokens(v)
  video = jax.ShapeDtypeStruct((1, v.num_frames, v.image_size, v.image_size, 3), jnp.float32)
  mask = jax.eval_shape(
      lambda video: masked_video.mask_fn(c)(None, {'video': video}, jax.random.key(0)), video)
  visible = mask.keep_indices.shape[1]
  per_example = (4 * visible * patch_dim * v.width
                 + 3 * encoder_forward(visible, v.width, v.mlp_dim, v.depth)
                 + 6 * visible * v.width * d.width
                 + 3 * encoder_forward(tokens, d.width, d.mlp_dim, d.depth)
                 + 6 * tokens * d.width * patch_dim)
  return c.batch_size * per_example


def world_model_flops(c):
  """Grouped-query attention (queries and output on all heads, keys and values on the kv
  heads), SwiGLU, the LM head; the reference attention computes the whole causal square."""
  m, length = c.model, c.data.sequence_length
  head_dim = m.width // m.num_heads
  per_token = m.depth * (2 * m.width * head_dim * (2 * m.num_heads + 2 * m.num_kv_heads)
                         + 6 * m.width * m.mlp_dim) + 2 * m.width * m.vocab_size
  attention = m.depth * 4 * length**2 * m.num_heads * head_dim
  return c.batch_size * 3 * (length * per_token + attention)


def two_tower_config():
  c = config_lib.load('configs/two_tower.py:tiny')
  c.batch_size = 16
  c.model.video.update(num_heads=2, depth=3)
  c.model.text.num_heads = 2
  return c


def assert_close(got, want, tolerance=0.05):
  assert abs(got / want - 1) < tolerance, f'XLA {got:.4g} vs formula {want:.4g}: x{got / want:.3f}'


def test_two_tower_on_one_device_unrolled_and_scanned():
  config = two_tower_config()
  assert_close(step_flops(config, jax.devices()[:1]), two_tower_flops(config))
  config.model.video.scan = config.model.text.scan = True
  config.mesh.update(data=1, fsdp=8)
  assert_close(step_flops(config) * 8, two_tower_flops(config))


def test_per_device_share_on_a_mesh_that_splits_the_batch():
  config = two_tower_config()
  config.mesh.update(data=2, fsdp=4)  # 16 examples, 2 per device
  assert_close(step_flops(config), two_tower_flops(config) / 8)


def test_masked_video_encoder_sees_only_visible_tubelets():
  config = config_lib.load('configs/masked_video.py:tiny')  # tube masking at 0.9
  config.batch_size = 16
  config.model.video.num_heads = 2
  config.model.decoder.update(width=128, num_heads=2, mlp_dim=256)
  assert_close(step_flops(config, jax.devices()[:1]), masked_video_flops(config))


def test_world_model_scanned():
  config = config_lib.load('configs/world_model.py:tiny,attention=dot_product')
  config.model.update(width=256, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=512, scan=True)
  config.data.sequence_length, config.batch_size = 256, 4
  assert_close(step_flops(config, jax.devices()[:1]), world_model_flops(config))
