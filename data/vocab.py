"""Word vocabularies with fairseq's conventions: specials first, then words by frequency.

fairseq (`fairseq/data/dictionary.py`, `fairseq-preprocess`) builds a language-modelling
vocabulary as follows, and this module keeps the same ids so that numbers and adaptive-softmax
cutoffs carry over:

* the specials come first: `<s>` = 0, `<pad>` = 1, `</s>` = 2, `<unk>` = 3;
* then every word of the *training* text, by descending count; ties are broken by the word's
  (Unicode code point) order, which is what `Dictionary.finalize` does by sorting the words before
  `Counter.most_common`. Frequency-sorted ids are what adaptive input/softmax cutoffs assume
  (Grave et al. 2017; Baevski & Auli 2019);
* the literal specials in the text (WikiText writes unknown words as `<unk>`) map to the special
  ids and are never words of their own;
* the vocabulary is padded with `madeupword0000`, `madeupword0001`, … to a multiple of
  `padding_factor` (fairseq default 8). WikiText-103 thus has 267,735 types in its training text
  (one of them `<unk>`), 267,738 symbols with the specials and 267,744 after padding — the
  "dictionary: 267744 types" that fairseq-preprocess prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import hashlib

import numpy as np

BOS = '<s>'
PAD = '<pad>'
EOS = '</s>'
UNK = '<unk>'
SPECIALS = (BOS, PAD, EOS, UNK)
BOS_ID, PAD_ID, EOS_ID, UNK_ID = range(4)
MADEUP_WORD = 'madeupword{:04d}'


class FairseqSpecialIds:
  """fairseq's special ids, shared by every vocabulary of the project (dictionaries and
  sentencepiece models alike): `<s>` = 0, `<pad>` = 1, `</s>` = 2, `<unk>` = 3."""

  @property
  def bos_id(self) -> int:
    return BOS_ID

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def unk_id(self) -> int:
    return UNK_ID


class Vocabulary(FairseqSpecialIds):
  """An id ↔ symbol table whose first four symbols are fairseq's specials."""

  def __init__(self, symbols: Sequence[str]):
    if tuple(symbols[:len(SPECIALS)]) != SPECIALS:
      raise ValueError(
          f'a vocabulary must start with the specials {SPECIALS}; got {tuple(symbols[:4])}')
    self.symbols: list[str] = list(symbols)
    self.index: dict[str, int] = {s: i for i, s in enumerate(self.symbols)}
    if len(self.index) != len(self.symbols):
      raise ValueError('a vocabulary may not list a symbol twice')

  def __len__(self) -> int:
    return len(self.symbols)

  def __eq__(self, other) -> bool:
    return isinstance(other, Vocabulary) and self.symbols == other.symbols

  def __repr__(self) -> str:
    return f'Vocabulary({len(self)} symbols, sha256={self.sha256()[:12]})'

  def sha256(self) -> str:
    """Hex digest of the symbols in id order: two vocabularies with the same digest agree."""
    return hashlib.sha256('\n'.join(self.symbols).encode('utf-8')).hexdigest()

  @classmethod
  def from_counts(cls, counts: dict[str, int], *, padding_factor: int = 8) -> Vocabulary:
    """Builds the fairseq ordering from word counts (specials in `counts` are ignored)."""
    if padding_factor < 1:
      raise ValueError(f'padding_factor must be ≥ 1, got {padding_factor}')
    words = sorted((w for w in counts if w not in SPECIALS), key=lambda w: (-counts[w], w))
    symbols = list(SPECIALS) + words
    # fairseq's Dictionary.pad_to_multiple_.
    while len(symbols) % padding_factor:
      symbols.append(MADEUP_WORD.format(len(symbols) - len(SPECIALS) - len(words)))
    return cls(symbols)

  @classmethod
  def from_lines(cls, lines: Iterable[str], *, padding_factor: int = 8) -> Vocabulary:
    """Counts the whitespace-separated words of `lines` (e.g. one WikiText split)."""
    counts: dict[str, int] = {}
    for line in lines:
      for word in line.split():
        counts[word] = counts.get(word, 0) + 1
    return cls.from_counts(counts, padding_factor=padding_factor)

  def encode_lines(self, lines: Iterable[str], *, chunk_lines: int = 20_000) -> np.ndarray:
    """Tokenizes lines into one int32 stream, `</s>` after every line (fairseq-preprocess).

    Words outside the vocabulary (and the literal `<unk>`) become the unknown id. The stream is
    assembled from chunks so that a 100M-token file never lives as one Python list.
    """
    get, unk, eos = self.index.get, UNK_ID, EOS_ID
    chunks, ids, n_lines = [], [], 0
    for line in lines:
      ids.extend([get(w, unk) for w in line.split()])
      ids.append(eos)
      n_lines += 1
      if n_lines % chunk_lines == 0:
        chunks.append(np.asarray(ids, dtype=np.int32))
        ids = []
    chunks.append(np.asarray(ids, dtype=np.int32))
    return np.concatenate(chunks)

  def decode(self, ids: Iterable[int]) -> str:
    """Space-joined symbols, with each `</s>` shown as a line break."""
    lines, words = [], []
    for i in np.asarray(ids).reshape(-1).tolist():
      if i == EOS_ID:
        lines.append(' '.join(words))
        words = []
      else:
        words.append(self.symbols[i] if 0 <= i < len(self.symbols) else f'<id {i}?>')
    return '\n'.join(lines + [' '.join(words)])


def build_and_encode(lines: Iterable[str], *, padding_factor: int = 8,
                     chunk_lines: int = 20_000) -> tuple[Vocabulary, np.ndarray]:
  """Builds the vocabulary of `lines` and encodes them, in a single pass over the text.

  Words get provisional ids in order of first appearance while the stream is written; the counts
  then fix the final (frequency-sorted) ids and one table lookup renumbers the stream. This reads
  a large training file (WikiText-103: 540 MB) once instead of twice.

  Returns:
    The vocabulary and the encoded int32 stream (`</s>` after each line), exactly what
    `Vocabulary.from_lines(lines).encode_lines(lines)` would give.
  """
  provisional: dict[str, int] = {s: i for i, s in enumerate(SPECIALS)}
  setdefault = provisional.setdefault
  chunks, ids, n_lines = [], [], 0
  for line in lines:
    ids.extend([setdefault(w, len(provisional)) for w in line.split()])
    ids.append(EOS_ID)
    n_lines += 1
    if n_lines % chunk_lines == 0:
      chunks.append(np.asarray(ids, dtype=np.int32))
      ids = []
  chunks.append(np.asarray(ids, dtype=np.int32))
  stream = np.concatenate(chunks)
  counts = np.bincount(stream, minlength=len(provisional))
  words = list(provisional)  # insertion order = provisional id
  vocab = Vocabulary.from_counts(
      {w: int(counts[i]) for i, w in enumerate(words) if i >= len(SPECIALS)},
      padding_factor=padding_factor)
  renumber = np.array([vocab.index[w] for w in words], dtype=np.int32)
  return vocab, renumber[stream]
