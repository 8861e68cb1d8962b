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


def tokenize(tokenizer: tokenizers.Tokenizer, texts: list[str], max_len: int) -> np.ndarray:
  """`[batch, max_len]` int32: BOS, tokens, EOS, then PAD (0); long texts lose tokens, not EOS."""
  if max_len < 2:
    raise ValueError(f'max_len must leave room for BOS and EOS, got {max_len}.')
  out = np.full((len(texts), max_len), PAD_ID, np.int32)
  for row, encoding in enumerate(tokenizer.encode_batch(list(texts), add_special_tokens=False)):
    ids = [BOS_ID, *encoding.ids[:max_len - 2], EOS_ID]
    out[row, :len(ids)] = ids
  return out
