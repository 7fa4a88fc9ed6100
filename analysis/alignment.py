"""Word alignments from cross-attention, scored by AER: `aer(hypotheses, read_talp(gold_path))`.

Kobayashi et al. 2020 ("Attention is Not Only a Weight: Analyzing Transformers with Vector Norms",
arXiv:2004.10102, §5) read a hard word alignment off each cross-attention matrix (weights or
vector norms) of a translation model and score it against the RWTH German–English gold alignment
(Vilar et al. 2006) with the alignment error rate of Och & Ney 2003 ("A Systematic Comparison of
Various Statistical Alignment Models"). The rules here are those of the paper's released code:

* Matrix: one sentence, rows = decoder steps, columns = source positions. The decoder input is
  `</s>` followed by the target subwords, so there are (target subwords + 1) rows, the last one
  predicting `</s>`; the columns are the source subwords then the source `</s>`.
* AWO, "alignment with output": row t is the step that predicts target subword t; rows are used
  as they are. AWI, "alignment with input": row t + 1 is the step whose decoder input is target
  subword t, so the rows are rotated, `M[[1, …, T−1, 0]]` (`awi_shift`). AWI is the idea of
  Shift-Att (Chen et al. 2020, "Accurate Word Alignment Induction from Neural Machine
  Translation", arXiv:2004.14837). The rotation acts on the subword matrix, before the merge.
* Merge to words (`word_level_matrix`): sum a source word's subword columns, average a target
  word's subword rows, keep the source `</s>` column as the last column, drop the last row.
* Hard alignment (`hard_alignment`): for each target word the argmax over the columns (first on
  ties); no link when it is the `</s>` column. At most one link per target word.
* AER, corpus level (`aer`): with hypothesis A, sure S and possible P ⊇ S, summed over all
  sentences, AER = 1 − (|A∩S| + |A∩P|) / (|A| + |S|), precision |A∩P|/|A|, recall |A∩S|/|S|.

Links are (source word, target word) pairs of 0-based indices throughout. Files: talp gold lines
hold 1-based `i-j` (sure) and `ipj` (possible) links; Pharaoh lines (fast_align, eflomal) hold
0-based `i-j` links. One line per sentence; an empty line is a sentence with no links, except a
single blank line at the end of the file (the RWTH files end with one), which is no sentence.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

Link = tuple[int, int]  # (source word, target word), 0-based
Gold = tuple[set[Link], set[Link]]  # (sure, possible) of one sentence; possible ⊇ sure

SETTINGS = ('AWO', 'AWI')
SUBWORD_SCHEMES = ('sentencepiece', 'bpe')
WORD_START = '\u2581'  # "▁", sentencepiece's mark for a piece that begins a word
BPE_CONTINUES = '@@'  # subword-nmt / fairseq: a token ending so continues into the next one

_TALP_LINK = re.compile(r'(\d+)([-p])(\d+)')
_PHARAOH_LINK = re.compile(r'(\d+)-(\d+)')


def _read_lines(path: str | Path, expected_sentences: int | None, encoding: str) -> list[str]:
  """The file's sentence lines: without the final newline, and one trailing blank line."""
  try:
    text = Path(path).read_text(encoding=encoding)
  except UnicodeDecodeError as e:
    raise ValueError(f'{path} is not {encoding} text (byte {e.start}); the RWTH originals are '
                     f'Latin-1: pass encoding="latin-1" or read the UTF-8 copies') from None
  lines = text.split('\n')
  if lines[-1] == '':
    lines.pop()
  if expected_sentences is not None and len(lines) == expected_sentences:
    return lines  # the last sentence may be empty
  if lines and not lines[-1].strip():
    lines.pop()
  if expected_sentences is not None and len(lines) != expected_sentences:
    raise ValueError(f'{path} has {len(lines)} sentences, expected {expected_sentences}')
  return lines


def read_sentences(path: str | Path, expected_sentences: int | None = None, *,
                   encoding: str = 'utf-8') -> list[list[str]]:
  """Whitespace-tokenized sentences, one per line (raises ValueError on undecodable bytes)."""
  return [line.split() for line in _read_lines(path, expected_sentences, encoding)]


def read_talp(path: str | Path, expected_sentences: int | None = None) -> list[Gold]:
  """Gold (sure, possible) links per sentence from 1-based `i-j` / `ipj` lines; possible ⊇ sure."""
  gold = []
  for number, line in enumerate(_read_lines(path, expected_sentences, 'utf-8'), start=1):
    sure, possible = set(), set()
    for token in line.split():
      match = _TALP_LINK.fullmatch(token)
      if not match or match[1] == '0' or match[3] == '0':
        raise ValueError(f'{path}:{number}: bad link {token!r}; expected i-j (sure) or ipj '
                         '(possible) with 1-based source and target word numbers')
      link = (int(match[1]) - 1, int(match[3]) - 1)
      possible.add(link)
      if match[2] == '-':
        sure.add(link)
    gold.append((sure, possible))
  return gold


def read_pharaoh(path: str | Path, expected_sentences: int | None = None) -> list[set[Link]]:
  """Links per sentence from Pharaoh lines of 0-based `i-j`.

  Pass `expected_sentences` when the last sentence may have no links: without it, a final empty
  line reads as the trailing blank line, not as a sentence.
  """
  alignments = []
  for number, line in enumerate(_read_lines(path, expected_sentences, 'utf-8'), start=1):
    links = set()
    for token in line.split():
      match = _PHARAOH_LINK.fullmatch(token)
      if not match:
        raise ValueError(f'{path}:{number}: bad link {token!r}; expected i-j with 0-based '
                         'source and target word indices')
      links.add((int(match[1]), int(match[2])))
    alignments.append(links)
  return alignments


def format_pharaoh(links: Iterable[Link]) -> str:
  """One Pharaoh line: the links sorted, `i-j` 0-based, separated by spaces."""
  return ' '.join(f'{i}-{j}' for i, j in sorted(links))


def write_pharaoh(path: str | Path, alignments: Iterable[Iterable[Link]]) -> None:
  """Write one Pharaoh line per sentence (an empty line for a sentence with no links)."""
  Path(path).write_text(''.join(format_pharaoh(links) + '\n' for links in alignments),
                        encoding='utf-8')


def check_gold(sources: Sequence[Sequence[str]], targets: Sequence[Sequence[str]],
               gold: Sequence[Gold], *,
               names: tuple[str, str, str] = ('the source', 'the target', 'the gold')) -> None:
  """Raise ValueError unless the three corpora are parallel and every gold link fits its sentence.

  `names` (source, target, gold) name the files in the messages; links are shown as the talp file
  writes them (1-based, `p` for possible-only).
  """
  source_name, target_name, gold_name = names
  for name, corpus in ((source_name, sources), (target_name, targets)):
    if len(gold) != len(corpus):
      raise ValueError(f'{gold_name} has {len(gold)} sentences but {name} has {len(corpus)}; '
                       'they must be parallel, one sentence per line')
  for number, (source, target, (sure, possible)) in enumerate(zip(sources, targets, gold), 1):
    for i, j in sorted(possible | sure):
      if not (0 <= i < len(source) and 0 <= j < len(target)):
        written = f'{i + 1}{"-" if (i, j) in sure else "p"}{j + 1}'
        raise ValueError(f'{gold_name} sentence {number}: link {written} lies outside the '
                         f'sentence (source has {len(source)} words, target {len(target)})')


def word_ids_sentencepiece(pieces: Sequence[str]) -> list[int]:
  """For each sentencepiece piece, its word: a piece starting with "▁" begins a new word.

  The first piece begins word 0 with or without "▁" (models trained with
  `--add_dummy_prefix=0`, as in the paper, omit it). A lone "▁" begins the word that the
  following pieces continue.
  """
  ids, word = [], -1
  for k, piece in enumerate(pieces):
    if k == 0 or piece.startswith(WORD_START):
      word += 1
    ids.append(word)
  return ids


def word_ids_bpe(tokens: Sequence[str]) -> list[int]:
  """For each subword-nmt / fairseq BPE token, its word: a token ending in "@@" continues."""
  ids, word = [], -1
  for k, token in enumerate(tokens):
    if k == 0 or not tokens[k - 1].endswith(BPE_CONTINUES):
      word += 1
    ids.append(word)
  return ids


def subword_word_ids(pieces: Sequence[str], words: Sequence[str], *, scheme: str, sentence: int,
                     compare_text: bool = True) -> list[int]:
  """Each subword's word index, checked against the sentence's whitespace words.

  Raises ValueError naming `sentence` (1-based) when the subwords make a different number of
  words or, with `compare_text`, when a word's subwords do not join to its text. Turn
  `compare_text` off only where the segmenter normalizes text (case, NFKC, `<unk>`).
  """
  if scheme not in SUBWORD_SCHEMES:
    raise ValueError(f'unknown subword scheme {scheme!r}; known: {", ".join(SUBWORD_SCHEMES)}')
  ids = word_ids_sentencepiece(pieces) if scheme == 'sentencepiece' else word_ids_bpe(pieces)
  made = ids[-1] + 1 if ids else 0
  if made != len(words):
    raise ValueError(f'sentence {sentence}: the {len(pieces)} subwords make {made} words but the '
                     f'sentence has {len(words)}; the subword and word files must tokenize the '
                     'same text')
  if compare_text:
    joined = [''] * made
    for piece, word in zip(pieces, ids):
      joined[word] += (piece.replace(WORD_START, '') if scheme == 'sentencepiece'
                       else piece.removesuffix(BPE_CONTINUES))
    for k, (text, word) in enumerate(zip(joined, words)):
      if text != word:
        raise ValueError(f'sentence {sentence}: word {k + 1} is {word!r} but its subwords join '
                         f'to {text!r}; pass compare_text=False if the segmenter normalizes text')
  return ids


def _grouping(word_ids: Sequence[int], name: str) -> tuple[np.ndarray, int]:
  ids = np.asarray(word_ids, dtype=np.int64).reshape(-1)
  if ids.size and (ids[0] != 0 or not np.isin(np.diff(ids), (0, 1)).all()):
    raise ValueError(f'{name} must count words from 0 in order, each subword with the same or '
                     f'the next word index; got {list(ids)}')
  return ids, int(ids[-1]) + 1 if ids.size else 0


def word_level_matrix(matrix: np.ndarray, src_word_ids: Sequence[int],
                      tgt_word_ids: Sequence[int]) -> np.ndarray:
  """Merge one sentence's subword matrix into words: [T_words, S_words + 1], float64.

  `matrix: [len(tgt_word_ids) + 1, len(src_word_ids) + 1]`: rows are the decoder steps, the target
  subwords then the step that predicts `</s>` (after `awi_shift` for AWI); columns are the source
  subwords then the source `</s>`. A source word's columns are summed, a target word's rows are
  averaged, the last row is dropped and the `</s>` column stays as the last column.
  """
  m = np.asarray(matrix, dtype=np.float64)
  src, n_src = _grouping(src_word_ids, 'src_word_ids')
  tgt, n_tgt = _grouping(tgt_word_ids, 'tgt_word_ids')
  if m.shape != (tgt.size + 1, src.size + 1):
    raise ValueError(f'attention matrix has shape {m.shape}, expected ({tgt.size + 1}, '
                     f'{src.size + 1}): rows = {tgt.size} target subwords + </s>, columns = '
                     f'{src.size} source subwords + </s>')
  sum_cols = np.zeros((src.size + 1, n_src + 1))
  sum_cols[np.arange(src.size), src] = 1.0
  sum_cols[src.size, n_src] = 1.0  # </s> stays a column of its own
  mean_rows = np.zeros((n_tgt, tgt.size + 1))  # the last column, the </s> row, stays 0: dropped
  mean_rows[tgt, np.arange(tgt.size)] = 1.0
  mean_rows /= np.maximum(mean_rows.sum(axis=1, keepdims=True), 1.0)
  return mean_rows @ m @ sum_cols


def awi_shift(matrix: np.ndarray) -> np.ndarray:
  """AWI rows from a subword matrix, `M[[1, …, T−1, 0]]`: row t becomes the step fed subword t.

  Apply to the subword matrix with its `</s>` row, before `word_level_matrix`; the step fed the
  initial `</s>` moves to the last row, which the merge drops. AWO uses the matrix as it is.
  """
  m = np.asarray(matrix)
  if m.ndim != 2 or m.shape[0] == 0:
    raise ValueError(f'awi_shift needs a [decoder steps, source positions] matrix; got shape '
                     f'{m.shape}')
  return np.roll(m, -1, axis=0)


def hard_alignment(word_matrix: np.ndarray) -> set[Link]:
  """Links (source, target): each target word's argmax column, none where it is `</s>` (last)."""
  m = np.asarray(word_matrix)
  if m.ndim != 2 or m.shape[1] == 0:
    raise ValueError(f'hard_alignment needs a [target words, source words + </s>] matrix; got '
                     f'shape {m.shape}')
  eos = m.shape[1] - 1
  return {(int(s), t) for t, s in enumerate(np.argmax(m, axis=1)) if s != eos}


def extract_alignment(matrix: np.ndarray, src_word_ids: Sequence[int],
                      tgt_word_ids: Sequence[int], setting: str = 'AWO') -> set[Link]:
  """One sentence's word links from its subword matrix: shift (AWI), merge, argmax."""
  if setting not in SETTINGS:
    raise ValueError(f'unknown alignment setting {setting!r}; known: {", ".join(SETTINGS)}')
  if setting == 'AWI':
    matrix = awi_shift(matrix)
  return hard_alignment(word_level_matrix(matrix, src_word_ids, tgt_word_ids))


@dataclasses.dataclass(frozen=True)
class AlignmentScores:
  """Corpus AER, precision and recall with the link counts they come from.

  With no hypothesis link at all, precision is 0 (nothing proposed, nothing right) and AER is 1.
  """
  aer: float
  precision: float
  recall: float
  hypothesis_links: int  # |A|
  sure_links: int  # |S|
  sure_hits: int  # |A ∩ S|
  possible_hits: int  # |A ∩ P|


def aer(hypotheses: Sequence[Iterable[Link]], golds: Sequence[Gold]) -> AlignmentScores:
  """Corpus-level AER of Och & Ney 2003: counts summed over sentences, then one ratio.

  `golds` are (sure, possible) per sentence as `read_talp` returns them; sure links count as
  possible even if `possible` leaves them out. Raises ValueError when the counts of sentences
  differ or the gold has no sure link (recall and AER would be undefined).
  """
  if len(hypotheses) != len(golds):
    raise ValueError(f'got {len(hypotheses)} hypothesis sentences but {len(golds)} gold '
                     'sentences; AER needs one hypothesis per gold sentence, line by line')
  a = s = a_s = a_p = 0
  for links, (sure, possible) in zip(hypotheses, golds):
    links = set(links)
    a, s = a + len(links), s + len(sure)
    a_s += len(links & set(sure))
    a_p += len(links & (set(possible) | set(sure)))
  if s == 0:
    raise ValueError('the gold alignment has no sure links; AER and recall need at least one')
  return AlignmentScores(aer=1.0 - (a_s + a_p) / (a + s), precision=a_p / a if a else 0.0,
                         recall=a_s / s, hypothesis_links=a, sure_links=s, sure_hits=a_s,
                         possible_hits=a_p)
