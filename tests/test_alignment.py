"""Tests for analysis/alignment.py: hand-computed AER, independent references, file formats,
error messages, and the RWTH German–English gold alignment when it is present."""

from __future__ import annotations

import fractions
from pathlib import Path

import numpy as np
import pytest

from analysis import alignment

RWTH = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'rwth-deen-alignment'
RWTH_SENTENCES = 508


# ---------------------------------------------------------------------------------------------
# AER


def test_aer_perfect_alignment_is_zero():
  sure = {(0, 0), (1, 2)}
  gold = [(sure, sure | {(2, 1)})]
  # |A∩S| = 2, |A∩P| = 2, |A| = 2, |S| = 2: AER = 1 − 4/4 = 0.
  scores = alignment.aer([set(sure)], gold)
  assert scores.aer == 0.0 and scores.precision == 1.0 and scores.recall == 1.0


def test_aer_link_only_in_possible():
  gold = [({(0, 0)}, {(0, 0), (1, 1)})]
  # A = {(1, 1)}: |A∩S| = 0, |A∩P| = 1, |A| = 1, |S| = 1: AER = 1 − 1/2 = 0.5, P = 1, R = 0.
  scores = alignment.aer([{(1, 1)}], gold)
  assert scores.aer == 0.5 and scores.precision == 1.0 and scores.recall == 0.0


def test_aer_empty_hypothesis():
  gold = [({(0, 0), (1, 1)}, {(0, 0), (1, 1)})]
  # |A| = 0: AER = 1 − 0/(0 + 2) = 1; precision is 0 by the module's convention.
  scores = alignment.aer([set()], gold)
  assert scores.aer == 1.0 and scores.precision == 0.0 and scores.recall == 0.0
  assert scores.hypothesis_links == 0 and scores.sure_links == 2


def test_aer_is_corpus_level_not_a_mean_of_sentences():
  gold = [({(0, 0)}, {(0, 0)}), ({(0, 0), (1, 1), (2, 2)}, {(0, 0), (1, 1), (2, 2), (2, 1)})]
  hyps = [{(0, 0)}, {(0, 0), (2, 1), (1, 0)}]
  # |A| = 1 + 3 = 4, |S| = 1 + 3 = 4, |A∩S| = 1 + 1 = 2, |A∩P| = 1 + 2 = 3:
  # AER = 1 − 5/8 = 3/8, precision 3/4, recall 2/4. Per sentence: 0 and 1 − 3/6 = 1/2, mean 1/4.
  scores = alignment.aer(hyps, gold)
  assert scores.aer == pytest.approx(3 / 8)
  assert scores.precision == pytest.approx(3 / 4) and scores.recall == pytest.approx(1 / 2)


def test_aer_counts_sure_links_as_possible_even_if_possible_omits_them():
  assert alignment.aer([{(0, 0)}], [({(0, 0)}, set())]).aer == 0.0


def _aer_reference(hyp_links, sure_links, possible_links):
  """Flat lists of (sentence, i, j); exact fractions; a link loop, no set algebra per sentence."""
  possible = set(possible_links) | set(sure_links)
  sure = set(sure_links)
  a = a_s = a_p = 0
  for link in set(hyp_links):
    a += 1
    a_s += link in sure
    a_p += link in possible
  s = len(sure)
  aer = 1 - fractions.Fraction(a_s + a_p, a + s)
  return aer, fractions.Fraction(a_p, a), fractions.Fraction(a_s, s)


@pytest.mark.parametrize('seed', range(20))
def test_aer_matches_flat_reference(seed):
  rng = np.random.default_rng(seed)
  hyps, golds, flat_h, flat_s, flat_p = [], [], [], [], []
  for n in range(int(rng.integers(1, 8))):
    size = int(rng.integers(1, 6))
    cells = [(i, j) for i in range(size) for j in range(size)]
    kind = rng.integers(0, 3, size=len(cells))  # 0 none, 1 sure, 2 possible only
    sure = {c for c, k in zip(cells, kind) if k == 1}
    possible = sure | {c for c, k in zip(cells, kind) if k == 2}
    hyp = {c for c in cells if rng.random() < 0.3} | {(0, 0)}
    hyps.append(hyp)
    golds.append((sure, possible))
    flat_h += [(n, i, j) for i, j in hyp]
    flat_s += [(n, i, j) for i, j in sure]
    flat_p += [(n, i, j) for i, j in possible - sure]
  if not flat_s:
    golds[0][0].add((0, 0))
    flat_s.append((0, 0, 0))
  scores = alignment.aer(hyps, golds)
  want = _aer_reference(flat_h, flat_s, flat_p)
  assert (scores.aer, scores.precision, scores.recall) == pytest.approx(
      tuple(float(x) for x in want), abs=1e-12)


def test_aer_errors():
  with pytest.raises(ValueError, match='2 hypothesis sentences but 1 gold'):
    alignment.aer([set(), set()], [({(0, 0)}, {(0, 0)})])
  with pytest.raises(ValueError, match='no sure links'):
    alignment.aer([{(0, 0)}], [(set(), {(0, 0)})])


# ---------------------------------------------------------------------------------------------
# Subwords to words


def test_word_ids_sentencepiece():
  pieces = ['▁Wir', '▁glaub', 'en', '▁nicht', '▁,']
  assert alignment.word_ids_sentencepiece(pieces) == [0, 1, 1, 2, 3]
  assert alignment.word_ids_sentencepiece(['▁', 'x', 'y']) == [0, 0, 0]  # lone ▁ begins the word
  assert alignment.word_ids_sentencepiece(['▁a', '▁', 'x', '▁b']) == [0, 1, 1, 2]
  assert alignment.word_ids_sentencepiece(['Wir', '▁glaub', 'en']) == [0, 1, 1]  # no dummy ▁
  assert alignment.word_ids_sentencepiece([]) == []


def test_word_ids_bpe():
  assert alignment.word_ids_bpe('wir glaub@@ en nicht'.split()) == [0, 1, 1, 2]
  assert alignment.word_ids_bpe('re@@ cher@@ che .'.split()) == [0, 0, 0, 1]
  assert alignment.word_ids_bpe([]) == []


def test_subword_word_ids_checks_words():
  words = ['Wir', 'glauben', 'nicht', ',']
  pieces = ['▁Wir', '▁glaub', 'en', '▁nicht', '▁,']
  assert alignment.subword_word_ids(pieces, words, scheme='sentencepiece', sentence=1) == [
      0, 1, 1, 2, 3]
  bpe = 'Wir glaub@@ en nicht ,'.split()
  assert alignment.subword_word_ids(bpe, words, scheme='bpe', sentence=1) == [0, 1, 1, 2, 3]
  with pytest.raises(ValueError, match=r'sentence 7: the 4 subwords make 3 words but the '
                     r'sentence has 4'):
    alignment.subword_word_ids(pieces[:4], words, scheme='sentencepiece', sentence=7)
  lowered = ['▁wir', '▁glaub', 'en', '▁nicht', '▁,']
  with pytest.raises(ValueError, match=r"sentence 3: word 1 is 'Wir' but its subwords join to "
                     r"'wir'"):
    alignment.subword_word_ids(lowered, words, scheme='sentencepiece', sentence=3)
  assert alignment.subword_word_ids(lowered, words, scheme='sentencepiece', sentence=3,
                                    compare_text=False) == [0, 1, 1, 2, 3]
  with pytest.raises(ValueError, match="unknown subword scheme 'wordpiece'; known: "
                     'sentencepiece, bpe'):
    alignment.subword_word_ids(pieces, words, scheme='wordpiece', sentence=1)


# ---------------------------------------------------------------------------------------------
# Subword matrix to word matrix, AWO / AWI, hard alignment


def test_word_level_matrix_by_hand():
  # Source pieces ▁a ▁b c (+ </s>): words a, bc. Target pieces ▁x y ▁z (+ </s>): words xy, z.
  m = np.array([[1., 2., 3., 4.],     # x
                [5., 6., 7., 8.],     # y
                [9., 10., 11., 12.],  # z
                [90., 91., 92., 93.]])  # step predicting </s>: dropped
  want = np.array([[(1 + 5) / 2, (2 + 3 + 6 + 7) / 2, (4 + 8) / 2],  # mean of x, y rows
                   [9., 10 + 11, 12.]])  # columns: a, b + c, </s>
  got = alignment.word_level_matrix(m, [0, 1, 1], [0, 0, 1])
  np.testing.assert_allclose(got, want)


def _word_level_reference(m, src_ids, tgt_ids):
  """Entry by entry: sum a source word's columns, mean a target word's rows, </s> column kept."""
  n_src, n_tgt = max(src_ids) + 1, max(tgt_ids) + 1
  out = np.zeros((n_tgt, n_src + 1))
  for w in range(n_tgt):
    rows = [r for r, ww in enumerate(tgt_ids) if ww == w]
    for v in range(n_src + 1):
      cols = [len(src_ids)] if v == n_src else [c for c, vv in enumerate(src_ids) if vv == v]
      out[w, v] = sum(m[r, c] for r in rows for c in cols) / len(rows)
  return out


def _random_ids(rng, n_words):
  return sorted(list(range(n_words)) + list(rng.integers(0, n_words, int(rng.integers(0, 5)))))


@pytest.mark.parametrize('seed', range(10))
def test_word_level_matrix_matches_reference(seed):
  rng = np.random.default_rng(seed)
  src_ids = _random_ids(rng, int(rng.integers(1, 6)))
  tgt_ids = _random_ids(rng, int(rng.integers(1, 6)))
  m = rng.random((len(tgt_ids) + 1, len(src_ids) + 1))
  got = alignment.word_level_matrix(m, src_ids, tgt_ids)
  np.testing.assert_allclose(got, _word_level_reference(m, src_ids, tgt_ids), rtol=1e-12)
  m2 = m.copy()
  m2[-1] = 1e6  # the </s> row does not reach the word matrix
  np.testing.assert_array_equal(alignment.word_level_matrix(m2, src_ids, tgt_ids), got)


def test_word_level_matrix_rejects_wrong_shape():
  with pytest.raises(ValueError, match=r'shape \(3, 3\), expected \(3, 4\)'):
    alignment.word_level_matrix(np.zeros((3, 3)), [0, 1, 1], [0, 1])
  with pytest.raises(ValueError, match='src_word_ids must count words from 0'):
    alignment.word_level_matrix(np.zeros((3, 4)), [0, 2, 2], [0, 1])


def test_awi_shift_3x3():
  m = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
  np.testing.assert_array_equal(alignment.awi_shift(m), [[4, 5, 6], [7, 8, 9], [1, 2, 3]])


def test_awi_shifts_before_the_merge():
  # Two target words of one piece each, two source words of one piece each. Decoder step 0 (fed
  # </s>) looks at source word 1, step 1 (fed x) at source word 0, step 2 (fed y) at word 1.
  m = np.array([[0., 1., 0.],
                [1., 0., 0.],
                [0., 1., 0.]])
  # AWO: row t predicts word t: x ← step 0 → source 1, y ← step 1 → source 0.
  assert alignment.extract_alignment(m, [0, 1], [0, 1], 'AWO') == {(1, 0), (0, 1)}
  # AWI: word t ← step t + 1: x ← step 1 → source 0, y ← step 2 → source 1.
  assert alignment.extract_alignment(m, [0, 1], [0, 1], 'AWI') == {(0, 0), (1, 1)}
  with pytest.raises(ValueError, match="unknown alignment setting 'AWX'; known: AWO, AWI"):
    alignment.extract_alignment(m, [0, 1], [0, 1], 'AWX')


def test_hard_alignment_argmax_and_eos():
  word_matrix = np.array([[0.1, 0.7, 0.2],   # target 0 → source 1
                          [0.2, 0.1, 0.7],   # target 1 → </s>: no link
                          [0.4, 0.4, 0.2]])  # target 2 → tie, first column: source 0
  assert alignment.hard_alignment(word_matrix) == {(1, 0), (0, 2)}


# ---------------------------------------------------------------------------------------------
# Files


def test_pharaoh_round_trip(tmp_path):
  alignments = [{(0, 0), (2, 1), (1, 1)}, set(), {(10, 3)}, set()]
  path = tmp_path / 'hyp.pharaoh'
  alignment.write_pharaoh(path, alignments)
  assert path.read_text().split('\n') == ['0-0 1-1 2-1', '', '10-3', '', '']
  assert alignment.read_pharaoh(path, len(alignments)) == alignments
  # Without the count, the final empty line reads as the trailing blank line.
  assert alignment.read_pharaoh(path) == alignments[:3]
  assert alignment.format_pharaoh([(3, 1), (0, 2), (0, 1)]) == '0-1 0-2 3-1'


def test_read_pharaoh_rejects_bad_links(tmp_path):
  path = tmp_path / 'hyp.pharaoh'
  path.write_text('0-0 1-1\n1p2\n')
  with pytest.raises(ValueError, match=r"hyp.pharaoh:2: bad link '1p2'; expected i-j"):
    alignment.read_pharaoh(path)


def test_read_talp(tmp_path):
  path = tmp_path / 'gold.talp'
  path.write_text('1-1 2p3 3-2 \n\n2-1\n\n')  # 3 sentences (the middle one empty), blank line
  gold = alignment.read_talp(path)
  assert gold == [({(0, 0), (2, 1)}, {(0, 0), (1, 2), (2, 1)}), (set(), set()),
                  ({(1, 0)}, {(1, 0)})]
  assert all(sure <= possible for sure, possible in gold)
  assert alignment.read_talp(path, 3) == gold
  # Told to expect one more, the final blank line is that sentence, with no links.
  assert alignment.read_talp(path, 4) == gold + [(set(), set())]
  with pytest.raises(ValueError, match='gold.talp has 3 sentences, expected 5'):
    alignment.read_talp(path, 5)


@pytest.mark.parametrize('token', ['0-1', '2x3', '1-2-3', '1-', 'a-b', '3P4'])
def test_read_talp_rejects_malformed_links(tmp_path, token):
  path = tmp_path / 'gold.talp'
  path.write_text(f'1-1\n2-2 {token}\n')
  with pytest.raises(ValueError, match=f"gold.talp:2: bad link '{token}'"):
    alignment.read_talp(path)


def test_read_sentences_encodings(tmp_path):
  path = tmp_path / 'de'
  path.write_bytes('Wir glauben , daß\nÜbel\n\n'.encode('latin-1'))
  with pytest.raises(ValueError, match='is not utf-8 text.*encoding="latin-1"'):
    alignment.read_sentences(path)
  assert alignment.read_sentences(path, encoding='latin-1') == [
      ['Wir', 'glauben', ',', 'daß'], ['Übel']]
  with pytest.raises(ValueError, match='has 2 sentences, expected 4'):
    alignment.read_sentences(path, 4, encoding='latin-1')


def test_check_gold_errors():
  sources = [['a', 'b'], ['c']]
  targets = [['x'], ['y', 'z']]
  names = ('deen.src.utf8', 'deen.tgt.utf8', 'alignmentDeEn.talp')
  gold = [({(1, 0)}, {(1, 0)}), ({(0, 1)}, {(0, 1), (0, 0)})]
  alignment.check_gold(sources, targets, gold, names=names)
  with pytest.raises(ValueError, match='alignmentDeEn.talp has 1 sentences but deen.src.utf8 '
                     'has 2'):
    alignment.check_gold(sources, targets, gold[:1], names=names)
  with pytest.raises(ValueError, match='alignmentDeEn.talp has 2 sentences but deen.tgt.utf8 '
                     'has 1'):
    alignment.check_gold(sources, targets[:1], gold, names=names)
  with pytest.raises(ValueError, match=r'alignmentDeEn.talp sentence 2: link 1-3 lies outside '
                     r'the sentence \(source has 1 words, target 2\)'):
    alignment.check_gold(sources, targets, [gold[0], ({(0, 2)}, {(0, 2)})], names=names)
  with pytest.raises(ValueError, match='sentence 1: link 3p1 lies outside'):
    alignment.check_gold(sources, targets, [({(1, 0)}, {(1, 0), (2, 0)}), gold[1]], names=names)


# ---------------------------------------------------------------------------------------------
# Real data: the RWTH German–English gold alignment


def _rwth(name: str) -> Path:
  path = RWTH / name
  if not path.exists():
    pytest.skip(f'RWTH gold alignment file {name} is missing; expected at {path}')
  return path


def test_rwth_gold_is_consistent():
  gold = alignment.read_talp(_rwth('alignmentDeEn.talp'), RWTH_SENTENCES)
  sources = alignment.read_sentences(_rwth('deen.src.utf8'), RWTH_SENTENCES)
  targets = alignment.read_sentences(_rwth('deen.tgt.utf8'), RWTH_SENTENCES)
  assert len(gold) == len(alignment.read_talp(_rwth('alignmentDeEn.talp'))) == RWTH_SENTENCES
  alignment.check_gold(sources, targets, gold,
                       names=('deen.src.utf8', 'deen.tgt.utf8', 'alignmentDeEn.talp'))
  assert all(sure <= possible for sure, possible in gold)
  assert all(sure for sure, _ in gold)  # every sentence has a sure link
  # The gold scores itself perfectly.
  assert alignment.aer([sure for sure, _ in gold], gold).aer == 0.0


def test_rwth_latin1_originals_equal_utf8_copies():
  for original, copy in (('de', 'deen.src.utf8'), ('en', 'deen.tgt.utf8')):
    assert _rwth(original).read_bytes().decode('latin-1') == _rwth(copy).read_text('utf-8')
    with pytest.raises(ValueError, match='not utf-8 text'):
      alignment.read_sentences(_rwth(original))


def _read_listing(path: Path) -> dict[int, dict[str, set[tuple[int, int]]]]:
  """The 0-based listing: `SENT: n` then `S i j` / `P i j` lines, a blank line between blocks."""
  blocks = {}
  for line in path.read_text('ascii').splitlines():
    fields = line.split()
    if not fields:
      continue
    if fields[0] == 'SENT:':
      current = blocks.setdefault(int(fields[1]), {'S': set(), 'P': set()})
    else:
      kind, i, j = fields
      current[kind].add((int(i), int(j)))
  return blocks


def test_rwth_listing_agrees_with_talp():
  gold = alignment.read_talp(_rwth('alignmentDeEn.talp'))
  listing = _read_listing(_rwth('alignmentDeEn'))
  assert sorted(listing) == list(range(RWTH_SENTENCES))
  differences = {}
  for n, (sure, possible) in enumerate(gold):
    if (listing[n]['S'], listing[n]['P']) != (sure, possible - sure):
      differences[n] = (listing[n]['S'] ^ sure, listing[n]['P'] ^ (possible - sure))
  # One known defect of the listing: sentence 178 (0-based) has `S 21 -100` where the talp file
  # has 22-1, i.e. (21, 0). Everything else agrees link for link.
  assert differences == {178: ({(21, -100), (21, 0)}, set())}
