"""Reading a local Hugging Face folder (config.json and its weights) into numpy, for converters.

Safetensors files are parsed here (an 8-byte header length, a JSON header, raw little-endian
data) and memory-mapped, rather than read with `safetensors.numpy`: numpy has no bfloat16, in
which most LLaMA-family weights ship, and ml_dtypes (a jax dependency) gives it one; it also lets
a safetensors checkpoint be converted without the `[hf]` extra. `pytorch_model.bin` needs torch.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import ml_dtypes
import numpy as np

# Safetensors dtype names -> numpy dtypes.
_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
    'F8_E4M3': ml_dtypes.float8_e4m3fn, 'F8_E5M2': ml_dtypes.float8_e5m2,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
    'BOOL': np.bool_,
}
# What a folder's weights may be, in the order they are looked for.
WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
                'pytorch_model.bin.index.json')


def read_config(src: str) -> dict[str, Any]:
  """`src/config.json` as a dict (the folder `save_pretrained` wrote)."""
  path = os.path.join(src, 'config.json')
  if not os.path.isdir(src):
    raise FileNotFoundError(f'--src {src!r} is not a folder: converters read a local Hugging '
                            'Face folder (config.json and the weights), never the hub.')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: --src must hold config.json.')
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """{name: array} of one .safetensors file, memory-mapped, in the dtypes it stores."""
  with open(path, 'rb') as f:
    (header_len,) = struct.unpack('<Q', f.read(8))
    header = json.loads(f.read(header_len))
  data = np.memmap(path, dtype=np.uint8, mode='r', offset=8 + header_len)
  tensors = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    if info['dtype'] not in _DTYPES:
      raise ValueError(f'{path}: tensor {name!r} has dtype {info["dtype"]}, which this reader '
                       f'does not know (known: {sorted(_DTYPES)}).')
    begin, end = info['data_offsets']
    dtype = np.dtype(_DTYPES[info['dtype']]).newbyteorder('<')
    tensors[name] = data[begin:end].view(dtype).reshape(info['shape'])
  return tensors


def read_torch(path: str) -> dict[str, np.ndarray]:
  """{name: array} of a `torch.save`d state dict, loaded on the CPU with `weights_only` (no
  pickled code runs)."""
  try:
    import torch
  except ImportError as e:
    raise ValueError(f'{path} is a torch checkpoint, which needs torch: pip install -e '
                     "'.[hf]' (or convert the folder's safetensors instead).") from e
  state = torch.load(path, map_location='cpu', weights_only=True)
  out = {}
  for name, tensor in state.items():
    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: the same bits, viewed.
      out[name] = tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    else:
      out[name] = tensor.numpy()
  return out


def read_state_dict(src: str) -> dict[str, np.ndarray]:
  """The folder's weights, {torch state dict name: array}: one file or the shards its
  `*.index.json` lists, safetensors preferred."""
  for name in WEIGHT_FILES:
    path = os.path.join(src, name)
    if not os.path.exists(path):
      continue
    read = read_safetensors if '.safetensors' in name else read_torch
    if not name.endswith('.index.json'):
      return read(path)
    with open(path, encoding='utf-8') as f:
      shards = sorted(set(json.load(f)['weight_map'].values()))
    tensors = {}
    for shard in shards:
      tensors.update(read(os.path.join(src, shard)))
    return tensors
  raise FileNotFoundError(f'{src} holds none of {", ".join(WEIGHT_FILES)}: nothing to convert '
                          f'(found: {sorted(os.listdir(src))}).')
