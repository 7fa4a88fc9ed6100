"""WikiText (Merity et al. 2016, "Pointer Sentinel Mixture Models"), word level, read as fairseq.

fairseq's language-modelling recipe (examples/language_model/README.md: `fairseq-preprocess
--only-source --trainpref wiki.train.tokens …`, then `fairseq-train --task language_modeling`)
fixes what a "token" is, and the published perplexities depend on it:

* every line of a split, empty ones included, is split on whitespace and followed by the
  end-of-sentence symbol `</s>` (`fairseq/binarizer.py` with `append_eos=True`);
* the vocabulary comes from the training split only (`data/vocab.py`: specials, then words by
  frequency); the text's own `<unk>` is the unknown symbol, and validation/test words outside the
  vocabulary become `<unk>`;
* the splits are read as one stream each; training cuts it into blocks, evaluation scores it
  in `--context-window` windows (`data/pipeline.py`).

With these rules the WikiText-103 test split has 245,569 tokens and validation 217,646, the counts
fairseq prints (`eval_lm`: "Evaluated 245569 tokens"); WikiText-2 shares those two files' token
counts. Files are found under the official names `wiki.{train,valid,test}.tokens` or as
`train.txt`, `valid.txt`, `test.txt`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
import os
from pathlib import Path
from typing import Any

import numpy as np

from data import cache
from data import pipeline
from data import vocab as vocab_lib

# Bump when tokenization changes: it is part of every cache key.
TOKENIZER_VERSION = 'wikitext-fairseq-v1'
SPLITS = pipeline.SPLITS
FILE_NAMES = {split: (f'wiki.{split}.tokens', f'{split}.txt') for split in SPLITS}
OFFICIAL_ZIP = 'wikitext-103-v1.zip'
DOWNLOAD_URL = 'https://wikitext.smerity.com/wikitext-103-v1.zip'
ORIGINAL_URL = 'https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip'
WHERE_TO_GET = (
    f'Download the Salesforce research release {OFFICIAL_ZIP} (WikiText-103) or '
    f'wikitext-2-v1.zip from {DOWNLOAD_URL.rsplit("/", 1)[0]}/ (originally {ORIGINAL_URL}), '
    f'unzip it, and point data.dir at the folder holding the .tokens files')


def split_files(directory: str | os.PathLike) -> dict[str, Path]:
  """The file of each split in `directory`, under either naming scheme.

  Raises:
    ValueError: a split's file is missing or empty; the message names both schemes and where to
      download the data.
  """
  directory = Path(directory)
  found, problems = {}, []
  for split, names in FILE_NAMES.items():
    candidates = [directory / name for name in names]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
      problems.append(f'{split}: none of {", ".join(names)}')
    elif path.stat().st_size == 0:
      problems.append(f'{split}: {path} is empty')
    else:
      found[split] = path
  if problems:
    expected = '; '.join(f'{" or ".join(n)}' for n in FILE_NAMES.values())
    raise ValueError(
        f'WikiText files missing or empty in {directory} ({"; ".join(problems)}). Expected '
        f'{expected}. {WHERE_TO_GET}.')
  return found


def read_lines(path: str | os.PathLike) -> Iterator[str]:
  """The lines of a UTF-8 text file, as fairseq reads them (universal newlines)."""
  with open(path, encoding='utf-8') as f:
    yield from f


def count_tokens(lines: Iterable[str]) -> int:
  """Tokens fairseq would make of `lines`: words plus one `</s>` per line. Needs no vocabulary.

  `count_tokens(read_lines('wiki.test.tokens'))` is 245,569 for WikiText-103.
  """
  return sum(len(line.split()) + 1 for line in lines)


def tokenize_splits(lines: dict[str, Callable[[], Iterable[str]]], *, padding_factor: int = 8
                    ) -> tuple[vocab_lib.Vocabulary, dict[str, np.ndarray]]:
  """Builds the vocabulary from the train lines and encodes every split.

  Args:
    lines: split → a function returning that split's lines (called once).
    padding_factor: pad the vocabulary size to a multiple of this (fairseq default 8).

  Returns:
    (vocabulary, split → int32 token stream).
  """
  vocab, train = vocab_lib.build_and_encode(lines['train'](), padding_factor=padding_factor)
  streams = {'train': train}
  for split in SPLITS:
    if split != 'train':
      streams[split] = vocab.encode_lines(lines[split]())
  return vocab, streams


def _from_cache(entry: cache.CacheEntry, info: dict[str, Any]) -> pipeline.TokenStreamLMData:
  vocab = vocab_lib.Vocabulary(entry.meta['symbols'])
  info = dict(info, vocab_sha256=entry.meta['vocab_sha256'],
              tokens_sha256=entry.meta['tokens_sha256'],
              padding_factor=entry.meta['padding_factor'])
  return pipeline.TokenStreamLMData(
      name='wikitext', metric='perplexity', vocab_size=len(vocab),
      streams={s: entry.arrays[s] for s in SPLITS}, start_id=vocab.eos_id, pad_id=vocab.pad_id,
      decode=vocab.decode, info=info, cache_hit=entry.hit,
      encode=lambda line: vocab.encode_lines([line]), symbols=vocab.symbols)


def _cached_tokenization(lines: dict[str, Callable[[], Iterable[str]]], *, sources: list[Path],
                         cache_dir: str, padding_factor: int) -> cache.CacheEntry:
  def build():
    vocab, streams = tokenize_splits(lines, padding_factor=padding_factor)
    meta = {
        'symbols': vocab.symbols,
        'vocab_sha256': vocab.sha256(),
        'tokens_sha256': {s: pipeline.array_sha256(streams[s]) for s in SPLITS},
        'padding_factor': padding_factor,
    }
    return streams, meta

  key = cache.fingerprint(sources, version=TOKENIZER_VERSION, padding_factor=padding_factor)
  return cache.load_or_build(cache.resolve_cache_dir(cache_dir), 'wikitext', key, build)


def load_files(directory: str | os.PathLike, *, cache_dir: str = '',
               padding_factor: int = 8) -> pipeline.TokenStreamLMData:
  """WikiText from the split files in `directory` (tokenized once, then cached)."""
  files = split_files(directory)
  entry = _cached_tokenization(
      {s: (lambda p=p: read_lines(p)) for s, p in files.items()}, sources=list(files.values()),
      cache_dir=cache_dir, padding_factor=padding_factor)
  info = {'source': 'files',
          'files': {s: {'name': p.name, 'bytes': p.stat().st_size} for s, p in files.items()}}
  return _from_cache(entry, info)


def load_tfds(tfds_name: str = 'wikitext103', *, data_dir: str = '', manual_dir: str = '',
              cache_dir: str = '', padding_factor: int = 8) -> pipeline.TokenStreamLMData:
  """WikiText from the TFDS builder `data/tfds_builders/wikitext103.py` (one record per line)."""
  from data import tfds_source  # pylint: disable=g-import-not-at-top  (TFDS is optional)
  sources, prepared_dir = tfds_source.data_sources(tfds_name, data_dir=data_dir,
                                                   manual_dir=manual_dir)

  def lines_of(split):
    return (record['text'].decode('utf-8')
            for record in tfds_source.iterate_records(sources[split]))

  entry = _cached_tokenization({s: (lambda s=s: lines_of(s)) for s in SPLITS},
                               sources=[prepared_dir], cache_dir=cache_dir,
                               padding_factor=padding_factor)
  info = {'source': 'tfds', 'tfds_name': tfds_name, 'tfds_version': prepared_dir.name,
          'records': {s: len(sources[s]) for s in SPLITS}}
  return _from_cache(entry, info)
