"""Translation data: parallel text → fairseq dictionaries or sentencepiece → token-budget batches.

The trainer and eval.py use:

    data = build_translation_data(config.data, max_positions=config.model.max_len)
    it = data.train_iterator(max_tokens=config.data.max_tokens, seed=config.seed,
                             row_multiple=num_devices, num_micro=grad_accum_steps)
    batch = next(it)    # 'source', 'target_in', 'targets', 'weights'; it.get_state()/set_state()
    for batch in data.eval_batches('valid', max_tokens=…):    # the same keys, plus 'ids'
      hypotheses = [data.postprocess(row) for row in decoded]  # compare: data.references('valid')

**Where the text comes from** (`translation_data_config(name)` gives the `config.data` block):
* `source='files'`: `dir` holds parallel text, one sentence per line, UTF-8. `train`, `valid`
  and `test` are tuples of entries, concatenated in order; an entry is one of
    'train'                                   a prefix P: the files P.<src_lang>, P.<tgt_lang>
    'en=sample/src-train.en.tok,de=sample/tgt-train.de.tok'
                                              an explicit pair, one path per language
    'moses:<either form>'                     Moses-tokenized text, detokenized on load with
                                              sacremoses (`&apos;` etc. unescaped), so that a
                                              sentencepiece model sees raw text everywhere
  with paths relative to `dir`. Lines are split at '\\n' only (as `wc -l` counts them: a stray
  '\\r' must not shift one side of a parallel corpus) and stripped of surrounding whitespace.
* `source='tfds'`: `tfds_name` (`wmt14_translate/de-en`, data/wmt14.py; or the project's
  `iwslt14` builder), records with one text feature per language, read without TensorFlow.
* `name='synthetic_alignment'`: files too, generated on first use from `data.synthetic` into
  `dir` (or, when `dir` is empty, the data cache) by data/synthetic_alignment.py, with a gold
  word alignment beside each split.

**Vocabularies** (`vocab`), all with fairseq's specials `<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3:
* 'separate': `fairseq-preprocess` without `--joined-dictionary` (the IWSLT14 recipe): one
  dictionary per language from its training text: tokens by descending count, padded with
  `madeupword` entries to a multiple of `padding_factor` (data/vocab.py);
* 'joined': one such dictionary over both languages' training text (`--joined-dictionary`);
* 'sentencepiece': one sentencepiece model trained on both languages' training text (WMT14;
  data/wmt14.py), cached under a key of that text and the options.
`src_dict` / `tgt_dict` (fairseq `dict.<lang>.txt`, as `--srcdict` / `--tgtdict`) and
`spm_model` give a vocabulary instead of building one.

**Examples.** A sentence is its token ids followed by `</s>` (fairseq's `append_eos`), for the
source and the target. The decoder input `target_in` is fairseq's `prev_output_tokens`: `</s>`,
then the target without its final `</s>`; fairseq starts decoding from `</s>`, not `<s>`, and
`TranslationData.bos_id` is that start symbol (= `eos_id`). Sequences are padded on the right.

**Lengths.** A pair fits when its source (with `</s>`) has at most `max_source_positions`
tokens and its target at most `max_target_positions` (fairseq `filter_by_size`; -1 = the
model's `max_positions`, else fairseq's 1024). Training leaves out the pairs that do not fit,
counted and logged, as fairseq's training iterator does. A validation or test sentence that does
not fit is an error naming it (a test set is never silently shortened), unless
`skip_invalid_size` (fairseq `--skip-invalid-size-inputs-valid-test`): then it is left out of
that split everywhere (`sources`, `references`, `eval_batches`) and counted in `describe()`.

**Batches** (fairseq `data_utils.batch_by_size` under `--max-tokens`, made friendly to `jit`):
a pair's bucket length is L = max(source, target length) rounded up to a multiple of
`length_bucket`. A batch holds pairs of one bucket, padded to S = min(L, max_source_positions)
and T = min(L, max_target_positions), in B rows with B·L ≤ max_tokens (fairseq's budget: rows ×
the longer side) and B a multiple of `row_multiple`; B depends on the bucket alone, so each bucket
is one compiled shape. A bucket with few pairs gets fewer rows (enough for one step), not padding.
Each training epoch draws a permutation from a seed derived from (seed, epoch), groups the pairs
by bucket in that order, cuts each bucket into batches and shuffles the batches. fairseq sorts by
length and fixes the batches once, shuffling only their order; since every batch of a bucket
has the same padded shape, regrouping each epoch costs nothing here and varies the batches.
With `num_micro` micro-batches per step (gradient accumulation) the rows of one item are
num_micro × B, all of one bucket. Rows added to fill a batch have weight 0 and `ids` -1.

**Text for BLEU** (`text_level`): 'tokenized' for fairseq dictionaries (BPE removed as
`fairseq-generate --remove-bpe`: "@@ " deleted; IWSLT14 BLEU is computed on this tokenized,
lowercased text) and 'raw' for sentencepiece (decoded, detokenized text, for sacreBLEU).
`references(split)` is read from the text itself, so words outside the vocabulary stay words;
`fairseq-generate` instead scores against the binarized references, where they print as
`<<unk>>`; with BPE such tokens are rare, but each one can make the two BLEUs differ.

**Cache.** Encoded splits are flat int32 token arrays with int64 offsets (4.5M WMT14 pairs
encode in chunks and load memory-mapped), stored by data/cache.py under a key of the source
files, the entries, the languages and the vocabulary options; the first build also records
each file's line count and SHA-256, which `describe()` reports.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
import dataclasses
import hashlib
import itertools
import logging
import os
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from data import cache
from data import synthetic_alignment
from data import vocab as vocab_lib
from data import wmt14
from data.pipeline import array_sha256
from data.pipeline import canonical_split
from data.pipeline import describe_fingerprint
from data.pipeline import SPLITS

Batch = dict[str, np.ndarray]
NAMES = ('iwslt14', 'wmt14', synthetic_alignment.NAME)
SOURCES = ('files', 'tfds')
VOCAB_KINDS = ('separate', 'joined', 'sentencepiece')
MOSES_PREFIX = 'moses:'
DEFAULT_MAX_POSITIONS = 1024  # fairseq transformer's max_source_positions / max_target_positions
# Bump when reading or encoding changes: it is part of every cache key.
ENCODER_VERSION = 'translation-v1'
_HOW_TO_GET = {
    'iwslt14': 'data/iwslt14.py prepares {train,valid,test}.{de,en} with fairseq\'s '
               'prepare-iwslt14.sh steps (Moses tokenization, lowercasing, joint BPE of 10k '
               'merges); point data.dir at that folder',
    'wmt14': f'the full corpus is data.source=tfds ({wmt14.TFDS_NAME}); offline, data.dir '
             f'{wmt14.DEFAULT_DIR} has newstest2008–2014 and a 10k-pair sample',
    synthetic_alignment.NAME: 'data/synthetic_alignment.py generates it when data.dir is missing '
                              'or empty; delete a damaged folder to generate it again',
}


def translation_data_config(name: str) -> ml_collections.ConfigDict:
  """The default `config.data` block for task `name` ∈ {'iwslt14', 'wmt14',
  'synthetic_alignment'}."""
  if name not in NAMES:
    raise ValueError(f'unknown translation data name {name!r}; known: {", ".join(NAMES)}')
  iwslt = name == 'iwslt14'
  c = ml_collections.ConfigDict()
  c.name = name
  c.source = 'files'            # files | tfds
  # Folder of the split files. A relative path is taken from the working directory, else from
  # the project root (so '../shared/data/…' works).
  c.dir = '../shared/data/iwslt14-de-en/bpe10k' if iwslt else wmt14.DEFAULT_DIR
  c.src_lang, c.tgt_lang = ('de', 'en') if iwslt else ('en', 'de')
  # Entries relative to dir, concatenated: 'P' = P.<src_lang> + P.<tgt_lang>;
  # '<lang>=path,<lang>=path' = an explicit pair; a 'moses:' prefix = Moses-tokenized text,
  # detokenized on load. WMT14's defaults are the offline miniature (data/wmt14.py).
  c.train = ('train',) if iwslt else wmt14.OFFLINE_TRAIN
  c.valid = ('valid',) if iwslt else wmt14.OFFLINE_VALID
  c.test = ('test',) if iwslt else wmt14.OFFLINE_TEST
  c.tfds_name = 'iwslt14' if iwslt else wmt14.TFDS_NAME  # features: one text per language
  c.tfds_data_dir = ''          # '' = TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
  c.tfds_manual_dir = ''        # official files for preparing offline ('' = download)
  c.cache_dir = ''              # '' = as for the LM data (data/cache.py)
  c.padding_factor = 8          # fairseq dictionaries padded to a multiple of this
  c.vocab = 'separate' if iwslt else 'sentencepiece'   # separate | joined | sentencepiece
  c.src_dict = ''               # fairseq dict.<src_lang>.txt to use ('' = build from train)
  c.tgt_dict = ''               # fairseq dict.<tgt_lang>.txt ('' = build from train)
  c.spm_model = ''              # sentencepiece .model to use ('' = train one, cached)
  c.spm_vocab_size = 32000      # pieces of a trained model, specials included
  c.spm_model_type = 'bpe'      # bpe | unigram
  c.spm_input_sentence_size = 2_000_000  # sentences sampled to train it (0 = all)
  c.max_source_positions = -1   # longest source incl. </s>; -1 = model's max_len (else 1024)
  c.max_target_positions = -1   # longest target incl. </s>; -1 = model's max_len (else 1024)
  c.skip_invalid_size = False   # valid/test: leave out (and count) too-long pairs, not an error
  c.length_bucket = 8           # padded lengths are multiples of this (one shape per bucket)
  c.max_tokens = 4096           # fairseq --max-tokens: rows × max(S, T) per micro-batch
  if name == synthetic_alignment.NAME:  # generated text (data/synthetic_alignment.py)
    c.dir = ''                  # '' = a folder in the data cache, keyed by data.synthetic
    c.src_lang, c.tgt_lang = synthetic_alignment.SRC_LANG, synthetic_alignment.TGT_LANG
    c.train, c.valid, c.test = ('train',), ('valid',), ('test',)
    c.tfds_name, c.vocab = '', 'separate'
    c.synthetic = synthetic_alignment.options_config()
  return c


# ------------------------------------------------------------------------------------ entries


@dataclasses.dataclass(frozen=True)
class FileEntry:
  """One parallel file pair of a split; `src`, `tgt` relative to `data.dir`."""
  spec: str
  src: str
  tgt: str
  moses: bool


def parse_entry(spec: str, src_lang: str, tgt_lang: str) -> FileEntry:
  """Parses a split entry: 'P', '<lang>=path,<lang>=path', either after 'moses:'."""
  text = spec.strip()
  moses = text.startswith(MOSES_PREFIX)
  if moses:
    text = text[len(MOSES_PREFIX):].strip()
  syntax = (f"expected a prefix P (files P.{src_lang}, P.{tgt_lang}) or an explicit pair "
            f"'{src_lang}=path,{tgt_lang}=path', optionally after '{MOSES_PREFIX}'")
  if not text:
    raise ValueError(f'empty split entry {spec!r}; {syntax}')
  if '=' not in text:
    if ',' in text:
      raise ValueError(f'split entry {spec!r} has a comma but no <lang>=path; {syntax}')
    return FileEntry(spec, f'{text}.{src_lang}', f'{text}.{tgt_lang}', moses)
  paths = {}
  for part in text.split(','):
    lang, sep, path = (s.strip() for s in part.partition('='))
    if not sep or not lang or not path or lang in paths:
      raise ValueError(f'cannot read split entry {spec!r} (at {part.strip()!r}); {syntax}')
    paths[lang] = path
  if set(paths) != {src_lang, tgt_lang}:
    raise ValueError(f'split entry {spec!r} names the languages {sorted(paths)}; this data '
                     f'translates {src_lang}→{tgt_lang}, so it must name exactly those two')
  return FileEntry(spec, paths[src_lang], paths[tgt_lang], moses)


def remove_bpe(line: str) -> str:
  """subword-nmt BPE removed as fairseq `post_process(…, 'subword_nmt')` (`--remove-bpe`)."""
  return (line + ' ').replace('@@ ', '').rstrip()


def _scan_file(path: Path) -> tuple[int, str]:
  """(lines, SHA-256 of the bytes); a last line without '\\n' counts, as Python reads it."""
  h, n, last = hashlib.sha256(), 0, b'\n'
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 22):
      h.update(chunk)
      n += chunk.count(b'\n')
      last = chunk[-1:]
  return n + (last != b'\n'), h.hexdigest()


def _read_lines(path: Path) -> Iterator[str]:
  # Binary reading splits at b'\n' only (see the module docstring).
  with open(path, 'rb') as f:
    for number, raw in enumerate(f, 1):
      try:
        yield raw.decode('utf-8').strip()
      except UnicodeDecodeError as e:
        raise ValueError(f'{path} line {number} is not UTF-8 ({e}); translation text must be '
                         f'UTF-8 (convert it, e.g. with iconv)') from e


class _FilePair:
  """An entry's two files: presence and alignment checks, lines, identity."""

  def __init__(self, directory: Path, entry: FileEntry, split: str, src_lang: str,
               tgt_lang: str, dataset: str):
    self.entry, self.split = entry, split
    self.langs = {'src': src_lang, 'tgt': tgt_lang}
    self.paths = {'src': directory / entry.src, 'tgt': directory / entry.tgt}
    self._dataset = dataset
    self._scan = None

  def check_present(self) -> None:
    for side, path in self.paths.items():
      if not path.is_file():
        raise FileNotFoundError(
            f'{self.split} entry {self.entry.spec!r}: the {self.langs[side]} file {path} does not '
            f'exist (expected {self.paths["src"].name} and {self.paths["tgt"].name} in '
            f'{path.parent}). {_HOW_TO_GET.get(self._dataset, "Check data.dir and the entry")}.')
      if path.stat().st_size == 0:
        raise ValueError(f'{self.split} entry {self.entry.spec!r}: {path} is empty; a parallel '
                         f'file needs one sentence per line')

  def scan(self) -> dict[str, Any]:
    """Line counts and digests of both files; a ValueError when the counts differ."""
    if self._scan is None:
      info = {}
      for side, path in self.paths.items():
        lines, digest = _scan_file(path)
        info[side] = {'name': getattr(self.entry, side), 'bytes': path.stat().st_size,
                      'lines': lines, 'sha256': digest}
      if info['src']['lines'] != info['tgt']['lines']:
        raise ValueError(
            f'{self.split} entry {self.entry.spec!r}: the parallel files differ in length: '
            f'{self.paths["src"]} has {info["src"]["lines"]} lines and {self.paths["tgt"]} has '
            f'{info["tgt"]["lines"]}; line i of one must translate line i of the other')
      self._scan = {'entry': self.entry.spec, 'moses': self.entry.moses, **info,
                    'pairs': info['src']['lines']}
    return self._scan

  def lines(self, side: str) -> Iterator[str]:
    lines = _read_lines(self.paths[side])
    return wmt14.moses_detokenize(lines, self.langs[side]) if self.entry.moses else lines

  def restore_scan(self, scanned: dict[str, Any]) -> None:
    """Takes the scan recorded when the cache entry was built (the files are unchanged)."""
    self._scan = scanned

  def location(self, index: int, *, full: bool = True) -> str:
    src, tgt = (self.paths['src'], self.paths['tgt']) if full else (self.entry.src,
                                                                      self.entry.tgt)
    return f'{src} / {tgt} line {index + 1}'

  def cache_sources(self) -> list[Path]:
    return list(self.paths.values())


class _TfdsPair:
  """A TFDS split whose records hold one text feature per language."""

  def __init__(self, source: Sequence[Any], tfds_name: str, tfds_split: str, split: str,
               src_lang: str, tgt_lang: str, prepared_dir: Path):
    self.source, self.split = source, split
    self.langs = {'src': src_lang, 'tgt': tgt_lang}
    self._name, self._tfds_split, self._prepared_dir = tfds_name, tfds_split, prepared_dir

  def check_present(self) -> None:
    if len(self.source) == 0:
      raise ValueError(f'TFDS {self._name} split {self._tfds_split!r} has no records')
    features = set(self.source[0])
    missing = [lang for lang in self.langs.values() if lang not in features]
    if missing:
      raise ValueError(f'TFDS {self._name} records have the features {sorted(features)}, not '
                       f'{missing}; set data.src_lang / data.tgt_lang to two of them')

  def scan(self) -> dict[str, Any]:
    return {'tfds': self._name, 'split': self._tfds_split, 'pairs': len(self.source)}

  def lines(self, side: str) -> Iterator[str]:
    from data import tfds_source  # pylint: disable=g-import-not-at-top  (TFDS is optional)
    lang = self.langs[side]
    return (r[lang].decode('utf-8').strip() for r in tfds_source.iterate_records(self.source))

  def restore_scan(self, scanned: dict[str, Any]) -> None:
    del scanned  # Counting records is free.

  def location(self, index: int, *, full: bool = True) -> str:
    del full
    return f'TFDS {self._name} {self._tfds_split} record {index}'

  def cache_sources(self) -> list[Path]:
    return [self._prepared_dir]


def _tfds_pairs(config: ml_collections.ConfigDict) -> dict[str, list[_TfdsPair]]:
  from data import tfds_source  # pylint: disable=g-import-not-at-top  (TFDS is optional)
  name = config.tfds_name
  if not name:
    raise ValueError("data.source='tfds' needs data.tfds_name (e.g. "
                     f"'{wmt14.TFDS_NAME}' or 'iwslt14')")
  try:
    sources, prepared_dir = tfds_source.data_sources(
        name, data_dir=config.tfds_data_dir, manual_dir=config.tfds_manual_dir)
  except Exception as e:  # TFDS raises many kinds; add what to do about the usual cause.
    hint = wmt14.TFDS_PREPARE if name.startswith('wmt14') else (
        'see the builder\'s manual download instructions in data/tfds_builders/')
    raise RuntimeError(f'cannot read TFDS {name!r} from data.tfds_data_dir='
                       f'{config.tfds_data_dir or "(TFDS default)"}: {e}\nTo fix: {hint}') from e
  return {split: [_TfdsPair(sources[split], name, tfds_source.TFDS_SPLITS[split], split,
                            config.src_lang, config.tgt_lang, prepared_dir)]
          for split in SPLITS}


# --------------------------------------------------------------------------------- vocabulary


class FairseqDictionary(vocab_lib.FairseqSpecialIds):
  """fairseq `Dictionary` behaviour over a `data.vocab.Vocabulary`: a line ↔ an id array.

  `encode` splits on whitespace, maps unknown tokens to `<unk>` and appends `</s>`
  (`Dictionary.encode_line`); `decode` joins the tokens up to the first `</s>`, without
  `<pad>` and `<s>` (`Dictionary.string`).
  """

  kind = 'fairseq'

  def __init__(self, vocabulary: vocab_lib.Vocabulary):
    self.vocabulary = vocabulary

  def __len__(self) -> int:
    return len(self.vocabulary)

  def __eq__(self, other) -> bool:
    return isinstance(other, FairseqDictionary) and self.vocabulary == other.vocabulary

  def __repr__(self) -> str:
    return f'FairseqDictionary({len(self)} symbols, sha256={self.sha256()[:12]})'

  @property
  def symbols(self) -> list[str]:
    return self.vocabulary.symbols

  def sha256(self) -> str:
    return self.vocabulary.sha256()

  def encode(self, line: str) -> np.ndarray:
    index, unk = self.vocabulary.index, vocab_lib.UNK_ID
    return np.asarray([index.get(w, unk) for w in line.split()] + [vocab_lib.EOS_ID], np.int32)

  def encode_lines(self, lines: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """All lines as one flat int32 array (`</s>` after each) and [N + 1] int64 offsets."""
    lengths = array('q')
    tokens = self.vocabulary.encode_lines(_recording_lengths(lines, lengths))
    return tokens, _offsets(lengths)

  def decode(self, ids: Iterable[int]) -> str:
    symbols, out = self.vocabulary.symbols, []
    for i in np.asarray(ids).reshape(-1).tolist():
      if i == vocab_lib.EOS_ID:
        break
      if i not in (vocab_lib.PAD_ID, vocab_lib.BOS_ID):
        out.append(symbols[i] if 0 <= i < len(symbols) else vocab_lib.UNK)
    return ' '.join(out)


def _recording_lengths(lines: Iterable[str], lengths: array) -> Iterator[str]:
  """Passes lines through, appending each one's token count + 1 (its `</s>`) to `lengths`."""
  for line in lines:
    lengths.append(len(line.split()) + 1)
    yield line


def _offsets(lengths: array) -> np.ndarray:
  offsets = np.zeros(len(lengths) + 1, np.int64)
  np.cumsum(np.frombuffer(lengths, dtype=np.int64), out=offsets[1:])
  return offsets


def build_dictionary_and_encode(lines: Iterable[str], *, padding_factor: int = 8
                                ) -> tuple[FairseqDictionary, np.ndarray, np.ndarray]:
  """The fairseq dictionary of `lines` and their encoding (tokens, offsets), in one pass."""
  lengths = array('q')
  vocabulary, tokens = vocab_lib.build_and_encode(_recording_lengths(lines, lengths),
                                                  padding_factor=padding_factor)
  return FairseqDictionary(vocabulary), tokens, _offsets(lengths)


def load_fairseq_dictionary(path: str | os.PathLike) -> FairseqDictionary:
  """A fairseq `dict.txt` as fairseq `Dictionary.load` reads it.

  Each line is `<symbol> <count>` (optionally followed by `#fairseq:overwrite`); the specials are
  implicit and come first, so ids are 4 + the line number (0-based).
  """
  path = Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f'fairseq dictionary {path} does not exist (data.src_dict / '
                            f'data.tgt_dict); leave them empty to build dictionaries from train')
  symbols, seen = list(vocab_lib.SPECIALS), set(vocab_lib.SPECIALS)
  for number, line in enumerate(path.read_text(encoding='utf-8').split('\n'), 1):
    if not line.strip():
      continue
    fields = line.rstrip().rsplit(' ', 1)
    overwrite = len(fields) == 2 and fields[1] == '#fairseq:overwrite'
    if overwrite:
      fields = fields[0].rsplit(' ', 1)
    if len(fields) != 2 or not fields[1].isdigit():
      raise ValueError(f'{path} line {number}: expected "<symbol> <count>", got {line!r}; is '
                       f'it a fairseq dict.txt?')
    word = fields[0]
    if word in seen:
      if overwrite:
        continue
      raise ValueError(f'{path} line {number}: {word!r} appears twice (or is a special); '
                       f'fairseq needs #fairseq:overwrite for that')
    seen.add(word)
    symbols.append(word)
  return FairseqDictionary(vocab_lib.Vocabulary(symbols))


Vocab = FairseqDictionary | wmt14.SentencePieceVocab


# ---------------------------------------------------------------------------------- encoding


class _Corpus:
  """The pair sources of every split, and the options that fix their encoding."""

  def __init__(self, config: ml_collections.ConfigDict, pairs: dict[str, list]):
    self.config, self.pairs = config, pairs

  def lines(self, split: str, side: str) -> Iterator[str]:
    return itertools.chain.from_iterable(p.lines(side) for p in self.pairs[split])

  def scan(self, splits: Sequence[str] = SPLITS) -> dict[str, list[dict[str, Any]]]:
    return {split: [p.scan() for p in self.pairs[split]] for split in splits}

  def cache_sources(self, splits: Sequence[str] = SPLITS) -> list[Path]:
    out = []
    for split in splits:
      for p in self.pairs[split]:
        out.extend(p.cache_sources())
    return sorted(set(out))

  def identity(self, splits: Sequence[str] = SPLITS) -> dict[str, Any]:
    c = self.config
    out = {'source': c.source, 'src_lang': c.src_lang, 'tgt_lang': c.tgt_lang}
    if c.source == 'tfds':
      out['tfds_name'] = c.tfds_name
    else:
      out['entries'] = {s: [p.entry.spec for p in self.pairs[s]] for s in splits}
    return out


def _vocabularies(corpus: _Corpus, cache_dir: str) -> tuple[Vocab | None, Vocab | None]:
  """Given or trained vocabularies that do not come out of encoding the train split itself."""
  c = corpus.config
  if c.vocab == 'sentencepiece':
    if c.src_dict or c.tgt_dict:
      raise ValueError("data.src_dict / data.tgt_dict are fairseq dictionaries, but "
                       "data.vocab='sentencepiece'; give data.spm_model, or set data.vocab to "
                       "'separate' or 'joined'")
    if c.spm_model:
      sp = wmt14.load_sentencepiece(Path(c.spm_model).expanduser())
      return sp, sp

    def train_lines():
      corpus.scan()  # Misaligned files are an error before minutes of training.
      return itertools.chain(corpus.lines('train', 'src'), corpus.lines('train', 'tgt'))

    sp, _ = wmt14.cached_sentencepiece(
        train_lines, sources=corpus.cache_sources(['train']),
        identity=dict(corpus.identity(['train']), encoder=ENCODER_VERSION),
        vocab_size=c.spm_vocab_size, model_type=c.spm_model_type,
        input_sentence_size=c.spm_input_sentence_size, cache_dir=cache_dir)
    return sp, sp
  if c.spm_model:
    raise ValueError(f"data.spm_model is a sentencepiece model, but data.vocab={c.vocab!r}; set "
                     f"data.vocab='sentencepiece' or leave data.spm_model empty")
  src = load_fairseq_dictionary(c.src_dict) if c.src_dict else None
  tgt = load_fairseq_dictionary(c.tgt_dict) if c.tgt_dict else None
  if c.vocab == 'joined':
    if src is not None and tgt is not None and src != tgt:
      raise ValueError(
          f"data.vocab='joined' uses one dictionary for both languages, but data.src_dict="
          f"{c.src_dict!r} ({len(src)} symbols, sha256 {src.sha256()[:12]}) and data.tgt_dict="
          f"{c.tgt_dict!r} ({len(tgt)} symbols, sha256 {tgt.sha256()[:12]}) differ; give one "
          f"joined dictionary (fairseq-preprocess --joined-dictionary), or set "
          f"data.vocab='separate'")
    src = tgt = src or tgt
  return src, tgt


def _encode_splits(corpus: _Corpus, given: tuple[Vocab | None, Vocab | None]
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Encodes every split: arrays '<split>_<side>_tokens' / '_offsets', and the cache meta."""
  c = corpus.config
  files = corpus.scan()
  src_vocab, tgt_vocab = given
  arrays = {}

  def store(split, side, tokens, offsets):
    arrays[f'{split}_{side}_tokens'], arrays[f'{split}_{side}_offsets'] = tokens, offsets

  if src_vocab is None or tgt_vocab is None:  # Dictionaries from the train split, in one pass.
    if c.vocab == 'joined':
      n_src = sum(f['pairs'] for f in files['train'])
      joined, tokens, offsets = build_dictionary_and_encode(
          itertools.chain(corpus.lines('train', 'src'), corpus.lines('train', 'tgt')),
          padding_factor=c.padding_factor)
      cut = offsets[n_src]
      store('train', 'src', tokens[:cut], offsets[:n_src + 1])
      store('train', 'tgt', tokens[cut:], offsets[n_src:] - cut)
      src_vocab = tgt_vocab = joined
    else:
      for side in ('src', 'tgt'):
        if (src_vocab if side == 'src' else tgt_vocab) is None:
          built, tokens, offsets = build_dictionary_and_encode(
              corpus.lines('train', side), padding_factor=c.padding_factor)
          store('train', side, tokens, offsets)
          src_vocab, tgt_vocab = (built, tgt_vocab) if side == 'src' else (src_vocab, built)
  for split in SPLITS:
    for side, vocab in (('src', src_vocab), ('tgt', tgt_vocab)):
      if f'{split}_{side}_tokens' not in arrays:
        store(split, side, *vocab.encode_lines(corpus.lines(split, side)))
  for split in SPLITS:
    expected = sum(f['pairs'] for f in files[split])
    for side in ('src', 'tgt'):
      got = len(arrays[f'{split}_{side}_offsets']) - 1
      if got != expected:  # A reader and the line count disagree: a bug, not bad data.
        raise RuntimeError(f'{split} {side}: read {got} sentences, counted {expected}')
  if c.vocab == 'sentencepiece':
    vocab_meta = {'kind': 'sentencepiece', 'sha256': src_vocab.sha256()}
  elif src_vocab is tgt_vocab:
    vocab_meta = {'kind': 'joined', 'symbols': src_vocab.symbols}
  else:
    vocab_meta = {'kind': 'separate', 'src_symbols': src_vocab.symbols,
                  'tgt_symbols': tgt_vocab.symbols}
  meta = {'files': files, 'vocab': vocab_meta,
          'tokens_sha256': {k: array_sha256(v) for k, v in sorted(arrays.items())
                            if k.endswith('_tokens')}}
  return arrays, meta


def _vocab_from_meta(meta: dict, given: tuple[Vocab | None, Vocab | None]
                     ) -> tuple[Vocab, Vocab]:
  v = meta['vocab']
  if v['kind'] == 'sentencepiece':
    return given
  if v['kind'] == 'joined':
    joined = FairseqDictionary(vocab_lib.Vocabulary(v['symbols']))
    return joined, joined
  return (FairseqDictionary(vocab_lib.Vocabulary(v['src_symbols'])),
          FairseqDictionary(vocab_lib.Vocabulary(v['tgt_symbols'])))


# ---------------------------------------------------------------------------------- batching


@dataclasses.dataclass
class _Split:
  """One split's encoded pairs (memory-mapped) and the subset that fits the model."""
  src_tokens: np.ndarray
  src_offsets: np.ndarray    # [N + 1]
  tgt_tokens: np.ndarray
  tgt_offsets: np.ndarray
  kept: np.ndarray           # [K] int64 indices of the usable pairs, in file order
  src_lengths: np.ndarray    # [K] tokens incl. </s>, of the kept pairs
  tgt_lengths: np.ndarray


def _padded_rows(tokens: np.ndarray, offsets: np.ndarray, index: np.ndarray, width: int,
                 pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """[R, width] int32 sentences `index` padded on the right, and their lengths [R]."""
  starts = offsets[index]
  lengths = offsets[index + 1] - starts
  pos = np.arange(width)
  real = pos < lengths[:, None]
  gathered = tokens[np.where(real, starts[:, None] + pos, 0)]
  return np.where(real, gathered, pad_id).astype(np.int32), lengths


@dataclasses.dataclass(frozen=True)
class _Layout:
  """How a split is cut into batches: per bucket its length L and its rows per micro-batch B."""
  lengths: np.ndarray        # [K] bucket lengths, ascending
  rows: np.ndarray           # [K] B per bucket
  bucket_of: np.ndarray      # [N] bucket index of every kept pair
  counts: np.ndarray         # [K] pairs per bucket


class _Batcher:
  """Builds the batch dicts of one split (shared by training and evaluation)."""

  def __init__(self, split: _Split, name: str, *, length_bucket: int, max_source: int,
               max_target: int, pad_id: int, bos_id: int):
    self.split, self.name = split, name
    self.length_bucket = length_bucket
    self.max_source, self.max_target = max_source, max_target
    self.pad_id, self.bos_id = pad_id, bos_id
    longest = np.maximum(split.src_lengths, split.tgt_lengths)
    self.bucket_length = np.minimum(-(-longest // length_bucket) * length_bucket,
                                    max(max_source, max_target))

  def layout(self, *, max_tokens: int, row_multiple: int, num_micro: int,
             count: int | None = None) -> _Layout:
    if max_tokens < 1 or row_multiple < 1 or num_micro < 1:
      raise ValueError(f'max_tokens, row_multiple and num_micro must be ≥ 1; got {max_tokens}, '
                       f'{row_multiple}, {num_micro}')
    lengths, bucket_of, counts = np.unique(self.bucket_length[:count], return_inverse=True,
                                           return_counts=True)
    budget = max_tokens // np.maximum(lengths, 1) // row_multiple * row_multiple
    if len(lengths) and budget.min() == 0:
      too_long = int(lengths[budget == 0].max())
      raise ValueError(
          f'max_tokens={max_tokens} cannot hold {row_multiple} row(s) (row_multiple) of the '
          f'{self.name} bucket of length {too_long} (the longest pair, source or target, '
          f'rounded up to length_bucket={self.length_bucket}); raise max_tokens to at least '
          f'{too_long * row_multiple}, or lower the max positions')
    # A bucket smaller than one step's budget gets just enough rows for one step.
    needed = -(-counts // (num_micro * row_multiple)) * row_multiple
    return _Layout(lengths, np.minimum(budget, needed).astype(np.int64),
                   bucket_of.reshape(-1), counts)

  def make(self, rows: np.ndarray, length: int, num_rows: int, *, num_micro: int,
           process_index: int, process_count: int, with_ids: bool) -> Batch:
    """The batch of kept pairs `rows` in a bucket of `length`, padded to `num_rows` rows."""
    split = self.split
    index = split.kept[rows]
    s_len, t_len = min(length, self.max_source), min(length, self.max_target)
    source, _ = _padded_rows(split.src_tokens, split.src_offsets, index, s_len, self.pad_id)
    targets, lengths = _padded_rows(split.tgt_tokens, split.tgt_offsets, index, t_len,
                                    self.pad_id)
    real = np.arange(t_len) < lengths[:, None]
    shifted = np.concatenate(
        [np.full((len(rows), 1), self.bos_id, np.int32), targets[:, :-1]], axis=1)
    batch = {'source': source, 'target_in': np.where(real, shifted, self.pad_id).astype(np.int32),
             'targets': targets, 'weights': real.astype(np.float32)}
    if with_ids:
      batch['ids'] = rows.astype(np.int32)
    missing = num_rows - len(rows)
    if missing:  # Rows that fill the batch count for nothing.
      fill = {'weights': 0, 'ids': -1}
      batch = {k: np.concatenate([v, np.full((missing,) + v.shape[1:],
                                             fill.get(k, self.pad_id), v.dtype)])
               for k, v in batch.items()}
    if process_count > 1:  # This process's share of every micro-batch.
      def share(v):
        v = v.reshape((num_micro, -1) + v.shape[1:])
        per = v.shape[1] // process_count
        return v[:, process_index * per:(process_index + 1) * per].reshape((-1,) + v.shape[2:])
      batch = {k: share(v) for k, v in batch.items()}
    return batch


def _check_process(row_multiple: int, process_index: int, process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'need 0 ≤ process_index < process_count; got {process_index}, '
                     f'{process_count}')
  if row_multiple % process_count:
    raise ValueError(f'row_multiple={row_multiple} (devices) must be a multiple of '
                     f'process_count={process_count}, so that every process gets whole rows')


class TrainIterator:
  """Infinite, checkpointable iterator of training batches (module docstring, **Batches**).

  `get_state()` is a small JSON-able dict; an iterator given it with `set_state()` yields
  exactly what the original would have yielded next. `steps_per_epoch` items make one epoch,
  which shows every kept training pair exactly once.
  """

  def __init__(self, batcher: _Batcher, layout: _Layout, *, seed: int, num_micro: int,
               process_index: int, process_count: int):
    self._batcher, self._layout = batcher, layout
    self._seed, self._num_micro = seed, num_micro
    self._process = (process_index, process_count)
    self.steps_per_epoch = int(sum(-(-layout.counts // (num_micro * layout.rows))))
    self._epoch, self._step, self._plan = 0, 0, None

  def __iter__(self) -> TrainIterator:
    return self

  def _epoch_plan(self, epoch: int) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """(pair order, [(start, stop, bucket)] in batch order) of `epoch`."""
    layout = self._layout
    rng = np.random.default_rng([self._seed, epoch])
    perm = rng.permutation(len(layout.bucket_of))
    order = perm[np.argsort(layout.bucket_of[perm], kind='stable')]
    bounds = np.concatenate([[0], np.cumsum(layout.counts)])
    batches = []
    for k in range(len(layout.lengths)):
      size = self._num_micro * int(layout.rows[k])
      batches.extend((s, min(s + size, int(bounds[k + 1])), k)
                     for s in range(int(bounds[k]), int(bounds[k + 1]), size))
    return order, [batches[i] for i in rng.permutation(len(batches))]

  def __next__(self) -> Batch:
    if self._step == self.steps_per_epoch:
      self._epoch, self._step = self._epoch + 1, 0
    if self._plan is None or self._plan[0] != self._epoch:
      self._plan = (self._epoch, *self._epoch_plan(self._epoch))
    _, order, batches = self._plan
    start, stop, k = batches[self._step]
    self._step += 1
    rows = int(self._layout.rows[k]) * self._num_micro
    return self._batcher.make(order[start:stop], int(self._layout.lengths[k]), rows,
                              num_micro=self._num_micro, process_index=self._process[0],
                              process_count=self._process[1], with_ids=False)

  def get_state(self) -> dict[str, int]:
    return {'seed': self._seed, 'epoch': self._epoch, 'step': self._step,
            'steps_per_epoch': self.steps_per_epoch}

  def set_state(self, state: dict[str, Any]) -> None:
    mine = self.get_state()
    for key in ('seed', 'steps_per_epoch'):
      if int(state[key]) != mine[key]:
        raise ValueError(
            f'this training-data state was saved with {key}={state[key]}, but this iterator '
            f'has {key}={mine[key]}: the data, max_tokens, row_multiple, num_micro or seed '
            f'differ from the run that saved it')
    if not 0 <= int(state['step']) <= self.steps_per_epoch or int(state['epoch']) < 0:
      raise ValueError(f'invalid training-data state {state}')
    self._epoch, self._step = int(state['epoch']), int(state['step'])


class EvalBatches:
  """Finite, re-iterable batches that hold every sentence of a split once; `len()` = batches.

  Sentences are grouped by bucket (shortest first, file order within a bucket); `ids` gives each
  row's sentence index in the split (-1 for filling rows), by which callers restore file order.
  """

  def __init__(self, batcher: _Batcher, layout: _Layout, *, process_index: int,
               process_count: int):
    self._batcher, self._layout = batcher, layout
    self._process = (process_index, process_count)
    order = np.argsort(layout.bucket_of, kind='stable')
    bounds = np.concatenate([[0], np.cumsum(layout.counts)])
    self._batches = [(order[s:min(s + int(layout.rows[k]), int(bounds[k + 1]))], k)
                     for k in range(len(layout.lengths))
                     for s in range(int(bounds[k]), int(bounds[k + 1]), int(layout.rows[k]))]
    self.num_sentences = len(layout.bucket_of)

  def __len__(self) -> int:
    return len(self._batches)

  def __iter__(self) -> Iterator[Batch]:
    for rows, k in self._batches:
      yield self._batcher.make(rows, int(self._layout.lengths[k]), int(self._layout.rows[k]),
                               num_micro=1, process_index=self._process[0],
                               process_count=self._process[1], with_ids=True)


# ---------------------------------------------------------------------------------- the data


class TranslationData:
  """A translation corpus: vocabularies, training iterator, evaluation batches, texts for BLEU.

  Attributes:
    name: 'iwslt14' or 'wmt14'.
    src_lang, tgt_lang: e.g. 'de', 'en'.
    src_vocab, tgt_vocab: `FairseqDictionary` or `wmt14.SentencePieceVocab` (the same object
      when `shared_vocab`).
    pad_id, eos_id: padding and end of sentence (1, 2).
    bos_id: the decoder's first input; fairseq's `</s>` (= eos_id), not `<s>`.
    metric: 'bleu'.
    text_level: 'tokenized' (BPE removed) or 'raw' (sentencepiece decoded): what `postprocess`,
      `sources` and `references` return.
    max_source_positions, max_target_positions: the longest usable pair, `</s>` included.
    cache_hit: whether the encoded splits came from the on-disk cache.
  """

  metric = 'bleu'

  def __init__(self, *, config: ml_collections.ConfigDict, corpus: _Corpus,
               src_vocab: Vocab, tgt_vocab: Vocab, arrays: dict[str, np.ndarray],
               meta: dict[str, Any], max_source_positions: int, max_target_positions: int,
               cache_hit: bool):
    self.name = config.name
    self.src_lang, self.tgt_lang = config.src_lang, config.tgt_lang
    self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
    self.shared_vocab = src_vocab is tgt_vocab
    self.pad_id, self.eos_id = vocab_lib.PAD_ID, vocab_lib.EOS_ID
    self.bos_id = vocab_lib.EOS_ID
    self.text_level = 'raw' if config.vocab == 'sentencepiece' else 'tokenized'
    self.length_bucket = int(config.length_bucket)
    self.max_source_positions = max_source_positions
    self.max_target_positions = max_target_positions
    self.cache_hit = cache_hit
    self._config, self._corpus, self._meta = config, corpus, meta
    self._texts: dict[tuple[str, str], list[str]] = {}
    self._splits, self._skipped = {}, {}
    for split in SPLITS:
      self._splits[split], self._skipped[split] = self._fit(split, arrays)

  def _fit(self, split: str, arrays: dict[str, np.ndarray]) -> tuple[_Split, list[str]]:
    """The split with the pairs that fit the max positions (see module docstring, Lengths)."""
    src_off, tgt_off = arrays[f'{split}_src_offsets'], arrays[f'{split}_tgt_offsets']
    src_len, tgt_len = np.diff(src_off), np.diff(tgt_off)
    bad = np.flatnonzero((src_len > self.max_source_positions) |
                         (tgt_len > self.max_target_positions))
    limits = (f'max_source_positions={self.max_source_positions}, '
              f'max_target_positions={self.max_target_positions}')
    if len(bad) and split != 'train' and not self._config.skip_invalid_size:
      i = int(bad[0])
      raise ValueError(
          f'{split} sentence {i} ({self._locate(split, i)}) has {src_len[i]} source and '
          f'{tgt_len[i]} target tokens (with </s>), more than the model allows ({limits}); '
          f'{len(bad)} of the {len(src_len)} {split} pairs are too long. A {split} set is never '
          f'silently shortened: raise model.max_len (or data.max_source_positions / '
          f'max_target_positions), or set data.skip_invalid_size=True to leave them out, '
          f'counted in describe()["skipped"].')
    # The first few, named relative to data.dir: describe() must not depend on where it runs.
    first = [f'{self._locate(split, int(i), full=False)}: {src_len[i]} source / {tgt_len[i]} '
             f'target tokens' for i in bad[:5]]
    if len(bad):
      logging.warning('%s: %d of %d pairs are longer than %s and are left out (first: %s)',
                      split, len(bad), len(src_len), limits, '; '.join(first))
    kept = np.setdiff1d(np.arange(len(src_len), dtype=np.int64), bad, assume_unique=True)
    fitted = _Split(arrays[f'{split}_src_tokens'], src_off, arrays[f'{split}_tgt_tokens'],
                    tgt_off, kept, src_len[kept], tgt_len[kept])
    return fitted, (len(bad), first)

  def _locate(self, split: str, index: int, *, full: bool = True) -> str:
    for pair in self._corpus.pairs[split]:
      n = pair.scan()['pairs']
      if index < n:
        return pair.location(index, full=full)
      index -= n
    return f'{split} pair {index}'

  # -- vocabularies and text

  def check_vocab_sizes(self, src_vocab_size: int, tgt_vocab_size: int) -> tuple[int, int]:
    """The model's vocabulary sizes: -1 takes the data's; any other value must equal it."""
    out = []
    for side, given, vocab in (('src', src_vocab_size, self.src_vocab),
                               ('tgt', tgt_vocab_size, self.tgt_vocab)):
      if given not in (-1, len(vocab)):
        raise ValueError(
            f'model.{side}_vocab_size={given} but the {self.name} data has {len(vocab)} '
            f'{side} symbols ({self._config.vocab} vocabulary); leave model.{side}_vocab_size=-1 '
            f'to take it from the data')
      out.append(len(vocab))
    return out[0], out[1]

  def postprocess(self, ids) -> str:
    """Model output ids (without the start symbol) → text at `text_level`, up to `</s>`."""
    text = self.tgt_vocab.decode(ids)
    return text if self.text_level == 'raw' else remove_bpe(text)

  def _text(self, split: str, side: str) -> list[str]:
    split = canonical_split(split)
    if (split, side) in self._texts:
      return self._texts[(split, side)]
    lines = self._corpus.lines(split, side)
    if self.text_level == 'tokenized':
      lines = map(remove_bpe, lines)
    kept = self._splits[split].kept
    lines = list(lines)
    if len(kept) != len(lines):
      lines = [lines[i] for i in kept.tolist()]
    if split != 'train':  # Small; the training text is read again when asked for.
      self._texts[(split, side)] = lines
    return lines

  def sources(self, split: str) -> list[str]:
    """The split's source sentences at `text_level`, in file order (skipped pairs left out)."""
    return self._text(split, 'src')

  def references(self, split: str) -> list[str]:
    """The split's target sentences at `text_level`, in file order: what BLEU compares with."""
    return self._text(split, 'tgt')

  def num_examples(self, split: str) -> int:
    return len(self._splits[canonical_split(split)].kept)

  def source_lengths(self, split: str) -> np.ndarray:
    """[N] source tokens (with `</s>`) of the split's sentences, in `sources(split)` order."""
    return self._splits[canonical_split(split)].src_lengths

  def source_rows(self, split: str, ids: np.ndarray, width: int) -> np.ndarray:
    """[R, width] int32 sources of sentences `ids` (as in `eval_batches`), padded with pad_id.

    For decoders that choose their own batch shapes; id -1 gives a row of pad (a filling row).
    """
    s = self._splits[canonical_split(split)]
    ids = np.asarray(ids, np.int64)
    real = ids >= 0
    if real.any() and s.src_lengths[ids[real]].max() > width:
      raise ValueError(f'width={width} is narrower than the longest requested source '
                       f'({s.src_lengths[ids[real]].max()} tokens); pass a wider width')
    rows, _ = _padded_rows(s.src_tokens, s.src_offsets, s.kept[np.where(real, ids, 0)], width,
                           self.pad_id)
    return np.where(real[:, None], rows, self.pad_id).astype(np.int32)

  def describe(self) -> dict[str, Any]:
    """JSON-able identity: files, vocabularies, sizes, skips; 'fingerprint' over what matters."""
    c = self._config
    vocab = {'kind': c.vocab, 'shared': self.shared_vocab,
             'src_size': len(self.src_vocab), 'tgt_size': len(self.tgt_vocab),
             'src_sha256': self.src_vocab.sha256(), 'tgt_sha256': self.tgt_vocab.sha256()}
    if c.vocab == 'sentencepiece':
      vocab.update(spm_model=c.spm_model or '(trained)', spm_vocab_size=c.spm_vocab_size,
                   spm_model_type=c.spm_model_type)
    out = {
        'name': self.name, 'source': c.source, 'direction': f'{self.src_lang}-{self.tgt_lang}',
        'src_lang': self.src_lang, 'tgt_lang': self.tgt_lang, 'metric': self.metric,
        'text_level': self.text_level, 'files': self._meta['files'], 'vocab': vocab,
        'num_examples': {s: self.num_examples(s) for s in SPLITS},
        'skipped': {s: self._skipped[s][0] for s in SPLITS},
        'skipped_first': {s: self._skipped[s][1] for s in SPLITS},
        'max_source_positions': self.max_source_positions,
        'max_target_positions': self.max_target_positions,
        'tokens_sha256': self._meta['tokens_sha256'],
    }
    identity = {k: out[k] for k in ('direction', 'num_examples', 'skipped', 'tokens_sha256',
                                    'max_source_positions', 'max_target_positions')}
    identity['vocab'] = {k: vocab[k] for k in ('src_sha256', 'tgt_sha256')}
    out['fingerprint'] = describe_fingerprint(identity)
    return out

  # -- batches

  def _batcher(self, split: str) -> _Batcher:
    return _Batcher(self._splits[split], split, length_bucket=self.length_bucket,
                    max_source=self.max_source_positions, max_target=self.max_target_positions,
                    pad_id=self.pad_id, bos_id=self.bos_id)

  def train_iterator(self, *, max_tokens: int, seed: int, row_multiple: int = 1,
                     num_micro: int = 1, process_index: int = 0,
                     process_count: int = 1) -> TrainIterator:
    """Infinite, checkpointable training batches (module docstring, **Batches**).

    Args:
      max_tokens: budget of one micro-batch over all processes: B × L ≤ max_tokens.
      seed: shuffling seed (≥ 0); epoch e uses a seed derived from (seed, e). Every process
        must pass the same seed: they take different rows of the same batches.
      row_multiple: B is a multiple of this (the number of devices).
      num_micro: micro-batches per item (gradient accumulation); they share one bucket.
      process_index, process_count: this process's share, rows
        [p·B/P, (p+1)·B/P) of every micro-batch (multi-host data parallelism).

    Returns:
      An iterator of {'source': [R, S], 'target_in', 'targets': [R, T] int32,
      'weights': [R, T] float32} with R = num_micro × B / process_count.
    """
    if seed < 0:
      raise ValueError(f'the training seed must be ≥ 0, got {seed}')
    _check_process(row_multiple, process_index, process_count)
    batcher = self._batcher('train')
    if not len(batcher.bucket_length):
      raise ValueError(f'no training pair fits max_source_positions={self.max_source_positions}'
                       f' and max_target_positions={self.max_target_positions}')
    layout = batcher.layout(max_tokens=max_tokens, row_multiple=row_multiple,
                            num_micro=num_micro)
    return TrainIterator(batcher, layout, seed=seed, num_micro=num_micro,
                         process_index=process_index, process_count=process_count)

  def eval_batches(self, split: str, *, max_tokens: int, row_multiple: int = 1,
                   limit: int | None = None, process_index: int = 0,
                   process_count: int = 1) -> EvalBatches:
    """Batches holding every sentence of `split` once (the first `limit` when given).

    The dicts are those of `train_iterator`, plus 'ids' [R] int32: the row's sentence index in
    `sources(split)` / `references(split)`, -1 for filling rows.
    """
    split = canonical_split(split)
    _check_process(row_multiple, process_index, process_count)
    if limit is not None and limit < 0:
      raise ValueError(f'limit must be ≥ 0 or None (all sentences), got {limit}')
    batcher = self._batcher(split)
    layout = batcher.layout(max_tokens=max_tokens, row_multiple=row_multiple, num_micro=1,
                            count=limit)
    return EvalBatches(batcher, layout, process_index=process_index,
                       process_count=process_count)


def _max_positions(configured: int, model: int) -> int:
  if configured > 0:
    return int(configured)
  return int(model) if model > 0 else DEFAULT_MAX_POSITIONS


def _check_config(c: ml_collections.ConfigDict) -> None:
  if c.name not in NAMES:
    raise ValueError(f'unknown data.name {c.name!r} for translation; known: {", ".join(NAMES)}')
  if c.source not in SOURCES:
    raise ValueError(f"data.source for {c.name} must be 'files' or 'tfds', got {c.source!r}")
  if c.vocab not in VOCAB_KINDS:
    raise ValueError(f'data.vocab must be one of {", ".join(VOCAB_KINDS)}, got {c.vocab!r}')
  if not c.src_lang or not c.tgt_lang or c.src_lang == c.tgt_lang:
    raise ValueError(f'data.src_lang and data.tgt_lang must be two different languages; got '
                     f'{c.src_lang!r}, {c.tgt_lang!r}')
  if c.name == synthetic_alignment.NAME and c.source != 'files':
    raise ValueError(f"data.source for {c.name} must be 'files' (it is generated text), got "
                     f"{c.source!r}")
  if c.length_bucket < 1 or c.padding_factor < 1:
    raise ValueError(f'data.length_bucket and data.padding_factor must be ≥ 1; got '
                     f'{c.length_bucket}, {c.padding_factor}')


def build_translation_data(data_config: ml_collections.ConfigDict, *,
                           max_positions: int = -1) -> TranslationData:
  """Builds the corpus that `data_config` (a `translation_data_config` block) describes.

  Args:
    data_config: `config.data`.
    max_positions: the model's longest sequence (`model.max_len`), used for
      max_source_positions / max_target_positions when they are -1 (else fairseq's 1024).
  """
  from data import resolve_data_dir  # pylint: disable=g-import-not-at-top  (data imports us)
  c = data_config
  _check_config(c)
  if c.source == 'files':
    if c.name == synthetic_alignment.NAME:  # written on first use, then read as any folder
      directory = synthetic_alignment.prepare(c)
    else:
      directory = resolve_data_dir(c.dir)
    pairs = {}
    for split in SPLITS:
      entries = c[split]
      entries = (entries,) if isinstance(entries, str) else tuple(entries)
      if not entries:
        raise ValueError(f'data.{split} lists no files; give at least one entry')
      pairs[split] = [_FilePair(directory, parse_entry(e, c.src_lang, c.tgt_lang), split,
                                c.src_lang, c.tgt_lang, c.name) for e in entries]
  else:
    pairs = _tfds_pairs(c)
  for split in SPLITS:
    for pair in pairs[split]:
      pair.check_present()
  corpus = _Corpus(c, pairs)
  given = _vocabularies(corpus, c.cache_dir)
  options = dict(corpus.identity(), vocab=c.vocab, padding_factor=c.padding_factor,
                 given_vocab=[v.sha256() if v is not None else None for v in given])
  sources = corpus.cache_sources() + [Path(p).expanduser() for p in (c.src_dict, c.tgt_dict) if p]
  key = cache.fingerprint(sources, version=ENCODER_VERSION, **options)
  entry = cache.load_or_build(cache.resolve_cache_dir(c.cache_dir), 'translation', key,
                              lambda: _encode_splits(corpus, given))
  src_vocab, tgt_vocab = _vocab_from_meta(entry.meta, given)
  if entry.hit:  # The files were checked when the entry was built; reuse their scan.
    for split in SPLITS:
      for pair, scanned in zip(pairs[split], entry.meta['files'][split]):
        pair.restore_scan(scanned)
  return TranslationData(
      config=c, corpus=corpus, src_vocab=src_vocab, tgt_vocab=tgt_vocab, arrays=entry.arrays,
      meta=entry.meta, max_source_positions=_max_positions(c.max_source_positions, max_positions),
      max_target_positions=_max_positions(c.max_target_positions, max_positions),
      cache_hit=entry.hit)
