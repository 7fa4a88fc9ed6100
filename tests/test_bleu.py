"""Tests for training/bleu.py: hand-computed values, an exact reference, sacreBLEU on real text."""

from __future__ import annotations

import collections
import fractions
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
import sacremoses
from hypothesis import given, settings
from hypothesis import strategies as st

from training import bleu

DATA = Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data'
IWSLT_TEST_EN = DATA / 'iwslt14-de-en' / 'tok' / 'test.en'
NEWSTEST2014_DE = DATA / 'wmt14-en-de' / 'newstest2014.de'
NOISE_LEVELS = (0.0, 0.05, 0.2, 0.5, 0.9)


def _read_lines(path: Path) -> list[str]:
  if not path.exists():
    pytest.skip(f'shared data file {path.name} is missing; expected at {path}')
  return path.read_text(encoding='utf-8').split('\n')[:-1]


@pytest.fixture(scope='module')
def iwslt_refs() -> list[str]:
  return _read_lines(IWSLT_TEST_EN)


@pytest.fixture(scope='module')
def newstest_raw() -> list[str]:
  return _read_lines(NEWSTEST2014_DE)


@pytest.fixture(scope='module')
def newstest_tok(newstest_raw) -> list[str]:
  return bleu.tokenize(newstest_raw, 'de')


def _perturb(references: list[str], noise: float, seed: int) -> list[str]:
  """System-like outputs: words dropped, duplicated, swapped, replaced; truncations; empty lines."""
  rng = np.random.default_rng(seed)
  vocab = sorted({w for line in references for w in line.split()})
  out = []
  for line in references:
    if rng.random() < noise * 0.02:
      out.append('')
      continue
    words = []
    for w in line.split():
      u = rng.random()
      if u < noise * 0.25:
        continue  # drop
      words.append(vocab[rng.integers(len(vocab))] if u < noise * 0.5 else w)
      if u > 1 - noise * 0.1:
        words.append(w)  # duplicate
    for i in range(len(words) - 1):
      if rng.random() < noise * 0.1:
        words[i], words[i + 1] = words[i + 1], words[i]
    if words and rng.random() < noise * 0.3:
      words = words[:rng.integers(len(words))]
    out.append(' '.join(words))
  return out


def _unsmoothed_sacrebleu(hypotheses, references):
  return sacrebleu.metrics.BLEU(tokenize='none', smooth_method='none', force=True).corpus_score(
      hypotheses, [references])


def _assert_equals_sacrebleu(ours: bleu.Bleu, theirs) -> None:
  assert ours.score == pytest.approx(theirs.score, rel=1e-9, abs=1e-12)
  assert ours.precisions == pytest.approx(theirs.precisions, rel=1e-9, abs=1e-12)
  assert ours.brevity_penalty == pytest.approx(theirs.bp, rel=1e-9, abs=1e-12)
  assert (ours.hyp_len, ours.ref_len) == (theirs.sys_len, theirs.ref_len)
  assert list(ours.correct) == list(theirs.counts)
  assert list(ours.total) == list(theirs.totals)


# Known exact values.


def test_perfect_match_is_100():
  result = bleu.corpus_bleu(['a b c d e', 'f g h i'], ['a b c d e', 'f g h i'])
  assert result.score == pytest.approx(100.0, rel=1e-15)
  assert result.precisions == (100.0, 100.0, 100.0, 100.0)
  assert (result.brevity_penalty, result.ratio) == (1.0, 1.0)


def test_brevity_penalty_is_exp_of_one_minus_r_over_c():
  # Every hypothesis n-gram matches; only the 4 vs 6 tokens cost.
  result = bleu.corpus_bleu(['a b c d'], ['a b c d e f'])
  assert result.precisions == (100.0, 100.0, 100.0, 100.0)
  assert result.brevity_penalty == pytest.approx(math.exp(1 - 6 / 4), rel=1e-15)
  assert result.score == pytest.approx(100 * math.exp(-0.5), rel=1e-15)
  assert result.ratio == pytest.approx(4 / 6)


def test_longer_hypothesis_has_no_brevity_penalty():
  result = bleu.corpus_bleu(['a b c d e f'], ['a b c d'])
  assert result.brevity_penalty == 1.0
  assert result.ratio == pytest.approx(1.5)


def test_zero_four_gram_precision_gives_zero_without_smoothing():
  result = bleu.corpus_bleu(['a b c d'], ['a b c e d'])
  assert result.correct == (4, 2, 1, 0)
  assert result.precisions[3] == 0.0
  assert result.score == 0.0


def test_hand_computed_fractions_with_clipping_and_corpus_sums():
  # Sentence 1: hyp 'a b c d a b' vs ref 'a b c d e'.
  #   1-grams a,a,b,b,c,d: a and b clipped to 1 each -> 4/6.
  #   2-grams ab,bc,cd,da,ab: ab clipped to 1, da absent -> 3/5.
  #   3-grams abc,bcd,cda,dab -> 2/4.  4-grams abcd,bcda,cdab -> 1/3.
  one = bleu.corpus_bleu(['a b c d a b'], ['a b c d e'])
  assert one.correct == (4, 3, 2, 1) and one.total == (6, 5, 4, 3)
  assert one.brevity_penalty == 1.0
  assert one.score == pytest.approx(100 * (1 / 15) ** 0.25, rel=1e-14)
  # Sentence 2: hyp 'x y' vs ref 'x y z w' adds 2/2, 1/1, 0/0, 0/0; c = 8, r = 9. Corpus BLEU
  # sums the statistics (it is not a mean of sentence BLEUs, which would be 0 here).
  two = bleu.corpus_bleu(['a b c d a b', 'x y'], ['a b c d e', 'x y z w'])
  assert two.correct == (6, 4, 2, 1) and two.total == (8, 6, 4, 3)
  assert (two.hyp_len, two.ref_len) == (8, 9)
  assert two.precisions == pytest.approx((75.0, 200 / 3, 50.0, 100 / 3), rel=1e-15)
  assert two.brevity_penalty == pytest.approx(math.exp(-1 / 8), rel=1e-15)
  assert two.score == pytest.approx(100 * math.exp(-1 / 8) * (1 / 12) ** 0.25, rel=1e-14)
  assert two.format() == ('BLEU = 47.42, 75.0/66.7/50.0/33.3 (BP=0.882, ratio=0.889, '
                          'hyp_len=8, ref_len=9)')


def test_summed_shard_statistics_equal_the_whole_corpus():
  hyps, refs = ['a b c d a b', 'x y', 'a b'], ['a b c d e', 'x y z w', 'a b c']
  shards = [bleu.corpus_bleu(hyps[:2], refs[:2]), bleu.corpus_bleu(hyps[2:], refs[2:])]
  summed = bleu.bleu_from_counts(
      [sum(x) for x in zip(*(s.correct for s in shards))],
      [sum(x) for x in zip(*(s.total for s in shards))],
      sum(s.hyp_len for s in shards), sum(s.ref_len for s in shards))
  assert summed == bleu.corpus_bleu(hyps, refs)
  with pytest.raises(ValueError, match='4 n-gram orders'):
    bleu.bleu_from_counts([1, 1], [1, 1], 2, 2)


def test_empty_hypothesis_line_counts_its_reference_length():
  result = bleu.corpus_bleu(['a b c d', ''], ['a b c d', 'e f'])
  assert (result.hyp_len, result.ref_len) == (4, 6)
  assert result.score == pytest.approx(100 * math.exp(1 - 6 / 4), rel=1e-15)


def test_all_empty_hypotheses_score_zero():
  result = bleu.corpus_bleu(['', ' '], ['a b', 'c'])
  assert (result.score, result.brevity_penalty, result.hyp_len) == (0.0, 0.0, 0)


def test_all_empty_references_score_zero_like_multi_bleu():
  result = bleu.corpus_bleu(['a b'], [''])
  assert (result.score, result.brevity_penalty, result.ratio, result.ref_len) == (0.0, 0.0, 0.0, 0)


def test_case_sensitive_and_whitespace_insensitive():
  assert bleu.corpus_bleu(['The b c d'], ['the b c d']).correct == (3, 2, 1, 0)
  assert bleu.corpus_bleu(['  a \t b  c d\n'], ['a b c d']).score == pytest.approx(100.0)


def test_mismatched_counts_raise_and_name_both():
  with pytest.raises(ValueError, match='3 hypotheses but 2 references'):
    bleu.corpus_bleu(['a', 'b', 'c'], ['a', 'b'])
  with pytest.raises(ValueError, match='1 hypotheses but 2 references'):
    bleu.translation_bleus(['a'], ['a', 'b'], lang='en', level='tokenized')
  with pytest.raises(ValueError, match='2 hypotheses but 1 references'):
    bleu.sacrebleu_score(['a', 'b'], ['a'])


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match='single string'):
    bleu.corpus_bleu('a b c', ['a b c'])
  with pytest.raises(ValueError, match='no sentences'):
    bleu.corpus_bleu([], [])
  with pytest.raises(ValueError, match="unknown text level 'detok'"):
    bleu.translation_bleus(['a'], ['a'], lang='en', level='detok')


# An independent exact reference.


def _fraction_bleu(hypotheses, references):
  """BLEU-4 by the paper's definition, exact rationals until the final root and exponential."""
  correct, total = [0] * 4, [0] * 4
  c = r = 0
  for hyp, ref in zip(hypotheses, references):
    h, g = hyp.split(), ref.split()
    c, r = c + len(h), r + len(g)
    for n in range(1, 5):
      hyp_ngrams = [tuple(h[i:i + n]) for i in range(len(h) - n + 1)]
      ref_ngrams = [tuple(g[i:i + n]) for i in range(len(g) - n + 1)]
      total[n - 1] += len(hyp_ngrams)
      correct[n - 1] += sum(min(hyp_ngrams.count(x), ref_ngrams.count(x)) for x in set(hyp_ngrams))
  if r == 0 or c == 0 or 0 in correct:
    return 0.0, correct, total
  product = math.prod(fractions.Fraction(m, t) for m, t in zip(correct, total))
  bp = 1.0 if c >= r else math.exp(float(1 - fractions.Fraction(r, c)))
  return 100 * bp * float(product) ** 0.25, correct, total


_SENTENCE = st.lists(st.sampled_from('aabbcd'), max_size=9).map(' '.join)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_SENTENCE, _SENTENCE), min_size=1, max_size=6))
def test_matches_exact_fraction_reference(pairs):
  hypotheses, references = [h for h, _ in pairs], [r for _, r in pairs]
  expected, correct, total = _fraction_bleu(hypotheses, references)
  result = bleu.corpus_bleu(hypotheses, references)
  assert list(result.correct) == correct and list(result.total) == total
  assert result.score == pytest.approx(expected, rel=1e-12, abs=1e-12)


# Compound splitting.


@pytest.mark.parametrize('line, expected', [
    ('a-b', 'a ##AT##-##AT## b'),
    ('rich-text format', 'rich ##AT##-##AT## text format'),
    # perl's /g resumes after the previous match, so the shared 'b' cannot start a second one.
    ('a-b-c', 'a ##AT##-##AT## b-c'),
    ('a-b-c-d', 'a ##AT##-##AT## b-c ##AT##-##AT## d'),
    ('a-bc-d', 'a ##AT##-##AT## bc ##AT##-##AT## d'),
    ('-a a- - a - b', '-a a- - a - b'),
    ('a--b', 'a ##AT##-##AT## -b'),
    # perl's \S consumed one byte of 'ä' (two in UTF-8); the second byte starts the next match.
    ('a-ä-b', 'a ##AT##-##AT## ä ##AT##-##AT## b'),
    ('a-\xa0', 'a ##AT##-##AT## \xa0'),
    ('Öl-Förderung', 'Öl ##AT##-##AT## Förderung'),
    # Moses `tokenizer.perl -a` hyphens are not recognised as compounds: two extra tokens appear.
    ('a @-@ b', 'a @ ##AT##-##AT## @ b'),
])
def test_compound_split(line, expected):
  assert bleu.compound_split(line) == expected


def test_compound_split_equals_perl_one_liner():
  perl = shutil.which('perl')
  if perl is None:
    pytest.skip('perl is not installed; the compound split is checked against it when it is')
  rng = np.random.default_rng(0)
  alphabet = list('ab-- -#@é') + ['\xa0', '\t', '\u2009', '„']
  lines = [''.join(rng.choice(alphabet, size=rng.integers(0, 12))) for _ in range(3000)]
  if NEWSTEST2014_DE.exists():  # real German compounds, when the shared data is there
    lines += bleu.tokenize(_read_lines(NEWSTEST2014_DE)[:500], 'de')
  out = subprocess.run([perl, '-ple', r's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g'],
                       input='\n'.join(lines).encode() + b'\n', capture_output=True, check=True)
  assert out.stdout.decode().split('\n')[:-1] == [bleu.compound_split(x) for x in lines]


# Acceptance on real references against sacreBLEU.


@pytest.mark.parametrize('noise', NOISE_LEVELS)
def test_tokenized_bleu_equals_unsmoothed_sacrebleu_on_iwslt(iwslt_refs, noise):
  hypotheses = _perturb(iwslt_refs, noise, seed=int(noise * 100))
  _assert_equals_sacrebleu(bleu.corpus_bleu(hypotheses, iwslt_refs),
                           _unsmoothed_sacrebleu(hypotheses, iwslt_refs))


@pytest.mark.parametrize('noise', NOISE_LEVELS)
def test_tokenized_bleu_equals_unsmoothed_sacrebleu_on_newstest(newstest_tok, noise):
  hypotheses = _perturb(newstest_tok, noise, seed=1 + int(noise * 100))
  ours = bleu.corpus_bleu(hypotheses, newstest_tok)
  _assert_equals_sacrebleu(ours, _unsmoothed_sacrebleu(hypotheses, newstest_tok))
  if 0 < noise < 0.9:
    assert 0 < ours.score < 100
  split_hyps = [bleu.compound_split(x) for x in hypotheses]
  split_refs = [bleu.compound_split(x) for x in newstest_tok]
  _assert_equals_sacrebleu(bleu.corpus_bleu(split_hyps, split_refs),
                           _unsmoothed_sacrebleu(split_hyps, split_refs))


def test_exp_smoothing_differs_only_when_a_precision_is_zero(iwslt_refs):
  smoothed = sacrebleu.metrics.BLEU(tokenize='none', force=True)
  hypotheses = _perturb(iwslt_refs, 0.5, seed=7)
  ours = bleu.corpus_bleu(hypotheses, iwslt_refs)
  assert min(ours.precisions) > 0
  assert ours.score == pytest.approx(smoothed.corpus_score(hypotheses, [iwslt_refs]).score,
                                     rel=1e-9)
  # Every 4th word replaced by an unseen token: every 4-gram misses, shorter n-grams still match.
  blanked = [' '.join('<x>' if i % 4 == 3 else w for i, w in enumerate(line.split()))
             for line in iwslt_refs]
  ours = bleu.corpus_bleu(blanked, iwslt_refs)
  theirs = smoothed.corpus_score(blanked, [iwslt_refs])
  assert ours.correct[3] == 0 < ours.total[3]
  assert ours.score == 0.0 < theirs.score
  assert ours.precisions[:3] == pytest.approx(theirs.precisions[:3], rel=1e-9)


def test_xml_escaping_does_not_change_tokenized_bleu(newstest_raw, newstest_tok):
  escaped_refs = [sacremoses.MosesTokenizer('de').tokenize(x, return_str=True)
                  for x in newstest_raw]
  assert escaped_refs != newstest_tok  # the data has characters that tokenizer.perl escapes
  raw_hyps = bleu.detokenize(_perturb(newstest_tok, 0.2, seed=3), 'de')
  hyps = bleu.tokenize(raw_hyps, 'de')
  escaped_hyps = [sacremoses.MosesTokenizer('de').tokenize(x, return_str=True) for x in raw_hyps]
  for split in (lambda x: x, bleu.compound_split):
    plain = bleu.corpus_bleu([split(x) for x in hyps], [split(x) for x in newstest_tok])
    escaped = bleu.corpus_bleu([split(x) for x in escaped_hyps], [split(x) for x in escaped_refs])
    assert (plain.correct, plain.total, plain.ref_len) == (
        escaped.correct, escaped.total, escaped.ref_len)


# The three numbers together.


def test_translation_bleus_raw_level(newstest_raw):
  newstest_raw = newstest_raw[:1000]
  perfect = bleu.translation_bleus(newstest_raw, newstest_raw, lang='de', level='raw')
  assert perfect['bleu'] == pytest.approx(100.0)
  assert perfect['bleu_compound_split'] == pytest.approx(100.0)
  assert perfect['sacrebleu'] == pytest.approx(100.0)
  scores = []
  for noise in (0.05, 0.3):
    hypotheses = _perturb(newstest_raw, noise, seed=11)
    result = bleu.translation_bleus(hypotheses, newstest_raw, lang='de', level='raw')
    assert 'tok:13a' in result['sacrebleu_signature']
    assert 'nrefs:1' in result['sacrebleu_signature']
    tokenized = bleu.corpus_bleu(bleu.tokenize(hypotheses, 'de'), bleu.tokenize(newstest_raw, 'de'))
    assert result['bleu'] == tokenized.score
    assert result['bleu_detail']['precisions'] == list(tokenized.precisions)
    assert result['sacrebleu'] == pytest.approx(
        sacrebleu.corpus_bleu(hypotheses, [newstest_raw]).score, rel=1e-12)
    scores.append(result)
  for key in ('bleu', 'bleu_compound_split', 'sacrebleu'):
    assert 100 > scores[0][key] > scores[1][key] > 0


def test_translation_bleus_tokenized_level(iwslt_refs):
  iwslt_refs = iwslt_refs[:1000]
  perfect = bleu.translation_bleus(iwslt_refs, iwslt_refs, lang='en', level='tokenized')
  assert perfect['bleu'] == perfect['bleu_compound_split'] == pytest.approx(100.0)
  assert perfect['sacrebleu'] == pytest.approx(100.0)
  hypotheses = _perturb(iwslt_refs, 0.2, seed=5)
  result = bleu.translation_bleus(hypotheses, iwslt_refs, lang='en', level='tokenized')
  assert result['bleu'] == bleu.corpus_bleu(hypotheses, iwslt_refs).score
  assert 0 < result['sacrebleu'] < 100
  assert 'tok:13a' in result['sacrebleu_signature']
  detail = result['bleu_detail']
  assert set(detail) == {'precisions', 'bp', 'ratio', 'hyp_len', 'ref_len'}
  assert detail['ref_len'] == sum(len(x.split()) for x in iwslt_refs)


def test_detokenize_unescapes_moses_entities():
  assert bleu.detokenize(['we &apos;re &quot; here &quot; &amp; there .'], 'en') == [
      'we\'re "here" & there.']


def test_tokenize_detokenize_round_trip_keeps_every_character(newstest_raw, iwslt_refs):
  raw = newstest_raw[:300]
  round_trip = bleu.detokenize(bleu.tokenize(raw, 'de'), 'de')
  assert [x.replace(' ', '') for x in round_trip] == [x.replace(' ', '') for x in raw]
  assert sum(a == b for a, b in zip(round_trip, raw)) > 0.9 * len(raw)
  tok = iwslt_refs[:300]
  escaper = sacremoses.MosesTokenizer('en')
  again = [escaper.tokenize(x, return_str=True) for x in bleu.detokenize(tok, 'en')]
  assert [x.replace(' ', '') for x in again] == [x.replace(' ', '') for x in tok]
  assert collections.Counter(a == b for a, b in zip(again, tok))[True] > 0.8 * len(tok)
