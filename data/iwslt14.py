"""IWSLT14 German–English as fairseq prepares it: `prepare('de-en.tgz', '~/data/iwslt14-de-en')`.

A Python port of fairseq's `examples/translation/prepare-iwslt14.sh` (itself adapted from the
MIXER `prepareData.sh`), from the official IWSLT 2014 TED release `de-en.tgz` (2014-01):

1. train: `train.tags.de-en.{de,en}` without the lines holding `<url>`, `<talkid>` or
   `<keywords>`, and with `<title>`, `</title>`, `<description>`, `</description>` deleted
   (`strip_train_tags`); dev/test: the `<seg id` lines of the `IWSLT14.TED*.xml` files, without
   the seg tags and the whitespace around them, with `’` turned into `'` (`xml_segments`).
2. Moses `tokenizer.perl -threads 8 -l {de,en}` (`tokenize`).
3. train only: `clean-corpus-n.perl -ratio 1.5 … 1 175` (`clean_corpus`); then, like the test
   sets, `lowercase.perl` (`lowercase`).
4. valid = every 23rd line of the cleaned train (`awk 'NR%23==0'`), train = the rest
   (`split_valid`).
5. test = dev2010, TEDX.dev2012, tst2010, tst2011, tst2012 concatenated in that order
   (`TEST_SETS`).
6. joint BPE: subword-nmt `learn_bpe.py -s 10000` on train.de followed by train.en
   (`learn_bpe`), then `apply_bpe.py -c code` on every split (`apply_bpe`).

The result is the layout fairseq's recipe binarizes (`fairseq-preprocess --source-lang de
--target-lang en`): `tok/{train,valid,test}.{de,en}` (tokenized, lowercased),
`bpe10k/code` and `bpe10k/{train,valid,test}.{de,en}`. A correct run gives 160,239 / 7,283 /
6,750 sentence pairs.

Tokenization is sacremoses' port of `tokenizer.perl` with one rule brought up to date: Moses
splits the period off the last word of a line unconditionally ("split last words independently
as they are unlikely to be non-breaking prefixes"), so `… in the U.S.` ends in `u.s .`, while
sacremoses 0.2.0 keeps the older behaviour and leaves `u.s.` (31 of the 13,500 test lines end in
such a word: a non-breaking prefix like `B.`, `usw.`, `70.`, or a word holding a period). With
that rule, and with the script's pass-through of blank lines, the five test sets come out byte
for byte as fairseq's (tests/test_data_iwslt14.py). The differences that remain possible come
from Unicode tables: Perl's `\\p{IsAlnum}` etc. as sacremoses tabulated them, and Python's
`str.lower` versus Perl's `lc` for characters whose case mapping changed between Unicode
versions.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Sequence
import contextlib
import functools
import io
import json
import os
from pathlib import Path
import re
import shutil
import tarfile
import urllib.request
import uuid

import sacremoses
from subword_nmt import apply_bpe as subword_apply_bpe
from subword_nmt import learn_bpe as subword_learn_bpe
import tqdm

LANGS = ('de', 'en')
PAIR = 'de-en'
ARCHIVE = 'de-en.tgz'
# prepare-iwslt14.sh's URL since the WIT3 archive went offline.
DOWNLOAD_URL = 'http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz'
ORIGINAL_URL = 'https://wit3.fbk.eu/archive/2014-01/texts/de/en/de-en.tgz'
WHERE_TO_GET = (
    f'Download the IWSLT 2014 TED release {ARCHIVE} from {DOWNLOAD_URL} (the URL of fairseq\'s '
    f'examples/translation/prepare-iwslt14.sh; originally {ORIGINAL_URL}), e.g. with '
    f'data.iwslt14.download(folder), and pass the archive, the folder holding it, or the '
    f'extracted {PAIR}/ folder')

TRAIN_FILES = {lang: f'train.tags.{PAIR}.{lang}' for lang in LANGS}
# The order of prepare-iwslt14.sh's `cat … > $tmp/test.$l`.
TEST_SETS = ('IWSLT14.TED.dev2010', 'IWSLT14.TEDX.dev2012', 'IWSLT14.TED.tst2010',
             'IWSLT14.TED.tst2011', 'IWSLT14.TED.tst2012')
SPLITS = ('train', 'valid', 'test')
VALID_EVERY = 23
BPE_MERGES = 10000
COUNTS_FILE = 'counts.json'


def xml_file(test_set: str, lang: str) -> str:
  """The release's file name of one side of a test set, e.g. IWSLT14.TED.tst2010.de-en.de.xml."""
  return f'{test_set}.{PAIR}.{lang}.xml'


def required_files() -> tuple[str, ...]:
  """Every file of the release that `prepare` reads."""
  return tuple(TRAIN_FILES.values()) + tuple(
      xml_file(s, lang) for lang in LANGS for s in TEST_SETS)


def bpe_dir_name(merges: int) -> str:
  """`bpe10k` for 10,000 merges (the shipped layout); `bpe<merges>` when not a multiple of 1000."""
  return f'bpe{merges // 1000}k' if merges % 1000 == 0 else f'bpe{merges}'


# Perl's \s on character strings (5.18+); Python's \s also counts \x1c-\x1f, which Perl treats as
# "ASCII junk" and deletes, so tokenize() deletes them first and the two agree.
_PERL_SPACE = r' \t\n\x0b\x0c\r\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000'
_PERL_BLANK_LINE = re.compile(f'[{_PERL_SPACE}]*')
_PERL_SPACES = re.compile(f'[{_PERL_SPACE}]+')
_ASCII_JUNK = re.compile(r'[\x00-\x08\x0e-\x1f]')

# Step 1, as the script's grep/sed (sed's \s in the C locale is ASCII whitespace).
_TRAIN_DROP = ('<url>', '<talkid>', '<keywords>')
_TRAIN_DELETE = ('<title>', '</title>', '<description>', '</description>')
_SEG_OPEN = re.compile(r'<seg id="[0-9]*">[ \t\n\x0b\x0c\r]*')
_SEG_CLOSE = re.compile(r'[ \t\n\x0b\x0c\r]*</seg>[ \t\n\x0b\x0c\r]*')


def strip_train_tags(lines: Iterable[str]) -> Iterator[str]:
  """Step 1 on a `train.tags` file: drop the metadata lines, keep titles and descriptions as text.

  `grep -v '<url>' | grep -v '<talkid>' | grep -v '<keywords>' | sed -e 's/<title>//g' …`:
  a line containing `<url>`, `<talkid>` or `<keywords>` anywhere goes; every `<title>`,
  `</title>`, `<description>` and `</description>` is deleted from the others.
  """
  for line in lines:
    if any(tag in line for tag in _TRAIN_DROP):
      continue
    for tag in _TRAIN_DELETE:
      line = line.replace(tag, '')
    yield line


def xml_segments(lines: Iterable[str]) -> Iterator[str]:
  """Step 1 on an `IWSLT14.TED*.xml` file: the text of each `<seg id=…>` line.

  `grep '<seg id' | sed -e 's/<seg id="[0-9]*">\\s*//g' | sed -e 's/\\s*<\\/seg>\\s*//g' |
  sed -e "s/’/'/g"`: whitespace before the opening tag stays (the tokenizer drops it).
  """
  for line in lines:
    if '<seg id' not in line:
      continue
    line = _SEG_OPEN.sub('', line)
    line = _SEG_CLOSE.sub('', line)
    yield line.replace('\u2019', "'")


_NUMERIC_ONLY = re.compile(r'(.*)\s+#NUMERIC_ONLY#')


class _MosesTokenizer(sacremoses.MosesTokenizer):
  """sacremoses' tokenizer.perl with the current Moses rule for a line's last word.

  The word loop of tokenizer.perl's `tokenize` (mosesdecoder scripts/tokenizer/): a line's last
  word `pre.` always has its period split off ("split last words independently as they are
  unlikely to be non-breaking prefixes"), as fairseq's IWSLT14 files show (`u.s .`, `usw .`);
  sacremoses 0.2.0 predates that rule. Elsewhere the period stays when `pre` holds a period and
  a letter, is a non-breaking prefix, or the next word starts with a lowercase letter; a
  `#NUMERIC_ONLY#` prefix keeps it before a number. Words are Perl's `split(/\\s/)` fields,
  empty ones included, so "the next word" is exactly Perl's.
  """

  def __init__(self, lang: str):
    super().__init__(lang)
    # load_prefixes: 1 = always non-breaking, 2 = only before a number; the last entry wins.
    self._prefix_kind = {}
    for item in self.NONBREAKING_PREFIXES:
      numeric = _NUMERIC_ONLY.match(item)
      if numeric:
        self._prefix_kind[numeric.group(1)] = 2
      else:
        self._prefix_kind[item] = 1
    self._alpha = frozenset(self.IsAlpha)
    self._lower = frozenset(self.IsLower)

  def handles_nonbreaking_prefixes(self, text: str) -> str:
    words = text.split(' ')
    while words and not words[-1]:  # Perl's split drops trailing empty fields.
      words.pop()
    last = len(words) - 1
    for i, word in enumerate(words):
      if len(word) < 2 or not word.endswith('.'):
        continue
      pre = word[:-1]
      if i == last:
        words[i] = pre + ' .'
        continue
      following = words[i + 1]
      kind = self._prefix_kind.get(pre)
      if (('.' in pre and any(c in self._alpha for c in pre)) or kind == 1
          or (following and following[0] in self._lower)):
        continue
      if kind == 2 and following[:1].isascii() and following[:1].isdigit():
        continue
      words[i] = pre + ' .'
    return ' '.join(words)


@functools.lru_cache(maxsize=None)
def _tokenizer(lang: str) -> _MosesTokenizer:
  return _MosesTokenizer(lang)


def tokenize_line(line: str, lang: str) -> str:
  """`tokenizer.perl -l lang` on one line (without its line break); escapes `&<>'"[]|`.

  Blank lines come back unchanged, as tokenizer.perl prints them untouched.
  """
  if _PERL_BLANK_LINE.fullmatch(line):
    return line
  line = _ASCII_JUNK.sub('', line)
  return _tokenizer(lang).tokenize(line, aggressive_dash_splits=False, return_str=True,
                                   escape=True)


def tokenize(lines: Iterable[str], lang: str, *, progress: bool = False) -> list[str]:
  """Step 2: Moses `tokenizer.perl -l lang` (no `-a`, with escaping) on every line.

  Args:
    lines: text lines without line breaks.
    lang: 'de' or 'en' (selects the non-breaking prefixes and, for 'en', the apostrophe rules).
    progress: show a tqdm progress bar.
  """
  if lang not in LANGS:
    raise ValueError(f'unknown language {lang!r}; IWSLT14 de-en has {", ".join(LANGS)}')
  lines = lines if isinstance(lines, Sequence) else list(lines)
  return [tokenize_line(line, lang) for line in tqdm.tqdm(
      lines, desc=f'tokenize {lang}', unit=' lines', disable=not progress)]


def word_count(line: str) -> int:
  """clean-corpus-n.perl's `word_count` of a whitespace-normalized line."""
  return len(line.split(' ')) if line else 0


def clean_corpus(src_lines: Sequence[str], tgt_lines: Sequence[str], *, ratio: float = 1.5,
                 min_len: int = 1, max_len: int = 175, max_word_length: int = 1000,
                 ) -> tuple[list[str], list[str], collections.Counter[str]]:
  """Step 3: Moses `clean-corpus-n.perl -ratio {ratio} corpus src tgt out {min_len} {max_len}`.

  Each line has its whitespace runs collapsed to one space and the ends trimmed (that is what
  the script writes out), and `|` deleted unless the first pair holds one (factored corpus).
  A pair is dropped when either side is then empty, has more than `max_len` or fewer than
  `min_len` space-separated words, when one side has more than `ratio` times the words of the
  other, or when a word is longer than `max_word_length` characters.

  Returns:
    (kept source lines, kept target lines, removed) where `removed` counts the dropped pairs by
    reason ('empty', 'too_long', 'too_short', 'ratio', 'long_word'; the script's order decides
    which reason a pair gets); `sum(removed.values())` is the number of pairs removed.

  Raises:
    ValueError: the two sides have different numbers of lines (the script dies on this too).
  """
  if len(src_lines) != len(tgt_lines):
    raise ValueError(f'clean_corpus needs parallel lines, got {len(src_lines)} source and '
                     f'{len(tgt_lines)} target lines; check that both files come from the '
                     f'same release and went through the same steps')
  factored = bool(src_lines) and ('|' in src_lines[0] or '|' in tgt_lines[0])
  long_word = re.compile(f'[^{_PERL_SPACE}|]{{{max_word_length + 1}}}')
  kept_src, kept_tgt = [], []
  removed = collections.Counter()

  def normalize(line):  # s/\|//g unless factored; s/\s+/ /g; s/^ //; s/ $//
    if not factored:
      line = line.replace('|', '')
    line = _PERL_SPACES.sub(' ', line)
    line = line[1:] if line.startswith(' ') else line
    return line[:-1] if line.endswith(' ') else line

  for f, e in zip(src_lines, tgt_lines):
    f, e = normalize(f), normalize(e)
    fc, ec = word_count(f), word_count(e)
    if not f or not e:
      removed['empty'] += 1
    elif ec > max_len or fc > max_len:
      removed['too_long'] += 1
    elif ec < min_len or fc < min_len:
      removed['too_short'] += 1
    elif ec / fc > ratio or fc / ec > ratio:
      removed['ratio'] += 1
    elif long_word.search(e) or long_word.search(f):
      removed['long_word'] += 1
    else:
      kept_src.append(f)
      kept_tgt.append(e)
  return kept_src, kept_tgt, removed


def lowercase(lines: Iterable[str]) -> list[str]:
  """Moses `lowercase.perl` (Perl's `lc`): as `str.lower`, but Σ is always σ.

  Python applies Unicode's final-sigma rule (ΟΔΟΣ → οδος); Perl's `lc` maps characters one
  by one (ΟΔΟΣ → οδοσ).
  """
  return [line.replace('\u03a3', '\u03c3').lower() for line in lines]


def split_valid(lines: Sequence[str], every: int = VALID_EVERY) -> tuple[list[str], list[str]]:
  """Step 4: (train, valid), valid being lines every, 2·every, … (1-based; `awk 'NR%23==0'`)."""
  if every < 1:
    raise ValueError(f'every must be a positive line interval, got {every}')
  train = [line for i, line in enumerate(lines, 1) if i % every]
  valid = [line for i, line in enumerate(lines, 1) if not i % every]
  return train, valid


def tokenized_segments(xml_lines: Iterable[str], lang: str) -> list[str]:
  """Steps 1–3 for one side of a test set: segments, tokenized, lowercased (no cleaning)."""
  return lowercase(tokenize(xml_segments(xml_lines), lang))


def learn_bpe(lines: Iterable[str], merges: int = BPE_MERGES, *, progress: bool = False) -> str:
  """Step 6: subword-nmt `learn_bpe.py -s merges` on `lines`; returns the code file's text.

  fairseq learns one joint table on train.de followed by train.en. Fewer merges than asked
  are learned when no pair occurs twice any more: the code then has fewer than `merges` lines
  after its `#version: 0.2` header.

  Args:
    lines: tokenized text lines.
    merges: merge operations to learn.
    progress: let subword-nmt show its progress bar and messages (on stderr).
  """
  if merges < 1:
    raise ValueError(f'merges must be positive, got {merges}')
  infile = io.StringIO(''.join(line + '\n' for line in lines))
  outfile = io.StringIO()
  with contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO()):
    subword_learn_bpe.learn_bpe(infile, outfile, merges)
  return outfile.getvalue()


def apply_bpe(code_path: str | os.PathLike, lines: Iterable[str], *,
              progress: bool = False) -> list[str]:
  """Step 6: subword-nmt `apply_bpe.py -c code_path` on every line (`@@ ` continuation marks)."""
  with open(code_path, encoding='utf-8', newline='\n') as codes:
    bpe = subword_apply_bpe.BPE(codes)
  lines = lines if isinstance(lines, Sequence) else list(lines)
  out = []
  for line in tqdm.tqdm(lines, desc='apply_bpe', unit=' lines', disable=not progress):
    # As the script's `apply_bpe.py < file`, which segments each line with its line break.
    segmented = bpe.process_line(line + '\n')
    out.append(segmented[:-1] if segmented.endswith('\n') else segmented)
  return out


def _split_lines(data: bytes, name: str) -> list[str]:
  """A file's lines as grep/sed/perl see them: split at \\n only, final line break optional."""
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise ValueError(f'{name} is not UTF-8 (byte {e.start}: {e.reason}); the IWSLT14 release '
                     f'is UTF-8: download {ARCHIVE} again. {WHERE_TO_GET}.') from e
  lines = text.split('\n')
  if lines[-1] == '':
    lines.pop()
  return lines


def _missing_message(where: str, missing: Sequence[str]) -> str:
  return (f'{where} lacks {len(missing)} of the {len(required_files())} IWSLT14 files that '
          f'prepare-iwslt14.sh reads: {", ".join(missing)}. Expected {ARCHIVE}, or its '
          f'{PAIR}/ folder holding {", ".join(TRAIN_FILES.values())} and the '
          f'<test set>.{PAIR}.<lang>.xml files of {", ".join(TEST_SETS)}. {WHERE_TO_GET}.')


def _read_archive(archive: Path) -> dict[str, list[str]]:
  try:
    tar = tarfile.open(archive, 'r:*')
  except tarfile.TarError as e:
    raise ValueError(f'{archive} is not a readable tar archive ({e}). {WHERE_TO_GET}.') from e
  with tar:
    members = {}
    for member in tar.getmembers():
      name = member.name.rsplit('/', 1)[-1]
      if member.isfile() and name not in members:
        members[name] = member
    missing = [n for n in required_files() if n not in members]
    if missing:
      raise FileNotFoundError(_missing_message(f'the archive {archive}', missing))
    return {n: _split_lines(tar.extractfile(members[n]).read(), f'{archive}:{n}')
            for n in required_files()}


def read_release(source: str | os.PathLike) -> dict[str, list[str]]:
  """The lines of every file `prepare` needs, keyed by file name (`required_files()`).

  Args:
    source: `de-en.tgz` (any file name), a folder holding `de-en.tgz`, or the extracted
      `de-en/` folder (or a folder holding it).

  Raises:
    FileNotFoundError: no archive and not all files; the message lists the missing files and
      where to download the release.
  """
  path = Path(source).expanduser()
  if path.is_file():
    return _read_archive(path)
  if not path.is_dir():
    raise FileNotFoundError(f'{path} does not exist. {WHERE_TO_GET}.')
  if (path / ARCHIVE).is_file():
    return _read_archive(path / ARCHIVE)
  candidates = [path, path / PAIR]
  missing = {c: [n for n in required_files() if not (c / n).is_file()] for c in candidates}
  for folder in candidates:
    if not missing[folder]:
      return {n: _split_lines((folder / n).read_bytes(), str(folder / n))
              for n in required_files()}
  best = min(candidates, key=lambda c: len(missing[c]))
  raise FileNotFoundError(_missing_message(f'the folder {best}', missing[best]))


def _write_lines(path: Path, lines: Sequence[str]) -> None:
  with open(path, 'w', encoding='utf-8', newline='\n') as f:
    f.writelines(line + '\n' for line in lines)


def prepare(source: str | os.PathLike, out_dir: str | os.PathLike, *,
            bpe_merges: int = BPE_MERGES, progress: bool = False) -> dict:
  """Runs prepare-iwslt14.sh: writes `out_dir/tok/` and `out_dir/bpe10k/` from the release.

  Writes `tok/{train,valid,test}.{de,en}` (tokenized, lowercased), `<bpe>/code` and
  `<bpe>/{train,valid,test}.{de,en}` with `<bpe>` = `bpe_dir_name(bpe_merges)`, and
  `counts.json` (the returned counts). Everything is written to a hidden sibling folder that
  is renamed to `out_dir` at the end, so an interrupted run never leaves an `out_dir` (a run
  killed outright may leave its hidden `.<name>.partial-*` folder, which is safe to delete).

  Args:
    source: `de-en.tgz`, a folder holding it, or the extracted `de-en/` folder (see
      `read_release`).
    out_dir: the folder to create; it must not exist yet.
    bpe_merges: merge operations of the joint BPE (fairseq: 10,000).
    progress: show progress bars (tokenizing the ~174k train lines per language takes a while).

  Returns:
    Counts: `train_lines_read` and `train_tag_lines` (per language), `train_pairs_tokenized`,
    `removed_by_cleaning` and `removed_by_reason`, `train`/`valid`/`test` pairs,
    `test_sets` (pairs per set), `bpe_merges_requested`, `bpe_merges_learned`.

  Raises:
    FileExistsError: `out_dir` exists.
    FileNotFoundError: the release files are missing (see `read_release`).
    ValueError: the two sides of the train data or of a test set are not parallel.
  """
  out_dir = Path(out_dir).expanduser()
  if out_dir.exists():
    raise FileExistsError(f'{out_dir} already exists; prepare writes a new folder: remove it '
                          f'or choose another out_dir')
  release = read_release(source)
  counts = {'train_lines_read': {}, 'train_tag_lines': {}}

  tokenized = {}
  for lang in LANGS:
    raw = release[TRAIN_FILES[lang]]
    text = list(strip_train_tags(raw))
    counts['train_lines_read'][lang] = len(raw)
    counts['train_tag_lines'][lang] = len(raw) - len(text)
    tokenized[lang] = tokenize(text, lang, progress=progress)
  if len(tokenized['de']) != len(tokenized['en']):
    raise ValueError(
        f'after removing the metadata lines, {TRAIN_FILES["de"]} has {len(tokenized["de"])} '
        f'lines and {TRAIN_FILES["en"]} has {len(tokenized["en"])}; they must be parallel. '
        f'{WHERE_TO_GET}.')
  counts['train_pairs_tokenized'] = len(tokenized['de'])
  clean_de, clean_en, removed = clean_corpus(tokenized['de'], tokenized['en'], ratio=1.5,
                                             min_len=1, max_len=175)
  counts['removed_by_cleaning'] = sum(removed.values())
  counts['removed_by_reason'] = dict(sorted(removed.items()))

  splits = {split: {} for split in SPLITS}
  for lang, cleaned in (('de', clean_de), ('en', clean_en)):
    splits['train'][lang], splits['valid'][lang] = split_valid(lowercase(cleaned))
  counts['test_sets'] = {}
  for test_set in TEST_SETS:
    sides = {lang: tokenized_segments(release[xml_file(test_set, lang)], lang)
             for lang in LANGS}
    if len(sides['de']) != len(sides['en']):
      raise ValueError(f'{test_set} has {len(sides["de"])} German and {len(sides["en"])} '
                       f'English segments; the two XML files must be parallel. '
                       f'{WHERE_TO_GET}.')
    counts['test_sets'][test_set] = len(sides['de'])
    for lang in LANGS:
      splits['test'].setdefault(lang, []).extend(sides[lang])
  for split in SPLITS:
    counts[split] = len(splits[split]['de'])

  out_dir.parent.mkdir(parents=True, exist_ok=True)
  # A hidden sibling (same file system, so the final rename is atomic), made with mkdir rather
  # than mkdtemp so that the result gets the usual permissions.
  work = out_dir.parent / f'.{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}'
  work.mkdir()
  try:
    tok_dir, bpe_dir = work / 'tok', work / bpe_dir_name(bpe_merges)
    tok_dir.mkdir()
    bpe_dir.mkdir()
    for split in SPLITS:
      for lang in LANGS:
        _write_lines(tok_dir / f'{split}.{lang}', splits[split][lang])
    code = learn_bpe(splits['train']['de'] + splits['train']['en'], bpe_merges,
                     progress=progress)
    (bpe_dir / 'code').write_text(code, encoding='utf-8', newline='\n')
    counts['bpe_merges_requested'] = bpe_merges
    counts['bpe_merges_learned'] = code.count('\n') - 1  # Minus the '#version: 0.2' line.
    for split in SPLITS:
      for lang in LANGS:
        _write_lines(bpe_dir / f'{split}.{lang}',
                     apply_bpe(bpe_dir / 'code', splits[split][lang], progress=progress))
    (work / COUNTS_FILE).write_text(json.dumps(counts, indent=2) + '\n', encoding='utf-8')
    os.rename(work, out_dir)
  finally:
    if work.exists():
      shutil.rmtree(work)
  return counts


def read_pairs(prepared_dir: str | os.PathLike, split: str,
               subdir: str = bpe_dir_name(BPE_MERGES)) -> list[tuple[str, str]]:
  """The (de, en) line pairs of `split` in `prepared_dir/subdir` (a `prepare` output)."""
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; known: {", ".join(SPLITS)}')
  folder = Path(prepared_dir).expanduser() / subdir
  sides = {}
  for lang in LANGS:
    path = folder / f'{split}.{lang}'
    if not path.is_file():
      raise FileNotFoundError(f'{path} is missing; run data.iwslt14.prepare first')
    sides[lang] = _split_lines(path.read_bytes(), str(path))
  if len(sides['de']) != len(sides['en']):
    raise ValueError(f'{folder}/{split}.de has {len(sides["de"])} lines but {split}.en has '
                     f'{len(sides["en"])}; prepare the folder again')
  return list(zip(sides['de'], sides['en']))


def download(dest_dir: str | os.PathLike, *, url: str = DOWNLOAD_URL) -> Path:
  """Fetches `de-en.tgz` into `dest_dir` (needs the network; not exercised by the tests).

  Returns the archive's path; an archive already there is kept.
  """
  dest = Path(dest_dir).expanduser()
  dest.mkdir(parents=True, exist_ok=True)
  target = dest / ARCHIVE
  if not target.is_file():
    partial = dest / (ARCHIVE + '.partial')
    urllib.request.urlretrieve(url, partial)
    os.replace(partial, target)
  return target
