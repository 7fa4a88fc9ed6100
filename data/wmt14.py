"""WMT14 English→German: TFDS name, offline newstest files, Moses detokenization, sentencepiece.

`data/translation.py` builds the dataset; this module holds what is particular to WMT14:

* The full corpus is TFDS `wmt14_translate/de-en` (train 4,508,785 pairs = europarl-v7 +
  commoncrawl + news-commentary-v9; validation = newstest2013, 3,000; test = newstest2014 full,
  3,003). Its records are `{'de': text, 'en': text}` of raw (untokenized) text; TFDS's
  `supervised_keys` are (de, en), so en→de reads the features the other way round (the loader
  picks `src_lang`/`tgt_lang` by name). Preparing it needs the network and, with
  tensorflow-datasets 4.9, TensorFlow: prepare once where both exist (`TFDS_PREPARE`), then
  point `data.tfds_data_dir` at the result; reading it needs neither.
* Offline, `../shared/data/wmt14-en-de` gives a miniature: newstest2013 / newstest2014 as
  validation / test, and news-test2008 + newstest2009–2012 (`dev-extra/`, 13,071 pairs) plus the
  10k-pair OpenNMT sample of WMT training data as training text (`OFFLINE_TRAIN`).
* The OpenNMT sample is Moses-tokenized with `&apos;`-style escapes while the newstest files are
  raw; entries marked `moses:` are detokenized on load (`moses_detokenize`, sacremoses'
  port of `detokenizer.perl`) so that a sentencepiece model sees raw text throughout.
* One joint sentencepiece model (Kudo & Richardson 2018) over the training text of both
  languages replaces the joint BPE of Vaswani et al. (2017, ≈37k) and fairseq's scaling-NMT recipe
  (32k); `SentencePieceVocab` keeps fairseq's special ids `<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3,
  so the model and the decoder need no id mapping. Models are trained with byte fallback (a
  character unseen in training becomes its UTF-8 bytes instead of `<unk>`, so raw-text references
  such as newstest2014's typographic quotes stay reachable) and sentencepiece's default `nmt_nfkc`
  normalization (`decode(encode(s))` differs from `s` only where NFKC rewrites a character,
  e.g. a no-break space becomes a space).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import sentencepiece as spm

from data import cache
from data import vocab as vocab_lib

TFDS_NAME = 'wmt14_translate/de-en'
TFDS_SIZES = {'train': 4_508_785, 'valid': 3_000, 'test': 3_003}
TFDS_PREPARE = (
    f'prepare {TFDS_NAME} once on a machine with network access and TensorFlow: '
    f'`tfds build {TFDS_NAME} --file_format=array_record --data_dir=DIR`, then set '
    f'data.tfds_data_dir=DIR (reading it needs neither TensorFlow nor the network)')
DEFAULT_DIR = '../shared/data/wmt14-en-de'
# The offline miniature (paths relative to DEFAULT_DIR; entry syntax in data/translation.py).
OFFLINE_TRAIN = (
    'dev-extra/news-test2008',
    'dev-extra/newstest2009',
    'dev-extra/newstest2010',
    'dev-extra/newstest2011',
    'dev-extra/newstest2012',
    'moses:en=opennmt-sample/src-train.en.tok,de=opennmt-sample/tgt-train.de.tok',
)
OFFLINE_VALID = ('newstest2013',)
OFFLINE_TEST = ('newstest2014',)
SPM_MODEL_TYPES = ('bpe', 'unigram')
# Bump when sentencepiece training options change: part of the model's cache key.
SPM_VERSION = 'spm-fairseq-specials-v1'
_SPECIAL_IDS = {'bos_id': vocab_lib.BOS_ID, 'pad_id': vocab_lib.PAD_ID,
                'eos_id': vocab_lib.EOS_ID, 'unk_id': vocab_lib.UNK_ID}


def moses_detokenize(lines: Iterable[str], lang: str) -> Iterator[str]:
  """Raw text from Moses-tokenized lines (`&apos;` etc. unescaped), as `detokenizer.perl -l`."""
  # Imported here: sacremoses compiles its tokenizer's expressions on import (half a second).
  from sacremoses import MosesDetokenizer  # pylint: disable=g-import-not-at-top
  detokenizer = MosesDetokenizer(lang=lang)
  for line in lines:
    yield detokenizer.detokenize(line.split())


class SentencePieceVocab(vocab_lib.FairseqSpecialIds):
  """A sentencepiece model with fairseq's special ids, used for both languages.

  `encode` gives the pieces' ids followed by `</s>` (fairseq appends eos to every sentence);
  `decode` reads up to the first `</s>`, drops `<pad>` and `<s>`, and detokenizes.
  """

  kind = 'sentencepiece'

  def __init__(self, model_proto: bytes, *, name: str = 'sentencepiece model'):
    self.model_proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
    found = {k: getattr(self._sp, k)() for k in _SPECIAL_IDS}
    if found != _SPECIAL_IDS:
      raise ValueError(
          f'{name} has special ids {found}, but translation data needs fairseq\'s layout '
          f'{_SPECIAL_IDS} (<s>, <pad>, </s>, <unk> = 0, 1, 2, 3). Retrain it with '
          f'--bos_id=0 --pad_id=1 --eos_id=2 --unk_id=3, or leave data.spm_model empty to '
          f'train one from the training text')
    self._size = self._sp.get_piece_size()

  def __len__(self) -> int:
    return self._size

  @property
  def symbols(self) -> list[str]:
    """id → piece (word-initial pieces start with "▁")."""
    return [self._sp.id_to_piece(i) for i in range(self._size)]

  def __eq__(self, other) -> bool:
    return isinstance(other, SentencePieceVocab) and self.model_proto == other.model_proto

  def __repr__(self) -> str:
    return f'SentencePieceVocab({len(self)} pieces, sha256={self.sha256()[:12]})'

  def sha256(self) -> str:
    """Hex digest of the serialized model: equal digests, equal segmentation and ids."""
    return hashlib.sha256(self.model_proto).hexdigest()

  def pieces(self, line: str) -> list[str]:
    return self._sp.encode(line, out_type=str)

  def encode(self, line: str) -> np.ndarray:
    """[n + 1] int32: the line's piece ids, then `</s>`."""
    return np.asarray(self._sp.encode(line) + [vocab_lib.EOS_ID], dtype=np.int32)

  def encode_lines(self, lines: Iterable[str], *,
                   chunk_lines: int = 50_000) -> tuple[np.ndarray, np.ndarray]:
    """All lines as one flat int32 array (`</s>` after each) and [N + 1] int64 offsets.

    Lines are encoded `chunk_lines` at a time (sentencepiece's batch encoder, multi-threaded),
    so 4.5M sentences never live as Python lists at once.
    """
    chunks, lengths, batch = [], array('q'), []
    threads = min(16, os.cpu_count() or 1)

    def flush():
      pieces = self._sp.encode(batch, num_threads=threads)
      lengths.extend(len(p) + 1 for p in pieces)
      flat = np.fromiter((i for p in pieces for i in (*p, vocab_lib.EOS_ID)), dtype=np.int32)
      chunks.append(flat)
      batch.clear()

    for line in lines:
      batch.append(line)
      if len(batch) == chunk_lines:
        flush()
    if batch:
      flush()
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(np.frombuffer(lengths, dtype=np.int64), out=offsets[1:])
    return tokens, offsets

  def decode(self, ids: Iterable[int]) -> str:
    """Raw text of ids up to the first `</s>` (`<pad>`, `<s>` dropped; out-of-range → `<unk>`)."""
    out = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if i == vocab_lib.EOS_ID:
        break
      if i in (vocab_lib.PAD_ID, vocab_lib.BOS_ID):
        continue
      out.append(i if 0 <= i < self._size else vocab_lib.UNK_ID)
    return self._sp.decode(out)


def train_sentencepiece(lines: Iterable[str], *, vocab_size: int, model_type: str = 'bpe',
                        input_sentence_size: int = 0, seed: int = 0) -> bytes:
  """Trains a sentencepiece model with fairseq's special ids; returns the serialized model.

  Args:
    lines: the training sentences (both languages for a joint vocabulary), raw text.
    vocab_size: pieces including the four specials (and, with byte fallback, 256 byte pieces).
    model_type: 'bpe' (Sennrich et al. 2016 merges) or 'unigram' (Kudo 2018; slower to train).
    input_sentence_size: train on this many sentences sampled from `lines` (0 = all of them);
      sentencepiece holds its sample in memory, which bounds memory on 9M WMT14 sentences.
    seed: sentencepiece's random seed (sampling), for a reproducible model.
  """
  if model_type not in SPM_MODEL_TYPES:
    raise ValueError(f'data.spm_model_type must be one of {SPM_MODEL_TYPES}, got {model_type!r}')
  if input_sentence_size < 0:
    raise ValueError(f'data.spm_input_sentence_size must be ≥ 0 (0 = all sentences), got '
                     f'{input_sentence_size}')
  writer = io.BytesIO()
  spm.set_random_generator_seed(seed)
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=writer, vocab_size=vocab_size,
        model_type=model_type, input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True, character_coverage=1.0, byte_fallback=True,
        bos_id=vocab_lib.BOS_ID, pad_id=vocab_lib.PAD_ID, eos_id=vocab_lib.EOS_ID,
        unk_id=vocab_lib.UNK_ID, bos_piece=vocab_lib.BOS, pad_piece=vocab_lib.PAD,
        eos_piece=vocab_lib.EOS, unk_piece=vocab_lib.UNK,
        num_threads=min(16, os.cpu_count() or 1), minloglevel=2)
  except RuntimeError as e:
    raise ValueError(
        f'sentencepiece could not train a {model_type} model of {vocab_size} pieces: {e}. '
        f'With byte fallback a model needs at least 4 specials + 256 bytes + the characters of '
        f'the text; a small corpus cannot fill a large vocabulary: change data.spm_vocab_size'
        ) from e
  return writer.getvalue()


def load_sentencepiece(path: str | os.PathLike) -> SentencePieceVocab:
  """A trained `.model` file; it must have fairseq's special ids (see `SentencePieceVocab`)."""
  try:
    proto = Path(path).read_bytes()
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f'data.spm_model={str(path)!r} does not exist; give a sentencepiece .model file, or '
        f'leave data.spm_model empty to train one from the training text') from e
  try:
    return SentencePieceVocab(proto, name=f'data.spm_model={str(path)!r}')
  except RuntimeError as e:  # Not a model proto.
    raise ValueError(f'data.spm_model={str(path)!r} is not a sentencepiece model ({e})') from e


def cached_sentencepiece(lines, *, sources: list, identity: dict, vocab_size: int,
                         model_type: str, input_sentence_size: int,
                         cache_dir: str) -> tuple[SentencePieceVocab, bool]:
  """The joint model trained on `lines()`, from the cache when the same text trained it before.

  Args:
    lines: a function returning the training sentences (called only on a cache miss).
    sources: files (or a prepared TFDS folder) the sentences come from: the cache key.
    identity: anything else that changes the sentences (languages, entries, detokenization).
    vocab_size, model_type, input_sentence_size: see `train_sentencepiece`.
    cache_dir: `data.cache_dir` ('' = the default, see data/cache.py).

  Returns:
    (vocabulary, whether it came from the cache).
  """
  options = dict(identity, vocab_size=vocab_size, model_type=model_type,
                 input_sentence_size=input_sentence_size)

  def build():
    proto = train_sentencepiece(lines(), vocab_size=vocab_size, model_type=model_type,
                                input_sentence_size=input_sentence_size)
    return ({'model': np.frombuffer(proto, dtype=np.uint8)},
            {'sha256': hashlib.sha256(proto).hexdigest(), 'options': options})

  key = cache.fingerprint(sources, version=SPM_VERSION, **options)
  entry = cache.load_or_build(cache.resolve_cache_dir(cache_dir), 'sentencepiece', key, build)
  proto = np.asarray(entry.arrays['model']).tobytes()
  return SentencePieceVocab(proto, name=f'the cached sentencepiece model {entry.path}'), entry.hit
