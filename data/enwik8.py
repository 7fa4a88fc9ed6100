"""enwik8 (Hutter Prize; Mahoney 2011): the first 10^8 bytes of an English Wikipedia XML dump.

Byte level: the vocabulary is the 256 byte values, and the metric is bits per character (BPC =
mean negative log-likelihood in nats / ln 2 over the bytes of the split). The standard split is
Transformer-XL's `prep_enwik8.py` (kimiyoung/transformer-xl, also used by Al-Rfou et al. 2018):
the last 5,000,000 bytes are test, the 5,000,000 before them validation, the rest (90,000,000)
training, all by byte offset of the unmodified file.

A data directory holds one of (checked in this order):
* `enwik8`: the official 100,000,000-byte file (any other size is refused);
* `enwik8.zip`: the official archive from http://mattmahoney.net/dc/enwik8.zip containing it;
* `train.txt`, `valid.txt`, `test.txt`: raw bytes of each split, for other (smaller) corpora.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
import zipfile

import numpy as np

from data import cache
from data import pipeline

VERSION = 'enwik8-bytes-v1'
SPLITS = pipeline.SPLITS
ENWIK8_BYTES = 100_000_000
NUM_TEST_BYTES = 5_000_000  # prep_enwik8.py: num_test_chars
DOWNLOAD_URL = 'http://mattmahoney.net/dc/enwik8.zip'
SPLIT_FILES = {split: f'{split}.txt' for split in SPLITS}
VOCAB_SIZE = 256
PAD_ID = 0
START_ID = 0  # the input before a split's first byte; NUL does not occur in enwik8's text
WHERE_TO_GET = (f'Download {DOWNLOAD_URL} (Matt Mahoney, Hutter Prize) and put enwik8.zip, or the '
                f'enwik8 file it contains, in data.dir')


def official_split(data) -> dict[str, np.ndarray]:
  """Splits the 10^8 bytes of enwik8 into 90M/5M/5M by offset (prep_enwik8.py); returns views."""
  data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
  if len(data) != ENWIK8_BYTES:
    raise ValueError(f'enwik8 must have exactly {ENWIK8_BYTES:,} bytes, this one has '
                     f'{len(data):,}. {WHERE_TO_GET}. For another byte corpus, provide '
                     f'train.txt, valid.txt and test.txt instead.')
  n_train = ENWIK8_BYTES - 2 * NUM_TEST_BYTES
  return {'train': data[:n_train], 'valid': data[n_train:n_train + NUM_TEST_BYTES],
          'test': data[n_train + NUM_TEST_BYTES:]}


def find_sources(directory: str | os.PathLike) -> tuple[str, list[Path]]:
  """('raw' | 'zip' | 'splits', files) for the data in `directory`, or a ValueError saying why."""
  directory = Path(directory)
  raw, archive = directory / 'enwik8', directory / 'enwik8.zip'
  if raw.is_file():
    if raw.stat().st_size != ENWIK8_BYTES:
      raise ValueError(f'{raw} has {raw.stat().st_size:,} bytes, but enwik8 has exactly '
                       f'{ENWIK8_BYTES:,}; the file is truncated or not enwik8. {WHERE_TO_GET}.')
    return 'raw', [raw]
  if archive.is_file():
    return 'zip', [archive]
  splits = [directory / SPLIT_FILES[s] for s in SPLITS]
  if all(p.is_file() for p in splits):
    empty = [p.name for p in splits if p.stat().st_size == 0]
    if empty:
      raise ValueError(f'byte-level split files are empty in {directory}: {", ".join(empty)}')
    return 'splits', splits
  raise ValueError(
      f'no enwik8 data in {directory}: expected the 100,000,000-byte file enwik8, or enwik8.zip, '
      f'or the split files {", ".join(SPLIT_FILES.values())}. {WHERE_TO_GET}.')


def read_zip(path: str | os.PathLike) -> np.ndarray:
  """The bytes of the `enwik8` member of enwik8.zip."""
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    if 'enwik8' not in names:
      raise ValueError(f'{path} holds {names[:5]}, not the member enwik8. {WHERE_TO_GET}.')
    size = zf.getinfo('enwik8').file_size
    if size != ENWIK8_BYTES:
      raise ValueError(f'enwik8 in {path} has {size:,} bytes, not {ENWIK8_BYTES:,}. '
                       f'{WHERE_TO_GET}.')
    return np.frombuffer(zf.read('enwik8'), dtype=np.uint8)


def read_splits(directory: str | os.PathLike) -> dict[str, np.ndarray]:
  """The uint8 byte stream of each split of the data in `directory` (see module docstring)."""
  kind, files = find_sources(directory)
  if kind == 'raw':
    return official_split(np.memmap(files[0], dtype=np.uint8, mode='r'))
  if kind == 'zip':
    return official_split(read_zip(files[0]))
  return {s: np.fromfile(p, dtype=np.uint8) for s, p in zip(SPLITS, files)}


def decode(ids) -> str:
  """Bytes → text (UTF-8, invalid sequences shown as U+FFFD)."""
  return bytes(np.asarray(ids, dtype=np.uint8).reshape(-1).tolist()).decode('utf-8', 'replace')


def vocab_sha256() -> str:
  return hashlib.sha256(bytes(range(VOCAB_SIZE))).hexdigest()


def _cached(read, *, sources: list[Path], cache_dir: str) -> cache.CacheEntry:
  def build():
    streams = {s: np.ascontiguousarray(a, dtype=np.uint8) for s, a in read().items()}
    return streams, {'tokens_sha256': {s: pipeline.array_sha256(streams[s]) for s in SPLITS}}

  key = cache.fingerprint(sources, version=VERSION)
  return cache.load_or_build(cache.resolve_cache_dir(cache_dir), 'enwik8', key, build)


def _from_cache(entry: cache.CacheEntry, info: dict[str, Any]) -> pipeline.TokenStreamLMData:
  info = dict(info, vocab_sha256=vocab_sha256(), tokens_sha256=entry.meta['tokens_sha256'])
  return pipeline.TokenStreamLMData(
      name='enwik8', metric='bpc', vocab_size=VOCAB_SIZE,
      streams={s: entry.arrays[s] for s in SPLITS}, start_id=START_ID, pad_id=PAD_ID,
      decode=decode, info=info, cache_hit=entry.hit,
      encode=lambda text: np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32))


def load_files(directory: str | os.PathLike, *, cache_dir: str = '') -> pipeline.TokenStreamLMData:
  """enwik8 (or another byte corpus) from `directory`, copied once into the cache."""
  kind, files = find_sources(directory)
  entry = _cached(lambda: read_splits(directory), sources=files, cache_dir=cache_dir)
  info = {'source': 'files', 'layout': kind,
          'files': {p.name: p.stat().st_size for p in files}}
  return _from_cache(entry, info)


def load_tfds(tfds_name: str = 'enwik8', *, data_dir: str = '', manual_dir: str = '',
              cache_dir: str = '') -> pipeline.TokenStreamLMData:
  """enwik8 from the TFDS builder `data/tfds_builders/enwik8.py` (byte chunks in order)."""
  from data import tfds_source  # pylint: disable=g-import-not-at-top  (TFDS is optional)
  sources, prepared_dir = tfds_source.data_sources(tfds_name, data_dir=data_dir,
                                                   manual_dir=manual_dir)

  def read():
    return {s: np.concatenate([np.asarray(r['bytes'], np.uint8).reshape(-1)
                               for r in tfds_source.iterate_records(sources[s], chunk=64)])
            for s in SPLITS}

  entry = _cached(read, sources=[prepared_dir], cache_dir=cache_dir)
  info = {'source': 'tfds', 'tfds_name': tfds_name, 'tfds_version': prepared_dir.name,
          'records': {s: len(sources[s]) for s in SPLITS}}
  return _from_cache(entry, info)
