"""A small WordPiece tokenizer trained on the dataset's own captions (HF `tokenizers`).

Captions of synthetic and domain datasets use a few hundred words; a tokenizer trained on them
keeps the text tower's embedding table small instead of carrying a 30k-token general vocab.
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

SPECIAL_TOKENS = ('[PAD]', '[UNK]', '[BOS]', '[EOS]')  # Ids 0..3, in this order.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def train_tokenizer(texts: Iterable[str], path: str, vocab_size: int = 1000,
                    ) -> tokenizers.Tokenizer:
  """Trains a lowercasing WordPiece tokenizer on `texts` and saves it as JSON at `path`.

  The vocabulary can come out smaller than `vocab_size` when the texts have fewer pieces.
  """
  tokenizer = tokenizers.Tokenizer(models.WordPiece(unk_token='[UNK]'))
  tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # Whitespace + punctuation.
  tokenizer.decoder = decoders.WordPiece()
  trainer = trainers.WordPieceTrainer(vocab_size=vocab_size,
                                      special_tokens=list(SPECIAL_TOKENS))
  tokenizer.train_from_iterator(texts, trainer)
  ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
  if ids != list(range(len(SPECIAL_TOKENS))):
    raise AssertionError(f'Special token ids are {ids}, expected 0..3.')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  tokenizer.save(tmp)
  os.replace(tmp, path)  # Atomic: concurrent readers never see half a file.
  return tokenizer


def load_tokenizer(path: str) -> tokenizers.Tokenizer:
  return tokenizers.Tokenizer.from_file(path)


def tokenize(tokenizer: tokenizers.Tokenizer, texts: list[str], max_len: int, *,
             bos_id: int | None = BOS_ID, eos_id: int = EOS_ID,
             pad_id: int = PAD_ID, with_truncated: bool = False
             ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
  """`[batch, max_len]` int32: BOS, tokens, EOS, then PAD; long texts lose tokens, not EOS.
  `with_truncated` also returns `[batch]` bool: which texts lost tokens.

  The special ids default to this module's tokenizers'; a converted text tower has its own
  (CLIP: <|startoftext|>, <|endoftext|>; SigLIP: no BOS), set in the release's `data` config.
  """
  specials = [bos_id] if bos_id is not None else []
  if max_len < len(specials) + 1:
    raise ValueError(f'max_len must leave room for BOS and EOS, got {max_len}.')
  out = np.full((len(texts), max_len), pad_id, np.int32)
  truncated = np.zeros((len(texts),), bool)
  room = max_len - len(specials) - 1
  for row, encoding in enumerate(tokenizer.encode_batch(list(texts), add_special_tokens=False)):
    ids = [*specials, *encoding.ids[:room], eos_id]
    out[row, :len(ids)] = ids
    truncated[row] = len(encoding.ids) > room
  return (out, truncated) if with_truncated else out
