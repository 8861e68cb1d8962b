"""Sampling from the world model: prefill the prompt into a KV cache, then one jit-compiled
`fori_loop` that feeds back one token at a time (greedy, or temperature + top-k).

`allowed` masks constrain each generated position to a set of ids: text -> video generation
forces the frame structure (<eof> after every frame) and lets the model pick only video codes
in between, so every sample decodes to frames.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from PIL import Image

from vidlang_jax import checkpoint, inputs, registry
from vidlang_jax.data import caption_tokenizer as tokenizer_lib
from vidlang_jax.data import pipeline, sequences
from vidlang_jax.data import video as video_lib
from vidlang_jax.pixels import image_grid, pixels_01


def sample_token(logits: jax.Array, rng: jax.Array, temperature: float, top_k: int,
                 allowed: jax.Array | None = None) -> jax.Array:
  """`[batch, vocab]` logits -> `[batch]` ids; temperature 0 is greedy."""
  logits = logits.astype(jnp.float32)
  if allowed is not None:
    # Masks cover the vocabulary of the data; ids past it (the model's padding) are never drawn.
    padding = logits.shape[-1] - allowed.shape[-1]
    allowed = jnp.pad(allowed, [(0, 0)] * (allowed.ndim - 1) + [(0, padding)])
    logits = jnp.where(allowed, logits, -jnp.inf)
  if temperature <= 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


class Generator:
  """`generator(params, prompt, num_new, rng, allowed=None)` -> `[batch, num_new]` ids.

  Prompts in one call share a length (pad-free batches); each shape and each (temperature,
  top_k), set here or per call, compiles once.
  """

  def __init__(self, model, *, temperature: float = 0.0, top_k: int = 0):
    self.decoder = model.clone(decode=True, attention='dot_product', remat=False)
    self.temperature, self.top_k = temperature, top_k
    self._run = jax.jit(self._generate, static_argnums=(2, 5, 6))

  def _empty_cache(self, batch: int, length: int):
    shapes = jax.eval_shape(lambda: self.decoder.init(
        jax.random.key(0), jnp.zeros((batch, length), jnp.int32)))['cache']
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def _generate(self, params, prompt, num_new, rng, allowed, temperature, top_k):
    batch, prompt_len = prompt.shape
    cache = self._empty_cache(batch, prompt_len + num_new)
    positions = jnp.broadcast_to(jnp.arange(prompt_len), prompt.shape)
    logits, state = self.decoder.apply({'params': params, 'cache': cache}, prompt, positions,
                                       mutable=['cache'])
    pick = lambda logits, i, rng: sample_token(
        logits, jax.random.fold_in(rng, i), temperature, top_k,
        None if allowed is None else allowed[i])
    out = jnp.zeros((batch, num_new), jnp.int32).at[:, 0].set(pick(logits[:, -1], 0, rng))

    def step(i, carry):
      cache, out = carry
      token = jax.lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1)  # [batch, 1]
      position = jnp.full((batch, 1), prompt_len + i - 1)
      logits, state = self.decoder.apply({'params': params, 'cache': cache}, token, position,
                                         mutable=['cache'])
      return state['cache'], out.at[:, i].set(pick(logits[:, -1], i, rng))

    _, out = jax.lax.fori_loop(1, num_new, step, (state['cache'], out))
    return out

  def __call__(self, params, prompt: np.ndarray, num_new: int, rng: jax.Array | None = None,
               allowed: np.ndarray | None = None, *, temperature: float | None = None,
               top_k: int | None = None) -> np.ndarray:
    rng = jax.random.key(0) if rng is None else rng
    temperature = self.temperature if temperature is None else temperature
    top_k = self.top_k if top_k is None else top_k
    prompt = jnp.asarray(prompt, jnp.int32)
    if allowed is not None and allowed.shape[0] != num_new:
      raise ValueError(f'allowed has {allowed.shape[0]} rows for {num_new} new tokens.')
    return np.asarray(self._run(params, prompt, num_new, rng,
                                None if allowed is None else jnp.asarray(allowed),
                                float(temperature), int(top_k)))


def video_constraints(vocab: sequences.Vocabulary, num_frames: int,
                      tokens_per_frame: int) -> np.ndarray:
  """`[n, vocab]` masks for generating a whole video part after its <vision> token: codes
  where the layout has a code, the structural token where it has one."""
  layout = sequences.frame_layout(vocab, num_frames, tokens_per_frame)[1:]  # after <vision>
  allowed = np.zeros((len(layout), vocab.size), bool)
  for i, token in enumerate(layout):
    if token < 0:
      allowed[i, vocab.video_offset:vocab.video_offset + vocab.num_codes] = True
    else:
      allowed[i, token] = True
  return allowed


def text_constraints(vocab: sequences.Vocabulary, length: int) -> np.ndarray:
  """`[length, vocab]`: only text ids (a caption never contains video or structural ids)."""
  allowed = np.zeros((length, vocab.size), bool)
  allowed[:, :vocab.text_size] = True
  return allowed


def text_until_eos(ids: np.ndarray) -> list[int]:
  """Generated ids up to (not including) the first EOS."""
  eos = tokenizer_lib.EOS_ID
  ids = list(int(i) for i in ids)
  return ids[:ids.index(eos)] if eos in ids else ids


class WorldModelSession:
  """A world model with its video and caption tokenizers, for both directions:
  captions from clips (greedy) and clips from captions (sampled with the session's
  temperature and top-k unless a call gives its own), given the LM's params."""

  def __init__(self, model, data_config, *, temperature: float = 1.0, top_k: int = 0):
    self.data_config = data_config
    self.vocab = sequences.vocabulary(data_config)
    self.text_tokenizer = tokenizer_lib.load_tokenizer(pipeline.tokenizer_path(data_config))
    self.video_tokenizer, self.video_tokenizer_params, _, _ = inputs.load_tokenizer_run(
        data_config.video_tokenizer)
    self.generator = Generator(model, temperature=temperature, top_k=top_k)
    self.stride = data_config.lm.frame_stride
    self.num_frames = len(range(0, data_config.num_frames, self.stride))
    self.grid = data_config.image_size // 2 ** len(self.video_tokenizer.channels)

  def tokenize_mp4(self, mp4: bytes, name: str = 'video') -> np.ndarray:
    """mp4 bytes -> codes `[time, h, w]` (frames sampled and cropped as in evaluation)."""
    decode = pipeline.DecodeVideo.from_config(self.data_config, train=False)
    out = decode.random_map({'video': mp4, 'video_id': name}, np.random.default_rng(0))
    if out.get('_skipped'):
      raise ValueError(f'Could not use {name} as a video ({out["_skipped"]}, see the warning '
                       'above).')
    return np.asarray(self.video_tokenizer.apply(
        {'params': self.video_tokenizer_params}, jnp.asarray(out['video'][None]),
        method='tokenize'))[0]

  def captions(self, params, clip_tokens: np.ndarray) -> list[str]:
    """Greedy captions of `[batch, time, h, w]` cached codes (all frames; the stride is
    applied here)."""
    prompts = np.stack([np.concatenate([sequences.video_part(self.vocab, t[::self.stride]),
                                        [tokenizer_lib.BOS_ID]]) for t in clip_tokens])
    length = self.data_config.max_text_len
    ids = self.generator(params, prompts, length, allowed=text_constraints(self.vocab, length),
                         temperature=0.0)
    return [self.text_tokenizer.decode(text_until_eos(row)) for row in ids]

  def video_codes(self, params, caption: str, rng: jax.Array, *,
                  temperature: float | None = None, top_k: int | None = None) -> np.ndarray:
    """Sampled codes `[time, h, w]` of a clip for `caption`."""
    allowed = video_constraints(self.vocab, self.num_frames, self.grid * self.grid)
    prompt = np.concatenate([sequences.caption_ids(self.text_tokenizer, caption),
                             [self.vocab.special('vision_start')]])[None]
    ids = self.generator(params, prompt, len(allowed), rng, allowed, temperature=temperature,
                         top_k=top_k)[0]
    return (ids[self.vocab.is_video(ids)] - self.vocab.video_offset).reshape(
        self.num_frames, self.grid, self.grid)

  def frames(self, codes: np.ndarray) -> np.ndarray:
    """Codes `[batch, time, h, w]` -> frames `[batch, time, size, size, 3]` in [0, 1]."""
    recon = self.video_tokenizer.apply({'params': self.video_tokenizer_params},
                                       jnp.asarray(codes), method='detokenize')
    return np.clip(np.asarray(pixels_01(recon)), 0.0, 1.0)


_PROMPT = flags.DEFINE_string('prompt', None, 'generate: a caption to turn into video.')
_VIDEO = flags.DEFINE_string('video', None, 'generate: an mp4 file to caption.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 4, 'generate: videos sampled per prompt.')
_TEMPERATURE = flags.DEFINE_float('temperature', 1.0, 'generate: sampling temperature '
                                  '(0 = greedy) for text -> video.')
_TOP_K = flags.DEFINE_integer('top_k', 50, 'generate: sample among the k likeliest codes.')


@registry.register('command.generate')
def generate_command(config, workdir: str, model) -> None:
  """`vidlang generate`, the world model both ways: caption an mp4 (`--video`) or sample clips
  for a caption (`--prompt`), saved as mp4 and a PNG strip under `workdir/generate/`."""
  if config.objective != 'world_model':
    sys.exit(f'error: generate needs a world_model config, got objective={config.objective!r}.')
  if bool(_PROMPT.value) == bool(_VIDEO.value):
    sys.exit('error: generate needs exactly one of --prompt "caption" or --video file.mp4.')
  params, name = checkpoint.read_params_tree(workdir)
  session = WorldModelSession(model, config.data, temperature=_TEMPERATURE.value,
                              top_k=_TOP_K.value)
  if _VIDEO.value:
    if not os.path.exists(_VIDEO.value):
      sys.exit(f'error: --video {_VIDEO.value!r} does not exist.')
    with open(_VIDEO.value, 'rb') as f:
      tokens = session.tokenize_mp4(f.read(), _VIDEO.value)
    print(f'{_VIDEO.value}: {session.captions(params, tokens[None])[0]}')
    return
  out_dir = os.path.join(workdir, 'generate')
  os.makedirs(out_dir, exist_ok=True)
  slug = '_'.join(_PROMPT.value.lower().split())[:60]
  codes = np.stack([session.video_codes(params, _PROMPT.value, jax.random.key(i))
                    for i in range(_NUM_SAMPLES.value)])
  frames = session.frames(codes)  # [samples, time, size, size, 3]
  Image.fromarray(image_grid(frames)).save(os.path.join(out_dir, f'{slug}.png'))
  for i, clip in enumerate(frames):
    with open(os.path.join(out_dir, f'{slug}_{i}.mp4'), 'wb') as f:
      f.write(video_lib.encode_mp4((clip * 255 + 0.5).astype(np.uint8), fps=4))
  print(f'{_NUM_SAMPLES.value} clips for {_PROMPT.value!r} from {name}: {out_dir}/{slug}*.mp4 '
        f'and {slug}.png (one row per sample).')
