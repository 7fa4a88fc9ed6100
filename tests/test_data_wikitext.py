"""WikiText with fairseq's tokenization and vocabulary; real-data checks on ../shared/data."""

from pathlib import Path

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest

import data
from data import vocab as vocab_lib
from data import wikitext

SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'
WT103 = SHARED_DATA / 'wikitext-103'
WT2 = SHARED_DATA / 'wikitext-2'
needs_wt103 = pytest.mark.skipif(not (WT103 / 'wiki.test.tokens').is_file(),
                                 reason=f'real WikiText-103 valid/test not found in {WT103}')
needs_wt2 = pytest.mark.skipif(not (WT2 / 'train.txt').is_file(),
                               reason=f'real WikiText-2 not found in {WT2}')


def _write_splits(folder, texts, names=('train.txt', 'valid.txt', 'test.txt')):
  folder.mkdir(parents=True, exist_ok=True)
  for name, text in zip(names, texts):
    (folder / name).write_text(text, encoding='utf-8')
  return folder


class TestVocabulary:

  def test_fairseq_order_specials_frequency_ties_and_padding(self):
    vocab = vocab_lib.Vocabulary.from_lines(['b a c a', ' ', 'c <unk> b d a'], padding_factor=8)
    # Specials first; then by count (a:3, b:2, c:2, d:1), ties in code-point order; <unk> is
    # the special, not a word; padded to 8 with fairseq's made-up words.
    assert vocab.symbols == ['<s>', '<pad>', '</s>', '<unk>', 'a', 'b', 'c', 'd']
    vocab = vocab_lib.Vocabulary.from_lines(['z y x'], padding_factor=8)
    assert vocab.symbols[4:] == ['x', 'y', 'z', 'madeupword0000']
    assert len(vocab_lib.Vocabulary.from_lines(['z y x'], padding_factor=1)) == 7

  def test_encoding_appends_eos_per_line_and_maps_unknowns(self):
    vocab = vocab_lib.Vocabulary.from_lines(['a b', 'a'], padding_factor=1)
    ids = vocab.encode_lines(['a b\n', ' \n', 'zebra <unk> a\n'])
    a, b = vocab.index['a'], vocab.index['b']
    np.testing.assert_array_equal(ids, [a, b, 2, 2, 3, 3, a, 2])
    assert ids.dtype == np.int32
    assert vocab.decode(ids) == 'a b\n\n<unk> <unk> a\n'

  @settings(max_examples=40, deadline=None)
  @given(st.lists(st.lists(st.sampled_from(['the', 'a', 'of', '<unk>', 'é', 'x1', '</s>']),
                           max_size=6).map(' '.join), max_size=12),
         st.integers(1, 9))
  def test_single_pass_equals_count_then_encode(self, lines, padding_factor):
    vocab, ids = vocab_lib.build_and_encode(lines, padding_factor=padding_factor, chunk_lines=3)
    reference = vocab_lib.Vocabulary.from_lines(lines, padding_factor=padding_factor)
    assert vocab == reference
    np.testing.assert_array_equal(ids, reference.encode_lines(lines))
    assert len(ids) == wikitext.count_tokens(lines)
    assert len(vocab) % padding_factor == 0

  def test_sha_identifies_the_symbols(self):
    a = vocab_lib.Vocabulary.from_lines(['a b'])
    assert a.sha256() == vocab_lib.Vocabulary.from_lines(['b a']).sha256()
    assert a.sha256() != vocab_lib.Vocabulary.from_lines(['a b b']).sha256()


class TestFiles:

  @pytest.mark.parametrize('names', [('train.txt', 'valid.txt', 'test.txt'),
                                     ('wiki.train.tokens', 'wiki.valid.tokens',
                                      'wiki.test.tokens')])
  def test_both_naming_schemes(self, tmp_path, names):
    _write_splits(tmp_path, [' \n = A = \n a b a\n', ' a c\n', 'b\n'], names)
    files = wikitext.split_files(tmp_path)
    assert [p.name for p in files.values()] == list(names)

  def test_missing_or_empty_files_name_both_schemes_and_the_source(self, tmp_path):
    with pytest.raises(ValueError) as error:
      wikitext.split_files(tmp_path)
    for expected in ('wiki.train.tokens', 'train.txt', 'wiki.test.tokens', 'test.txt',
                     'wikitext-103-v1.zip'):
      assert expected in str(error.value)
    _write_splits(tmp_path, ['a\n', 'a\n', ''])
    with pytest.raises(ValueError, match='test.txt is empty'):
      wikitext.split_files(tmp_path)

  def test_vocabulary_from_train_only_and_oov_is_unk(self, tmp_path):
    _write_splits(tmp_path, ['a a b\n\n', 'a zzz\n', 'b <unk>\n'])
    config = data.lm_data_config('wikitext')
    config.dir, config.cache_dir = str(tmp_path), str(tmp_path / 'cache')
    lm = data.build_lm_data(config, seed=0)
    assert lm.metric == 'perplexity' and lm.vocab_size == 8  # 4 specials + a, b + padding
    np.testing.assert_array_equal(lm.streams['train'], [4, 4, 5, 2, 2])
    np.testing.assert_array_equal(lm.streams['valid'], [4, 3, 2])
    np.testing.assert_array_equal(lm.streams['test'], [5, 3, 2])
    assert lm.num_tokens('test') == 3
    assert lm.decode(lm.streams['train']) == 'a a b\n\n'

  def test_editing_a_file_rebuilds_and_describe_changes(self, tmp_path):
    folder = _write_splits(tmp_path / 'wt', ['a a b\n', 'a\n', 'b\n'])
    config = data.lm_data_config('wikitext')
    config.dir, config.cache_dir = str(folder), str(tmp_path / 'cache')
    first = data.build_lm_data(config, seed=0)
    again = data.build_lm_data(config, seed=0)
    assert (first.cache_hit, again.cache_hit) == (False, True)
    assert first.describe() == again.describe()
    (folder / 'valid.txt').write_text('b b\n', encoding='utf-8')
    changed = data.build_lm_data(config, seed=0)
    assert not changed.cache_hit
    assert changed.describe()['fingerprint'] != first.describe()['fingerprint']


@needs_wt103
class TestRealWikiText103:

  @pytest.mark.parametrize('split,expected', [('test', 245_569), ('valid', 217_646)])
  def test_token_counts_match_fairseq(self, split, expected):
    # fairseq eval_lm on WikiText-103 test: "Evaluated 245569 tokens".
    path = WT103 / f'wiki.{split}.tokens'
    assert wikitext.count_tokens(wikitext.read_lines(path)) == expected
    # The same count through an ad-hoc vocabulary (the train split is not available here).
    vocab, ids = vocab_lib.build_and_encode(wikitext.read_lines(path))
    assert len(ids) == expected
    if split == 'test':  # ' \n = Robert Boulter = \n …'
      assert ids[0] == ids[5] == vocab.eos_id
      assert vocab.decode(ids[1:5]) == '= Robert Boulter ='
    assert (ids == vocab.unk_id).sum() == sum(
        line.split().count('<unk>') for line in wikitext.read_lines(path))


@needs_wt2
class TestRealWikiText2:

  def test_builds_with_fairseq_numbers_and_second_build_is_a_cache_hit(self, tmp_path):
    config = data.lm_data_config('wikitext')
    config.dir, config.cache_dir = str(WT2), str(tmp_path / 'cache')
    first = data.build_lm_data(config, seed=0)
    assert not first.cache_hit
    # 33,278 types (Merity et al.; includes <unk>) -> 33,277 words + 4 specials, padded to 8.
    assert first.vocab_size == 33_280
    assert {s: first.num_tokens(s) for s in ('train', 'valid', 'test')} == {
        'train': 2_088_628, 'valid': 217_646, 'test': 245_569}
    second = data.build_lm_data(config, seed=0)
    assert second.cache_hit
    assert second.describe() == first.describe()
    for split in ('train', 'valid', 'test'):
      np.testing.assert_array_equal(second.streams[split], first.streams[split])
    # Frequency-sorted ids: the most frequent word gets the first id after the specials.
    assert first.decode([4]) == 'the'
    batch = next(iter(first.eval_batches('test', batch_size=2, seq_len=16, context_window=8)))
    assert first.decode(batch['targets'][0][:2]) == '\n='
