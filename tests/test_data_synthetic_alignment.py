"""Synthetic alignment task: reproducible bytes, gold links right by construction, loadable.

The properties are checked against the generated files (lexicon.tsv, the BPE text and the talp
links), not against the generator's own helpers, so a bug in one is not repeated in the check.
"""

import json
from pathlib import Path

import ml_collections
import pytest

import data
from configs import alignment as alignment_config
from analysis import alignment as align_lib
from data import synthetic_alignment as sa
from data.translation import remove_bpe
from training import builders

SMALL = dict(num_words=40, num_train=300, num_valid=40, num_test=30)


def _data_config(tmp_path: Path, **options) -> ml_collections.ConfigDict:
  c = data.translation_data_config('synthetic_alignment')
  c.cache_dir = str(tmp_path / 'cache')
  c.synthetic.update(dict(SMALL, **options))
  return c


def _read_lexicon(directory: Path) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
  classes, translation = {}, {}
  for line in (directory / sa.LEXICON).read_text(encoding='utf-8').splitlines():
    word, cls, target = line.split('\t')
    classes[word], translation[word] = cls, tuple(target.split())
  return classes, translation


def _read_talp(path: Path) -> list[tuple[frozenset, frozenset]]:
  """The gold as 1-based (sure, possible) link sets, read by the analysis's own reader."""
  one_based = lambda links: frozenset((i + 1, j + 1) for i, j in links)
  return [(one_based(sure), one_based(possible)) for sure, possible in align_lib.read_talp(path)]


def _split(directory: Path, split: str):
  """(source words, target words, sure links) per sentence of `split`."""
  read = lambda suffix: (directory / f'{split}.{suffix}').read_text('utf-8').splitlines()
  src, tgt = read(sa.SRC_LANG), read(sa.TGT_LANG)
  gold = _read_talp(directory / f'{split}.{sa.GOLD_SUFFIX}')
  assert len(src) == len(tgt) == len(gold)
  return [(remove_bpe(s).split(), remove_bpe(t).split(), sure)
          for s, t, (sure, _) in zip(src, tgt, gold)]


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  directory = tmp_path_factory.mktemp('alignment') / 'corpus'
  return sa.generate(directory, dict(sa.options_config().to_dict(), **SMALL))


def test_generation_is_deterministic_byte_for_byte(tmp_path, corpus):
  again = sa.generate(tmp_path / 'again', dict(sa.options_config().to_dict(), **SMALL))
  files = sorted(p.name for p in corpus.iterdir())
  assert files == sorted(p.name for p in again.iterdir())
  assert {f'{s}.{x}' for s in sa.SPLIT_NAMES for x in ('xs', 'xt', 'talp')} <= set(files)
  for name in files:
    assert (corpus / name).read_bytes() == (again / name).read_bytes(), name
  other = sa.generate(tmp_path / 'seed1', dict(sa.options_config().to_dict(), **SMALL,
                                                 data_seed=1))
  assert (other / 'train.xs').read_bytes() != (corpus / 'train.xs').read_bytes()


def test_a_split_starts_the_same_whatever_its_size():
  o = dict(sa.options_config().to_dict(), **SMALL)
  assert sa.make_split(dict(o, num_test=50), 'test')[:30] == sa.make_split(o, 'test')


def test_the_lexicon_is_a_bijection_between_disjoint_vocabularies(corpus):
  classes, translation = _read_lexicon(corpus)
  assert len(classes) == SMALL['num_words']
  assert set(classes.values()) == {sa.NOUN, sa.ADJECTIVE, sa.VERB, sa.OTHER}
  heads = [t[0] for t in translation.values() if t]
  assert len(set(heads)) == len(heads)  # word for word
  assert not set(classes) & {w for t in translation.values() for w in t}
  assert all(w.isascii() and w.isalpha() and w.islower() for w in [*classes, *heads])
  many = [w for w, t in translation.items() if len(t) == 2]
  assert many and all(classes[w] == sa.NOUN for w in many)
  others = [w for w, c in classes.items() if c == sa.OTHER]
  particles = [w for w, t in translation.items() if not t]
  assert all(len(t) in (1, 2) for w, t in translation.items() if w not in particles)
  assert not particles and others   # particle_share = 0 by default


def test_particles_translate_into_nothing_and_leave_no_empty_target(tmp_path):
  corpus = sa.generate(tmp_path / 'particles', dict(sa.options_config().to_dict(), **SMALL,
                                                     particle_share=1.0))
  classes, translation = _read_lexicon(corpus)
  assert {w for w, t in translation.items() if not t} == {
      w for w, c in classes.items() if c == sa.OTHER}
  dropped = 0
  for src, tgt, links in _split(corpus, 'train'):
    assert tgt   # an all-particle sentence is drawn again
    unlinked = {i for i in range(1, len(src) + 1)} - {i for i, _ in links}
    assert unlinked == {i for i, w in enumerate(src, 1) if not translation[w]}
    assert [tgt[j - 1] for _, j in sorted(links, key=lambda l: l[1])] == tgt
    dropped += len(unlinked)
  assert dropped > SMALL['num_train'] // 4   # particles are really exercised


def test_inserted_particles_only_add_unlinked_particles(tmp_path):
  plain = sa.generate(tmp_path / 'plain', dict(sa.options_config().to_dict(), **SMALL,
                                                particle_share=1.0))
  dense = sa.generate(tmp_path / 'dense', dict(sa.options_config().to_dict(), **SMALL,
                                                particle_share=1.0, inserted_particles=0.5))
  classes, translation = _read_lexicon(dense)
  inserted, plain_train = 0, _split(plain, 'train')
  for (src0, tgt0, links0), (src, tgt, links) in zip(plain_train, _split(dense, 'train')):
    assert tgt == tgt0   # the same sentence, with more particles on the source side only
    kept = [i for i, w in enumerate(src, 1) if translation[w]]
    assert [src[i - 1] for i in kept] == [w for w in src0 if translation[w]]
    assert all(classes[w] == sa.OTHER for w in src if not translation[w])
    # the links are the plain sentence's, carried to the shifted source positions
    assert links == {(kept[k], j) for k, j in
                     ((sorted({i for i, _ in links0}).index(i), j) for i, j in links0)}
    inserted += len(src) - len(src0)
  # a geometric count of mean 0.5 / (1 - 0.5) = 1 after each word
  words = sum(len(s) for s, _, _ in plain_train)
  assert 0.8 * words < inserted < 1.2 * words


def test_free_order_swaps_whole_units_and_keeps_the_lexicon(tmp_path):
  corpus = sa.generate(tmp_path / 'free', dict(sa.options_config().to_dict(), **SMALL,
                                                free_order=0.5))
  classes, translation = _read_lexicon(corpus)
  free_swaps = 0
  for src, tgt, links in _split(corpus, 'train'):
    first = {}
    for i, j in sorted(links, key=lambda link: link[1]):
      first.setdefault(i, len(first))
    order = sorted(first, key=first.get)   # source positions (1-based) in target order
    assert sorted(order) == list(range(1, len(src) + 1))   # a permutation of the words
    assert ' '.join(w for i in order for w in translation[src[i - 1]]) == ' '.join(tgt)
    pairs = {(i, i + 1) for i in range(1, len(src))
             if (classes[src[i - 1]], classes[src[i]]) == (sa.ADJECTIVE, sa.NOUN)}
    for adj, noun in pairs:   # a noun + adjective unit stays whole, in that order
      assert order.index(adj) == order.index(noun) + 1
    free_swaps += sum(order[k] > order[k + 1] + 1 or (order[k] == order[k + 1] + 1 and
                                                       (order[k + 1], order[k]) not in pairs)
                      for k in range(len(order) - 1))
  assert free_swaps > SMALL['num_train'] // 4   # the free order is really exercised



def _read_tsv(path: Path) -> dict[str, str]:
  return dict(line.split('\t') for line in path.read_text(encoding='utf-8').splitlines())


@pytest.mark.parametrize('genders', [2, 3])
def test_agreement_marks_the_word_after_a_source_of_gender_g(tmp_path, corpus, genders):
  agreeing = sa.generate(tmp_path / 'agree', dict(sa.options_config().to_dict(), **SMALL,
                                                   agreement=genders))
  classes, translation = _read_lexicon(agreeing)
  gender = {w: int(g) for w, g in _read_tsv(agreeing / sa.GENDERS).items()}
  forms = {w: marked for w, *marked in (
      line.split('\t') for line in (agreeing / sa.FORMS).read_text(encoding='utf-8').splitlines())}
  assert set(gender) == set(classes)
  # groups of G of one class, in lexicon order, share the first one's target words
  for cls in set(classes.values()):
    members = [w for w in classes if classes[w] == cls]
    assert [gender[w] for w in members] == [k % genders for k in range(len(members))]
    for k, word in enumerate(members):
      assert translation[word] == translation[members[k - k % genders]]
  plain = {t for ts in translation.values() for t in ts}
  marked_words = [m for ms in forms.values() for m in ms]
  assert plain <= set(forms) and not set(marked_words) & (plain | set(classes))
  assert all(len(ms) == genders - 1 for ms in forms.values())
  assert len(set(marked_words)) == len(marked_words)
  _, own_translation = _read_lexicon(corpus)   # the lexicon without agreement
  marked = [0] * genders
  for (src, tgt, links), (src0, _, _) in zip(_split(agreeing, 'train'), _split(corpus, 'train')):
    assert src == src0   # the same source sentences (a group's one-to-many may move links)
    source_of = {j: i for i, j in links}
    for j in range(1, len(tgt) + 1):
      word = src[source_of[j] - 1]
      k = sum(source_of[jj] == source_of[j] for jj in range(1, j))   # its k-th target word
      base = translation[word][k]
      if gender[word] == 0:   # the first of a group keeps its own target words
        assert base == own_translation[word][k]
      g = gender[src[source_of[j - 1] - 1]] if j > 1 else 0
      assert tgt[j - 1] == (forms[base][g - 1] if g else base)
      marked[g] += 1
  assert min(marked) > SMALL['num_train'] // genders   # every form is really exercised


@pytest.mark.parametrize('split', sa.SPLIT_NAMES)
def test_gold_links_translate_each_source_word_into_its_target_words(corpus, split):
  _, translation = _read_lexicon(corpus)
  for src, tgt, links in _split(corpus, split):
    assert all(1 <= i <= len(src) and 1 <= j <= len(tgt) for i, j in links)
    assert sorted(j for _, j in links) == list(range(1, len(tgt) + 1))  # one link per target
    for i, word in enumerate(src, 1):
      linked = sorted(j for k, j in links if k == i)
      assert [tgt[j - 1] for j in linked] == list(translation[word])
      if linked:
        assert linked == list(range(linked[0], linked[0] + len(linked)))  # contiguous


def test_only_adjective_noun_pairs_swap_and_they_always_do(corpus):
  classes, _ = _read_lexicon(corpus)
  reordered = 0
  for src, _, links in _split(corpus, 'train'):
    first = {}
    for i, j in sorted(links, key=lambda link: link[1]):
      first.setdefault(i, len(first))   # target rank of source word i
    order = sorted(first, key=first.get)   # source positions (1-based) in target order
    swapped = {(order[k + 1], order[k]) for k in range(len(order) - 1)
               if order[k] == order[k + 1] + 1}
    pairs = {(i, i + 1) for i in range(1, len(src))
             if (classes[src[i - 1]], classes[src[i]]) == (sa.ADJECTIVE, sa.NOUN)}
    assert swapped == pairs
    unswapped = [i for i in order if not any(i in p for p in pairs)]
    assert unswapped == sorted(unswapped)
    reordered += bool(pairs)
  assert reordered > SMALL['num_train'] // 4   # the rule is really exercised


def test_bpe_is_a_fixed_rule_that_removing_the_marker_inverts(corpus):
  classes, translation = _read_lexicon(corpus)
  vocab = {sa.SRC_LANG: set(classes), sa.TGT_LANG: {w for t in translation.values() for w in t}}
  for lang, words in vocab.items():
    written, split_words = {}, 0
    for line in (corpus / f'train.{lang}').read_text('utf-8').splitlines():
      tokens = line.split(' ')
      assert all(tokens) and not tokens[-1].endswith('@@') and '@@' not in line.replace('@@ ', '')
      pieces, line_words = [], []
      for token in tokens:
        pieces.append(token)
        if not token.endswith('@@'):
          form, word = ' '.join(pieces), ''.join(p.removesuffix('@@') for p in pieces)
          assert word in words
          assert written.setdefault(word, form) == form  # one spelling per word
          split_words += len(pieces) > 1
          line_words.append(word)
          pieces = []
      assert remove_bpe(line).split() == line_words
    assert split_words > 0
    assert all(1 <= len(f.split()) <= 3 for f in written.values())


def test_the_loader_reads_the_generated_splits(tmp_path):
  config = alignment_config.get_config('size=tiny')
  config.data = _data_config(tmp_path)
  translation_data = builders.build_data(config)
  assert {s: translation_data.num_examples(s) for s in sa.SPLIT_NAMES} == {
      s: SMALL[f'num_{s}'] for s in sa.SPLIT_NAMES}
  assert (translation_data.src_lang, translation_data.tgt_lang) == (sa.SRC_LANG, sa.TGT_LANG)
  assert config.model.src_vocab_size == len(translation_data.src_vocab)
  src, tgt, talp = sa.gold_files(config.data, 'test')
  assert src.parent == tgt.parent == talp.parent
  assert src.parent.parent == tmp_path / 'cache' / sa.NAME
  assert translation_data.references('test') == [remove_bpe(t) for t in
                                                 tgt.read_text('utf-8').splitlines()]
  assert translation_data.sources('test') == [remove_bpe(s) for s in
                                              src.read_text('utf-8').splitlines()]
  assert len(_read_talp(talp)) == SMALL['num_test']


def test_a_given_data_dir_is_generated_once_and_checked(tmp_path):
  c = _data_config(tmp_path)
  c.dir = str(tmp_path / 'mine')
  src, _, _ = sa.gold_files(c, 'valid')
  assert src == tmp_path / 'mine' / 'valid.xs'
  stamp = src.stat().st_mtime_ns
  assert sa.gold_files(c, 'valid')[0].stat().st_mtime_ns == stamp  # reused, not rewritten
  c.synthetic.num_valid = 41
  with pytest.raises(ValueError, match='was generated with'):
    sa.prepare(c)
  (tmp_path / 'empty').mkdir()
  c.dir = str(tmp_path / 'empty')
  assert (sa.prepare(c) / 'valid.xs').is_file()  # an empty folder is filled
  (tmp_path / 'foreign').mkdir()
  (tmp_path / 'foreign' / 'notes.txt').write_text('x')
  c.dir = str(tmp_path / 'foreign')
  with pytest.raises(ValueError, match='no generator.json'):
    sa.prepare(c)


def test_configs_and_folders_from_before_the_later_options_still_match(tmp_path):
  old = _data_config(tmp_path)
  for key in ('particle_share', 'free_order', 'inserted_particles', 'agreement'):
    del old.synthetic[key]   # a workdir's config.json recorded before they existed
  assert sa.corpus_dir(old) == sa.corpus_dir(_data_config(tmp_path))
  new = _data_config(tmp_path, particle_share=0.5)
  assert sa.corpus_dir(new) != sa.corpus_dir(_data_config(tmp_path))
  # a folder whose generator.json lists every option at 0, as earlier versions wrote it
  old.dir = str(tmp_path / 'given')
  directory = sa.prepare(old)
  manifest = json.loads((directory / sa.MANIFEST).read_text())
  manifest['options'].update(particle_share=0.0, free_order=0.0)
  (directory / sa.MANIFEST).write_text(json.dumps(manifest))
  c = _data_config(tmp_path)
  c.dir = old.dir
  assert sa.prepare(c) == directory
  c.synthetic.inserted_particles, c.synthetic.particle_share = 0.3, 0.5
  with pytest.raises(ValueError, match='was generated with'):
    sa.prepare(c)


def test_a_failed_generation_leaves_no_folder(tmp_path, monkeypatch):
  def fail(options, split, lexicon=None):
    if split == 'test':
      raise RuntimeError('killed')
    return real(options, split, lexicon)
  real = sa.make_split
  monkeypatch.setattr(sa, 'make_split', fail)
  with pytest.raises(RuntimeError, match='killed'):
    sa.generate(tmp_path / 'corpus', dict(sa.options_config().to_dict(), **SMALL))
  assert list(tmp_path.iterdir()) == []


def test_bad_options_are_named():
  o = sa.options_config().to_dict()
  with pytest.raises(ValueError, match='num_words=5'):
    sa.check_options(dict(o, num_words=5))
  with pytest.raises(ValueError, match='min_words=9, max_words=3'):
    sa.check_options(dict(o, min_words=9, max_words=3))
  with pytest.raises(ValueError, match='num_test=0'):
    sa.check_options(dict(o, num_test=0))
  with pytest.raises(ValueError, match=r'particle_share=1.5: expected a share in \[0, 1\]'):
    sa.check_options(dict(o, particle_share=1.5))
  with pytest.raises(ValueError, match=r'free_order=1.0: expected a chance in \[0, 1\)'):
    sa.check_options(dict(o, free_order=1.0))
  with pytest.raises(ValueError, match=r'inserted_particles=1.0: expected a chance in \[0, 1\)'):
    sa.check_options(dict(o, particle_share=1.0, inserted_particles=1.0))
  with pytest.raises(ValueError, match='inserted_particles=0.2 needs particles'):
    sa.check_options(dict(o, inserted_particles=0.2))
  for bad in (1, -2, True, 'yes'):
    with pytest.raises(ValueError, match=f"agreement={bad!r}: expected 0 .off. or a number of "
                                         "genders ≥ 2"):
      sa.check_options(dict(o, agreement=bad))
  c = data.translation_data_config('synthetic_alignment')
  c.source = 'tfds'
  with pytest.raises(ValueError, match="must be 'files'"):
    data.build_translation_data(c)


def test_config_presets():
  for size in ('tiny', 'small'):
    c = alignment_config.get_config(f'size={size}')
    assert c.task == 'translation' and c.data.name == sa.NAME and c.data.vocab == 'separate'
    assert c.model.num_heads >= 2 and c.model.num_heads % 2 == 0
  assert alignment_config.get_config('steps=7').train_steps == 7
  with pytest.raises(ValueError, match='expected tiny or small'):
    alignment_config.get_config('size=paper')
