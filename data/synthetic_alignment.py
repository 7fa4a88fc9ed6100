"""A synthetic translation task whose word alignment is known by construction.

For checking word alignments read from a trained model's cross-attention (Kobayashi et al. 2020,
"Attention is Not Only a Weight", arXiv:2004.10102, §5: alignments extracted from the
encoder–decoder attention of a Transformer, scored with the alignment error rate against gold
links). Real gold alignments are few and hand-made; here every link is exact.

**The language pair** `xs` → `xt`, drawn from `data_seed`:
* a lexicon of `num_words` source words, lowercase syllables from `ptkmnslr` + `aeiou`
  ('ka', 'turo', 'mesilapo'), and as many target words from another alphabet (onsets
  `bdfghjvwz`, 'br', 'gl', …; 'vyd', 'glauxbo'), paired by a random bijection, so no word is
  shared by the two sides and nothing can be copied;
* classes by source word: 40% nouns, 20% adjectives, 20% verbs, 20% other words;
* one-to-many (`one_to_many`): every fifth noun translates into two target words, its own word
  followed by one of three classifier words ('…' → 'brox ju'); the classifiers are the only
  target words that translate no source word alone;
* particles (`particle_share`, default 0): that share of the words of the 'other' class (the
  first ones drawn) translate into nothing, as source function words without a counterpart do,
  so the offset between source and target positions drifts within a sentence;
* inserted particles (`inserted_particles`, default 0; needs `particle_share` > 0): once a
  sentence is translated, after each of its source words one more particle (uniform over the
  particles) follows with this chance, again and again (a geometric count, mean c / (1 − c));
  the target stays as it was, so the drift is larger and varies more;
* reordering, a deterministic local rule on the source words: read left to right, an adjective
  directly followed by a noun becomes noun, adjective ('pelo ka' = ADJ NOUN → 'vyd hau' = NOUN
  ADJ); every other word keeps its place. The true alignment is a permutation with local swaps
  (plus the one-to-many links);
* free order (`free_order`, default 0): after that rule, left to right, each unit (a word, or
  a swapped noun + adjective pair) changes places with the next one with this chance (a pair
  that changed places is not looked at again), so word order is no longer a function of the
  classes;
* agreement (`agreement`, default 0 = off; G ≥ 2 genders): the source words of each class come
  in groups of G (the first G, the next G, … in generation order, a shorter last group) that
  share the first one's target word(s) and differ in a gender the target does not show (0 for
  the first of a group, 1 for the second, …); every target word has G − 1 marked forms (words
  of their own, drawn after the rest of the lexicon), and a target word takes the g-th when the
  source word of the target word before it has gender g > 0. So the form of the next target
  word depends on the source of the word just written, which the word itself does not tell:
  the decoder has to look it up in the source, the mechanism that the alignment-with-input
  reading (AWI, one row shifted) finds in the paper's Europarl model. Groups are made last, so
  a particle's partners are particles too.

The first three default to 0. They make the task harder to solve by target position alone;
docs/analysis.md reports what they and agreement do to the alignments read from the
cross-attention.

A sentence of n words (n uniform in [`min_words`, `max_words`]) is a sequence of chunks drawn
with probabilities adjective+noun 0.3, noun 0.2, verb 0.2, adjective 0.1, other 0.2 (a pair
drawn for the last word is cut to its adjective), its words uniform within their class. The
target follows from the lexicon and the rule alone, so the task is a function a model can learn
exactly; the rule reads the surface, so a lone adjective chunk before a noun chunk swaps too.
A sentence whose words are all particles (an empty target) is drawn again.

**Subwords**: words of 3 or 4 syllables are written in subword-nmt BPE form, on both sides:
3 syllables → first syllable + the rest ('mesila' → 'me@@ sila'), 4 → first + second + the rest
('mesilapo' → 'me@@ si@@ lapo'). Deleting "@@ " gives the words back.

**Files** (one folder; `data.translation` reads it with `data.vocab='separate'`):
* `{train,valid,test}.{xs,xt}`: BPE text, one sentence per line;
* `{train,valid,test}.talp`: the gold word alignment of each line in the talp format,
  whitespace-separated 1-based `i-j` sure links (source word i, target word j; words are the
  whitespace words after removing "@@ "), sorted. This task has no possible (`ipj`) links: the
  alignment error rate is then 1 − 2|A∩S| / (|A| + |S|) (analysis/alignment.py reads them);
* `lexicon.tsv` (source word, class, target word(s); nothing after the class for a particle)
  and `generator.json` (the options and the generator version, checked when the folder is used
  again); with agreement also `agreement.tsv` (source word, gender) and `forms.tsv` (target
  word, then its G − 1 marked forms).

**Determinism**: the lexicon comes from `default_rng([data_seed, 0])`, split k (train, valid,
test) from `default_rng([data_seed, 1 + k])` (its inserted particles from
`default_rng([data_seed, 1 + k, 1])`) read sentence by sentence, so the same options give
the same bytes, and the first m sentences of a split do not depend on its size. The folder is
written under a temporary name beside its place and renamed into it (atomic on POSIX): a run
killed while writing leaves no folder that looks complete.

**Where**: `data.dir` when given (generated there when it is missing or empty; a folder generated
with other options is an error), else `<data cache>/synthetic_alignment/<key of the options>`
(data/cache.py: `data.cache_dir`, `$ATTENTION_LAB_CACHE`, …), rebuilt on demand when deleted.
The options added after the first version (particle, inserted-particle, free-order and
agreement) are left out of that key and of `generator.json` while 0 (off), and a config
recorded before one existed reads it as 0, so workdirs and folders made before an option was
added still match.
`gold_files(config.data, split)` returns a split's source, target and gold paths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import json
import os
from pathlib import Path
import shutil
import uuid

import ml_collections
import numpy as np

from data import cache

NAME = 'synthetic_alignment'
SRC_LANG, TGT_LANG = 'xs', 'xt'
GOLD_SUFFIX = 'talp'
SPLIT_NAMES = ('train', 'valid', 'test')
# Bump when the generated text changes for the same options: it is part of the folder's key.
GENERATOR_VERSION = 'synthetic-alignment-v1'
MANIFEST = 'generator.json'
LEXICON = 'lexicon.tsv'
GENDERS = 'agreement.tsv'    # with agreement only
FORMS = 'forms.tsv'          # with agreement only

NOUN, ADJECTIVE, VERB, OTHER = 'noun', 'adjective', 'verb', 'other'
_CLASS_SHARES = ((NOUN, 0.4), (ADJECTIVE, 0.2), (VERB, 0.2), (OTHER, 0.2))
_CHUNKS = ((ADJECTIVE, NOUN), (NOUN,), (VERB,), (ADJECTIVE,), (OTHER,))
_CHUNK_P = (0.3, 0.2, 0.2, 0.1, 0.2)
_ONE_TO_MANY_EVERY = 5   # every fifth noun has two target words
_NUM_CLASSIFIERS = 3
MIN_WORDS = 20           # each class has at least 4 words
MAX_WORDS = 5000         # far below the 2- to 4-syllable forms available on either side

_SRC_ONSETS = tuple('ptkmnslr')
_SRC_VOWELS = tuple('aeiou')
_SRC_SYLLABLE_P = (0.1, 0.45, 0.3, 0.15)   # words of 1, 2, 3, 4 syllables
_TGT_ONSETS = ('b', 'd', 'f', 'g', 'h', 'j', 'v', 'w', 'z', 'br', 'dr', 'gr', 'fl', 'gl')
_TGT_VOWELS = ('a', 'e', 'i', 'o', 'u', 'y', 'au', 'ei')
_TGT_CODAS = ('', '', '', 'x', 'n', 'd')
_TGT_SYLLABLE_P = (0.25, 0.5, 0.25)        # words of 1, 2, 3 syllables


def options_config() -> ml_collections.ConfigDict:
  """`config.data.synthetic`: what the generated corpus is (see the module docstring)."""
  c = ml_collections.ConfigDict()
  c.data_seed = 0           # lexicon and sentences
  c.num_words = 300         # source word types (as many target words, plus 3 classifiers)
  c.num_train = 30_000      # sentence pairs per split
  c.num_valid = 500
  c.num_test = 500
  c.min_words = 4           # source words per sentence, uniform in [min_words, max_words]
  c.max_words = 14
  c.one_to_many = True      # every fifth noun translates into two target words
  c.particle_share = 0.0    # share of the 'other' words that translate into nothing
  c.free_order = 0.0        # chance that two neighbouring units change places
  c.inserted_particles = 0.0   # chance of one more particle after each source word, repeated
  c.agreement = 0           # genders (≥ 2; 0 off): a target word's form shows the gender of
                            # the source of the word before it
  return c


# Options added after the first version, with the value that writes the text of the versions
# before them. A config recorded before one existed (a workdir's config.json) gets that value,
# and at that value an option is left out of the folder's key and of its manifest, so that the
# folders and workdirs of earlier versions are still found and still match.
_ADDED_LATER = {'particle_share': 0.0, 'free_order': 0.0, 'inserted_particles': 0.0,
                'agreement': 0}


def _with_later_defaults(options: ml_collections.ConfigDict | dict) -> dict:
  """`options` with the options added later filled in where missing (`_ADDED_LATER`)."""
  return {**_ADDED_LATER, **dict(options)}


def _recorded(options: dict) -> dict:
  """The options that tell corpora apart: those added later are dropped at their old value."""
  return {k: v for k, v in options.items() if not (k in _ADDED_LATER and v == _ADDED_LATER[k])}


def check_options(options: ml_collections.ConfigDict | dict) -> None:
  """Raises a one-line ValueError naming the first option that cannot make a corpus."""
  o = dict(options)
  expected = set(options_config().keys())
  if set(o) != expected:
    raise ValueError(f'data.synthetic has the keys {sorted(o)}; expected {sorted(expected)}')
  if not MIN_WORDS <= o['num_words'] <= MAX_WORDS:
    raise ValueError(f'data.synthetic.num_words={o["num_words"]}: expected {MIN_WORDS} to '
                     f'{MAX_WORDS} word types')
  for split in SPLIT_NAMES:
    if o[f'num_{split}'] < 1:
      raise ValueError(f'data.synthetic.num_{split}={o[f"num_{split}"]}: expected at least 1 '
                       f'sentence pair')
  if not 1 <= o['min_words'] <= o['max_words']:
    raise ValueError(f'data.synthetic.min_words={o["min_words"]}, max_words={o["max_words"]}: '
                     f'expected 1 ≤ min_words ≤ max_words')
  if not 0 <= o['free_order'] < 1:
    raise ValueError(f'data.synthetic.free_order={o["free_order"]}: expected a chance in [0, 1)')
  if not 0 <= o['particle_share'] <= 1:
    raise ValueError(f'data.synthetic.particle_share={o["particle_share"]}: expected a share '
                     f'in [0, 1]')
  if not 0 <= o['inserted_particles'] < 1:
    raise ValueError(f'data.synthetic.inserted_particles={o["inserted_particles"]}: expected a '
                     f'chance in [0, 1)')
  if o['inserted_particles'] and not o['particle_share']:
    raise ValueError(f'data.synthetic.inserted_particles={o["inserted_particles"]} needs '
                     f'particles: expected data.synthetic.particle_share > 0')
  g = o['agreement']
  if isinstance(g, bool) or not isinstance(g, int) or g < 0 or g == 1:
    raise ValueError(f'data.synthetic.agreement={g!r}: expected 0 (off) or a number of '
                     f'genders ≥ 2')
  if o['data_seed'] < 0:
    raise ValueError(f'data.synthetic.data_seed={o["data_seed"]}: expected a seed ≥ 0')


# ------------------------------------------------------------------------------------ lexicon


@dataclasses.dataclass(frozen=True)
class Lexicon:
  """The word-for-word dictionary of one seed.

  Attributes:
    source: source word types, in generation order.
    word_class: source word → NOUN, ADJECTIVE, VERB or OTHER.
    translation: source word → its target word(s) (two for a one-to-many noun, none for a
      particle).
    pieces: every word of either side → its BPE pieces without the "@@" marker.
    gender: with agreement, source word → its gender, 0 … G − 1 (its place in the group of G
      that shares one target translation); empty without.
    marked_form: with agreement, target word → its G − 1 marked forms, the g-th taken after a
      word whose source has gender g; empty without.
  """
  source: tuple[str, ...]
  word_class: dict[str, str]
  translation: dict[str, tuple[str, ...]]
  pieces: dict[str, tuple[str, ...]]
  gender: dict[str, int] = dataclasses.field(default_factory=dict)
  marked_form: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

  def by_class(self, word_class: str) -> tuple[str, ...]:
    return tuple(w for w in self.source if self.word_class[w] == word_class)


def _bpe_pieces(syllables: Sequence[str]) -> tuple[str, ...]:
  """The fixed subword rule: ≤ 2 syllables stay whole; 3 → 1 + 2; 4 → 1 + 1 + 2."""
  if len(syllables) <= 2:
    return (''.join(syllables),)
  head = tuple(syllables[:len(syllables) - 2])
  return head + (''.join(syllables[-2:]),)


def _draw_words(rng: np.random.Generator, count: int,
                syllable: Callable[[np.random.Generator], str], syllable_p: Sequence[float],
                taken: set[str]) -> list[tuple[str, tuple[str, ...]]]:
  """`count` new words (and their syllables), none in `taken`; adds them to `taken`."""
  out = []
  while len(out) < count:
    n = 1 + int(rng.choice(len(syllable_p), p=syllable_p))
    syllables = tuple(syllable(rng) for _ in range(n))
    word = ''.join(syllables)
    if word not in taken:
      taken.add(word)
      out.append((word, syllables))
  return out


def _src_syllable(rng: np.random.Generator) -> str:
  return _SRC_ONSETS[rng.integers(len(_SRC_ONSETS))] + _SRC_VOWELS[rng.integers(len(_SRC_VOWELS))]


def _tgt_syllable(rng: np.random.Generator) -> str:
  return (_TGT_ONSETS[rng.integers(len(_TGT_ONSETS))] +
          _TGT_VOWELS[rng.integers(len(_TGT_VOWELS))] + _TGT_CODAS[rng.integers(len(_TGT_CODAS))])


def make_lexicon(data_seed: int, num_words: int, one_to_many: bool = True,
                 particle_share: float = 0.0, agreement: int = 0) -> Lexicon:
  """The lexicon of `data_seed`: `num_words` source ↔ target words, classes, BPE pieces (and,
  with `agreement` = G ≥ 2 genders, genders and marked forms; the rest is the same with or
  without)."""
  rng = np.random.default_rng([data_seed, 0])
  taken: set[str] = set()
  source = _draw_words(rng, num_words, _src_syllable, _SRC_SYLLABLE_P, taken)
  target = _draw_words(rng, num_words + _NUM_CLASSIFIERS, _tgt_syllable, _TGT_SYLLABLE_P, taken)
  classifiers = [w for w, _ in target[num_words:]]
  target = [target[i] for i in rng.permutation(num_words)]   # the random bijection
  bounds = np.cumsum([0] + [round(share * num_words) for _, share in _CLASS_SHARES])
  bounds[-1] = num_words
  word_class, translation, pieces = {}, {}, {}
  for k, ((src, src_syllables), (tgt, tgt_syllables)) in enumerate(zip(source, target)):
    cls = _CLASS_SHARES[int(np.searchsorted(bounds, k, side='right')) - 1][0]
    word_class[src] = cls
    translation[src] = (tgt,)
    pieces[src], pieces[tgt] = _bpe_pieces(src_syllables), _bpe_pieces(tgt_syllables)
  for w in classifiers:
    pieces[w] = (w,)
  if one_to_many:
    nouns = [w for w, _ in source if word_class[w] == NOUN]
    for n, noun in enumerate(nouns[::_ONE_TO_MANY_EVERY]):
      translation[noun] += (classifiers[n % _NUM_CLASSIFIERS],)
  others = [w for w, _ in source if word_class[w] == OTHER]
  for particle in others[:round(particle_share * len(others))]:
    translation[particle] = ()
  gender, marked_form = {}, {}
  if agreement:
    for cls, _ in _CLASS_SHARES:
      members = [w for w, _ in source if word_class[w] == cls]
      for k, word in enumerate(members):
        gender[word] = k % agreement
        translation[word] = translation[members[k - k % agreement]]
    plain = [w for w, _ in target] + classifiers
    forms = _draw_words(rng, (agreement - 1) * len(plain), _tgt_syllable, _TGT_SYLLABLE_P, taken)
    for n, word in enumerate(plain):
      mine = forms[(agreement - 1) * n:(agreement - 1) * (n + 1)]
      marked_form[word] = tuple(form for form, _ in mine)
      pieces.update((form, _bpe_pieces(syllables)) for form, syllables in mine)
  return Lexicon(tuple(w for w, _ in source), word_class, translation, pieces, gender,
                 marked_form)


# ---------------------------------------------------------------------------------- sentences


def _units(classes: Sequence[str]) -> list[list[int]]:
  """Source positions in target order, grouped: left to right, adjective + noun → one unit
  [noun, adjective]; every other word a unit of its own."""
  units, i = [], 0
  while i < len(classes):
    if i + 1 < len(classes) and classes[i] == ADJECTIVE and classes[i + 1] == NOUN:
      units.append([i + 1, i])
      i += 2
    else:
      units.append([i])
      i += 1
  return units


def reorder(classes: Sequence[str], free_swaps: Sequence[bool] = ()) -> list[int]:
  """Source positions in target order: adjective + noun → noun + adjective; then, left to right,
  unit k changes places with unit k + 1 where `free_swaps[k]` (and the pair is not looked at
  again)."""
  units, k = _units(classes), 0
  while k + 1 < len(units):
    if k < len(free_swaps) and free_swaps[k]:
      units[k], units[k + 1] = units[k + 1], units[k]
      k += 2
    else:
      k += 1
  return [i for unit in units for i in unit]


def insert_particles(words: Sequence[str], particles: Sequence[str], chance: float,
                     rng: np.random.Generator) -> tuple[list[str], list[int]]:
  """(`words` with, after each word, one more of `particles` with `chance`, repeated
  (geometric); the 0-based position of each of `words` in it)."""
  out, positions = [], []
  for word in words:
    positions.append(len(out))
    out.append(word)
    while rng.random() < chance:
      out.append(particles[int(rng.integers(len(particles)))])
  return out, positions


def translate(lexicon: Lexicon, words: Sequence[str], free_swaps: Sequence[bool] = ()
              ) -> tuple[list[str], list[tuple[int, int]]]:
  """(target words, gold links): links are 1-based (source word i, target word j), sorted."""
  target, links = [], []
  g = 0   # the gender of the source of the target word before (0 without agreement)
  for i in reorder([lexicon.word_class[w] for w in words], free_swaps):
    for t in lexicon.translation[words[i]]:
      target.append(lexicon.marked_form[t][g - 1] if g else t)
      links.append((i + 1, len(target)))
      g = lexicon.gender.get(words[i], 0)
  return target, sorted(links)


def to_bpe(lexicon: Lexicon, words: Sequence[str]) -> str:
  """Words → a line of BPE tokens, pieces joined by the subword-nmt marker "@@ "."""
  return ' '.join('@@ '.join(lexicon.pieces[w]) for w in words)


def talp_line(links: Sequence[tuple[int, int]], possible: Sequence[tuple[int, int]] = ()) -> str:
  """Sure links as `i-j`, possible-only links as `ipj`, whitespace-separated."""
  return ' '.join([f'{i}-{j}' for i, j in links] + [f'{i}p{j}' for i, j in possible])


def source_sentences(lexicon: Lexicon, rng: np.random.Generator, count: int, min_words: int,
                     max_words: int) -> list[list[str]]:
  """`count` source sentences of the chunk grammar (module docstring), read from `rng`."""
  classes = {c: lexicon.by_class(c) for c, _ in _CLASS_SHARES}
  out = []
  while len(out) < count:
    length = int(rng.integers(min_words, max_words + 1))
    chunks = rng.choice(len(_CHUNKS), size=length, p=_CHUNK_P)
    picks = rng.random(length)
    kinds: list[str] = []
    for c in chunks.tolist():
      if len(kinds) == length:
        break
      kinds += _CHUNKS[c][:length - len(kinds)]   # a pair drawn for the last word: its adjective
    words = [classes[k][int(u * len(classes[k]))] for k, u in zip(kinds, picks.tolist())]
    if any(lexicon.translation[w] for w in words):   # else all particles: an empty target
      out.append(words)
  return out


def make_split(options: ml_collections.ConfigDict | dict, split: str,
               lexicon: Lexicon | None = None) -> list[tuple[str, str, str]]:
  """(source BPE line, target BPE line, talp line) of every pair of `split`."""
  o = dict(options)
  if split not in SPLIT_NAMES:
    raise ValueError(f'unknown split {split!r}; expected one of {", ".join(SPLIT_NAMES)}')
  lexicon = lexicon or _lexicon(o)
  rng = np.random.default_rng([o['data_seed'], 1 + SPLIT_NAMES.index(split)])
  # A stream of its own, so that the sentences drawn do not depend on this option.
  insert_rng = np.random.default_rng([o['data_seed'], 1 + SPLIT_NAMES.index(split), 1])
  particles = [w for w in lexicon.source if not lexicon.translation[w]]
  out = []
  for words in source_sentences(lexicon, rng, o[f'num_{split}'], o['min_words'],
                                o['max_words']):
    swaps = rng.random(len(words)) < o['free_order'] if o['free_order'] else ()
    target, links = translate(lexicon, words, swaps)
    if o['inserted_particles']:   # after translating: the target and its order stay as they are
      words, positions = insert_particles(words, particles, o['inserted_particles'], insert_rng)
      links = [(positions[i - 1] + 1, j) for i, j in links]
    out.append((to_bpe(lexicon, words), to_bpe(lexicon, target), talp_line(links)))
  return out


def _lexicon(options: dict) -> Lexicon:
  o = _with_later_defaults(options)
  return make_lexicon(o['data_seed'], o['num_words'], o['one_to_many'], o['particle_share'],
                      o['agreement'])


# ------------------------------------------------------------------------------------- folder


def _manifest(options: dict) -> dict:
  return {'name': NAME, 'version': GENERATOR_VERSION, 'options': _recorded(options),
          'src_lang': SRC_LANG, 'tgt_lang': TGT_LANG}


def _write_text(path: Path, lines: Sequence[str]) -> None:
  with open(path, 'w', encoding='utf-8', newline='\n') as f:
    f.writelines(line + '\n' for line in lines)


def generate(directory: str | os.PathLike, options: ml_collections.ConfigDict | dict) -> Path:
  """Writes the corpus of `options` to `directory` (which must be missing or empty), atomically.

  Returns `directory`. If another process completed the same folder first, theirs is kept.
  """
  o = dict(options)
  check_options(o)
  directory = Path(directory)
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = directory.parent / f'.tmp-{directory.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}'
  tmp.mkdir()
  try:
    lexicon = _lexicon(o)
    for split in SPLIT_NAMES:
      rows = make_split(o, split, lexicon)
      for k, suffix in enumerate((SRC_LANG, TGT_LANG, GOLD_SUFFIX)):
        _write_text(tmp / f'{split}.{suffix}', [row[k] for row in rows])
    _write_text(tmp / LEXICON, [f'{w}\t{lexicon.word_class[w]}\t{" ".join(lexicon.translation[w])}'
                                for w in lexicon.source])
    if lexicon.gender:
      _write_text(tmp / GENDERS, [f'{w}\t{lexicon.gender[w]}' for w in lexicon.source])
      _write_text(tmp / FORMS, ['\t'.join((w,) + m) for w, m in lexicon.marked_form.items()])
    (tmp / MANIFEST).write_text(json.dumps(_manifest(o), indent=1, sort_keys=True) + '\n',
                                encoding='utf-8')
    try:
      os.rename(tmp, directory)   # replaces an empty folder; fails on a full one
    except OSError:
      if not (directory / MANIFEST).is_file():
        raise
      shutil.rmtree(tmp, ignore_errors=True)   # another process finished the same folder
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory


def _options(data_config: ml_collections.ConfigDict) -> dict:
  if data_config.get('name') != NAME or 'synthetic' not in data_config:
    raise ValueError(f'data.name={data_config.get("name")!r}: expected a {NAME!r} block '
                     f'(data.translation_data_config({NAME!r}))')
  o = _with_later_defaults(data_config.synthetic.to_dict())
  check_options(o)
  return o


def corpus_dir(data_config: ml_collections.ConfigDict) -> Path:
  """Where the corpus of `data_config` lives: `data.dir`, else its folder in the data cache."""
  o = _options(data_config)
  if data_config.dir:
    from data import resolve_data_dir  # pylint: disable=g-import-not-at-top  (data imports us)
    return resolve_data_dir(data_config.dir)
  key = cache.fingerprint([], version=GENERATOR_VERSION, **_recorded(o))
  return cache.resolve_cache_dir(data_config.cache_dir) / NAME / key


def prepare(data_config: ml_collections.ConfigDict) -> Path:
  """The corpus folder of `data_config`, generated first if it is missing or empty."""
  o = _options(data_config)
  directory = corpus_dir(data_config)
  if directory.is_dir() and any(directory.iterdir()):
    manifest = directory / MANIFEST
    if not manifest.is_file():
      raise ValueError(f'data.dir {directory} holds files but no {MANIFEST}; expected a folder '
                       f'generated by data/synthetic_alignment.py, or a missing or empty one')
    found = json.loads(manifest.read_text(encoding='utf-8'))
    if found.get('options') is not None:   # earlier versions listed later options at 0
      found = dict(found, options=_recorded(found['options']))
    if found != _manifest(o):
      raise ValueError(f'{directory} was generated with {found.get("version")} '
                       f'{found.get("options")}; expected {GENERATOR_VERSION} {o} '
                       f'(data.synthetic): use another data.dir, or delete that folder')
    return directory
  return generate(directory, o)


def gold_files(data_config: ml_collections.ConfigDict, split: str) -> tuple[Path, Path, Path]:
  """(source BPE text, target BPE text, gold talp alignment) of `split`, generating if needed."""
  if split not in SPLIT_NAMES:
    raise ValueError(f'unknown split {split!r}; expected one of {", ".join(SPLIT_NAMES)}')
  directory = prepare(data_config)
  paths = tuple(directory / f'{split}.{s}' for s in (SRC_LANG, TGT_LANG, GOLD_SUFFIX))
  for path in paths:
    if not path.is_file():
      raise FileNotFoundError(f'{path} is missing from the generated corpus {directory}; '
                              f'delete that folder to generate it again')
  return paths
