"""Translation data: fairseq dictionaries, token-budget batches, resumable order, bad input.

A tiny BPE'd parallel corpus written by each test stands in for IWSLT14; the real IWSLT14
validation and test files (`../shared/data`) check sizes and references when present.
"""

from collections import Counter
import json
from pathlib import Path

import numpy as np
import pytest

import data
from data import translation

DATA = Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data'
IWSLT = DATA / 'iwslt14-de-en'


def _sentence(rng, i, side):
  # Sentence i has its own marker word, so a row of a batch names the pair it came from.
  words = [f'{side}{i}'] + [rng.choice(['die', 'der', 'haus', 'kat@@', 'ze', 'und', 'a@@', 'b'])
                            for _ in range(int(rng.integers(0, 22)))]
  if words[-1].endswith('@@'):
    words.append('end')
  return ' '.join(words)


def _pairs(n, seed):
  rng = np.random.default_rng(seed)
  return [(_sentence(rng, i, 's'), _sentence(rng, i, 't')) for i in range(n)]


def _write(directory, prefix, pairs, src='de', tgt='en'):
  directory.mkdir(parents=True, exist_ok=True)
  (directory / f'{prefix}.{src}').write_text(''.join(s + '\n' for s, _ in pairs), 'utf-8')
  (directory / f'{prefix}.{tgt}').write_text(''.join(t + '\n' for _, t in pairs), 'utf-8')


@pytest.fixture
def corpus(tmp_path):
  splits = {'train': _pairs(90, 0), 'valid': _pairs(23, 1), 'test': _pairs(17, 2)}
  for split, pairs in splits.items():
    _write(tmp_path / 'text', split, pairs)
  return tmp_path, splits


def _config(tmp_path, **overrides):
  c = data.translation_data_config('iwslt14')
  c.dir = str(tmp_path / 'text')
  c.cache_dir = str(tmp_path / 'cache')
  c.length_bucket = 4
  c.update(overrides)
  return c


# ---------------------------------------------------------------------------- config, entries


def test_both_config_blocks_have_the_same_keys():
  iwslt, wmt = (data.translation_data_config(n) for n in ('iwslt14', 'wmt14'))
  assert set(iwslt.keys()) == set(wmt.keys())
  assert (iwslt.src_lang, iwslt.tgt_lang, iwslt.vocab) == ('de', 'en', 'separate')
  assert (wmt.src_lang, wmt.tgt_lang, wmt.vocab) == ('en', 'de', 'sentencepiece')
  assert wmt.tfds_name == 'wmt14_translate/de-en'
  with pytest.raises(ValueError, match='known: iwslt14, wmt14'):
    data.translation_data_config('wmt16')


def test_entry_forms():
  assert translation.parse_entry('train', 'de', 'en') == translation.FileEntry(
      'train', 'train.de', 'train.en', False)
  entry = translation.parse_entry('moses:en=a/src.en.tok, de=a/tgt.de.tok', 'en', 'de')
  assert (entry.src, entry.tgt, entry.moses) == ('a/src.en.tok', 'a/tgt.de.tok', True)
  with pytest.raises(ValueError, match='exactly those two'):
    translation.parse_entry('en=x,fr=y', 'en', 'de')
  with pytest.raises(ValueError, match='prefix P'):
    translation.parse_entry('a,b', 'en', 'de')


# ------------------------------------------------------------------------------ vocabularies


def test_dictionary_ids_follow_fairseq_on_a_known_example(tmp_path):
  _write(tmp_path / 'text', 'train', [('b a a', 'x'), ('c b a', 'x y')])
  for split in ('valid', 'test'):
    _write(tmp_path / 'text', split, [('a', 'x')])
  d = data.build_translation_data(_config(tmp_path))
  # Specials 0-3, then by count (a 3, b 2, c 1), then padding to a multiple of 8.
  assert d.src_vocab.symbols == ['<s>', '<pad>', '</s>', '<unk>', 'a', 'b', 'c',
                                 'madeupword0000']
  assert d.tgt_vocab.symbols[4:6] == ['x', 'y'] and len(d.tgt_vocab) == 8
  np.testing.assert_array_equal(d.src_vocab.encode('c zz a'), [6, 3, 4, 2])


def test_dictionaries_order_by_count_then_symbol(corpus):
  tmp_path, splits = corpus
  for kind in ('separate', 'joined'):
    d = data.build_translation_data(_config(tmp_path, vocab=kind))
    for side, vocab in ((0, d.src_vocab), (1, d.tgt_vocab)):
      sides = (0, 1) if kind == 'joined' else (side,)
      counts = Counter(w for pair in splits['train'] for s in sides for w in pair[s].split())
      words = sorted(counts, key=lambda w: (-counts[w], w))
      expected = ['<s>', '<pad>', '</s>', '<unk>'] + words
      expected += [f'madeupword{i:04d}' for i in range(-len(expected) % 8)]
      assert vocab.symbols == expected
    assert d.shared_vocab == (kind == 'joined')


def test_postprocess_inverts_encode_and_references_are_the_text_without_bpe(corpus):
  tmp_path, splits = corpus
  d = data.build_translation_data(_config(tmp_path))
  for split in ('train', 'valid', 'test'):
    assert d.sources(split) == [s.replace('@@ ', '') for s, _ in splits[split]]
    assert d.references(split) == [t.replace('@@ ', '') for _, t in splits[split]]
  for _, target in splits['train']:
    ids = d.tgt_vocab.encode(target)
    assert ids[-1] == d.eos_id
    assert d.postprocess(np.concatenate([ids, [d.pad_id, 7, 7]])) == target.replace('@@ ', '')
  assert d.text_level == 'tokenized' and d.metric == 'bleu'
  assert d.bos_id == d.eos_id == 2 and d.pad_id == 1


def test_given_fairseq_dictionary_files(corpus):
  tmp_path, _ = corpus
  built = data.build_translation_data(_config(tmp_path))
  for name, vocab in (('dict.de.txt', built.src_vocab), ('dict.en.txt', built.tgt_vocab)):
    (tmp_path / name).write_text(''.join(f'{w} 1\n' for w in vocab.symbols[4:]), 'utf-8')
  given = data.build_translation_data(_config(
      tmp_path, src_dict=str(tmp_path / 'dict.de.txt'), tgt_dict=str(tmp_path / 'dict.en.txt')))
  assert given.src_vocab == built.src_vocab and given.tgt_vocab == built.tgt_vocab
  assert given.describe()['fingerprint'] == built.describe()['fingerprint']
  with pytest.raises(ValueError, match="vocab='joined' uses one dictionary"):
    data.build_translation_data(_config(
        tmp_path, vocab='joined', src_dict=str(tmp_path / 'dict.de.txt'),
        tgt_dict=str(tmp_path / 'dict.en.txt')))
  with pytest.raises(FileNotFoundError, match='dict.fr.txt'):
    data.build_translation_data(_config(tmp_path, src_dict=str(tmp_path / 'dict.fr.txt')))


def test_check_vocab_sizes(corpus):
  d = data.build_translation_data(_config(corpus[0]))
  sizes = (len(d.src_vocab), len(d.tgt_vocab))
  assert d.check_vocab_sizes(-1, -1) == sizes
  assert d.check_vocab_sizes(*sizes) == sizes
  with pytest.raises(ValueError, match=f'model.tgt_vocab_size=5 but .* {sizes[1]} tgt'):
    d.check_vocab_sizes(-1, 5)


# ----------------------------------------------------------------------------------- batches


def _check_batch(d, batch, *, max_tokens, row_multiple, num_micro):
  rows, s_len = batch['source'].shape
  t_len = batch['targets'].shape[1]
  assert rows % num_micro == 0
  b = rows // num_micro
  assert b % row_multiple == 0 and b * max(s_len, t_len) <= max_tokens
  assert s_len % d.length_bucket == 0 and t_len % d.length_bucket == 0
  assert {k: v.dtype for k, v in batch.items() if k != 'ids'} == {
      'source': np.int32, 'target_in': np.int32, 'targets': np.int32, 'weights': np.float32}
  lengths = batch['weights'].sum(1).astype(int)
  for r in range(rows):
    n = lengths[r]
    if n == 0:  # a filling row
      assert (batch['source'][r] == d.pad_id).all() and (batch['targets'][r] == d.pad_id).all()
      continue
    assert (batch['weights'][r, :n] == 1).all() and (batch['weights'][r, n:] == 0).all()
    assert batch['targets'][r, n - 1] == d.eos_id and (batch['targets'][r, n:] == d.pad_id).all()
    assert batch['target_in'][r, 0] == d.bos_id
    np.testing.assert_array_equal(batch['target_in'][r, 1:n], batch['targets'][r, :n - 1])
    assert (batch['target_in'][r, n:] == d.pad_id).all()
  return lengths > 0


def test_one_epoch_shows_every_pair_once_within_the_budget(corpus):
  tmp_path, splits = corpus
  d = data.build_translation_data(_config(tmp_path))
  it = d.train_iterator(max_tokens=96, seed=3, row_multiple=2, num_micro=2)
  seen, shapes = [], set()
  for _ in range(it.steps_per_epoch):
    batch = next(it)
    real = _check_batch(d, batch, max_tokens=96, row_multiple=2, num_micro=2)
    shapes.add(batch['source'].shape + batch['targets'].shape)
    for r in np.flatnonzero(real):
      seen.append((d.src_vocab.decode(batch['source'][r]),
                   d.tgt_vocab.decode(batch['targets'][r])))
  assert sorted(seen) == sorted(splits['train'])
  lengths = {-(-(max(len(s.split()), len(t.split())) + 1) // 4) * 4 for s, t in splits['train']}
  assert len(shapes) == len(lengths)  # one shape per length bucket
  assert it.get_state()['epoch'] == 0
  next(it)
  assert it.get_state()['epoch'] == 1


def test_training_order_is_seeded_and_resumes_exactly(corpus):
  d = data.build_translation_data(_config(corpus[0]))

  def take(it, n):
    return [next(it) for _ in range(n)]

  a = d.train_iterator(max_tokens=64, seed=5)
  first = take(a, 3)
  state = json.loads(json.dumps(a.get_state()))
  rest = take(a, 2 * a.steps_per_epoch)  # crosses two epoch boundaries
  b = d.train_iterator(max_tokens=64, seed=5)
  for x, y in zip(first, take(b, 3)):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  c = d.train_iterator(max_tokens=64, seed=5)
  c.set_state(state)
  for x, y in zip(rest, take(c, len(rest))):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  other = take(d.train_iterator(max_tokens=64, seed=6), 3)
  assert any(x['source'].shape != y['source'].shape or (x['source'] != y['source']).any()
             for x, y in zip(first, other))
  # Epochs differ in order.
  e0 = [x['source'].tobytes() for x in rest[-2 * c.steps_per_epoch:-c.steps_per_epoch]]
  e1 = [x['source'].tobytes() for x in rest[-c.steps_per_epoch:]]
  assert e0 != e1
  with pytest.raises(ValueError, match='seed=5'):
    d.train_iterator(max_tokens=64, seed=7).set_state(state)


def test_eval_batches_hold_every_sentence_once_in_recoverable_order(corpus):
  tmp_path, splits = corpus
  d = data.build_translation_data(_config(tmp_path))
  batches = d.eval_batches('valid', max_tokens=128, row_multiple=4)
  assert len(list(batches)) == len(batches)
  targets = {}
  for batch in batches:
    real = _check_batch(d, batch, max_tokens=128, row_multiple=4, num_micro=1)
    np.testing.assert_array_equal(real, batch['ids'] >= 0)
    for r in np.flatnonzero(real):
      i = int(batch['ids'][r])
      assert i not in targets
      targets[i] = d.postprocess(batch['targets'][r])
      np.testing.assert_array_equal(batch['source'][r][batch['source'][r] != d.pad_id],
                                    d.src_vocab.encode(splits['valid'][i][0]))
  assert [targets[i] for i in range(len(targets))] == d.references('valid')
  assert d.num_examples('validation') == len(splits['valid'])
  ids = np.concatenate([b['ids'] for b in d.eval_batches('valid', max_tokens=128, limit=5)])
  assert sorted(ids[ids >= 0].tolist()) == [0, 1, 2, 3, 4]


def test_processes_share_out_the_rows(corpus):
  d = data.build_translation_data(_config(corpus[0]))
  whole = next(d.train_iterator(max_tokens=96, seed=1, row_multiple=4, num_micro=2))
  parts = [next(d.train_iterator(max_tokens=96, seed=1, row_multiple=4, num_micro=2,
                                 process_index=p, process_count=2)) for p in (0, 1)]
  for k, v in whole.items():
    stacked = np.concatenate([p[k].reshape((2, -1) + v.shape[1:]) for p in parts], axis=1)
    np.testing.assert_array_equal(stacked.reshape(v.shape), v)


def test_padded_lengths_never_exceed_the_max_positions(tmp_path):
  _write(tmp_path / 'text', 'train', [('a ' * 8, 'b ' * 2), ('a', 'b')])
  _write(tmp_path / 'text', 'valid', [('a', 'b ' * 9)])
  _write(tmp_path / 'text', 'test', [('a', 'b')])
  d = data.build_translation_data(_config(tmp_path), max_positions=10)
  batch = next(iter(d.eval_batches('valid', max_tokens=64)))
  assert batch['source'].shape[1] == batch['targets'].shape[1] == 10  # 12 clamped to 10
  with pytest.raises(ValueError, match='raise max_tokens to at least 20'):
    d.train_iterator(max_tokens=19, seed=0, row_multiple=2)


def test_second_build_reads_the_cache(corpus):
  tmp_path, _ = corpus
  first = data.build_translation_data(_config(tmp_path))
  second = data.build_translation_data(_config(tmp_path))
  assert (first.cache_hit, second.cache_hit) == (False, True)
  assert first.describe() == second.describe()
  assert second.describe()['files']['test'][0]['src']['lines'] == 17


# --------------------------------------------------------------------------------- bad input


def test_missing_file_is_named(corpus):
  tmp_path, _ = corpus
  (tmp_path / 'text' / 'test.en').unlink()
  with pytest.raises(FileNotFoundError, match=r'the en file .*test\.en does not exist'):
    data.build_translation_data(_config(tmp_path))


def test_misaligned_files_name_both_counts(corpus):
  tmp_path, _ = corpus
  with open(tmp_path / 'text' / 'valid.en', 'a', encoding='utf-8') as f:
    f.write('one more\n')
  with pytest.raises(ValueError, match=r'valid\.de has 23 lines and .*valid\.en has 24'):
    data.build_translation_data(_config(tmp_path))


def test_empty_file_is_an_error(corpus):
  tmp_path, _ = corpus
  (tmp_path / 'text' / 'test.de').write_text('')
  with pytest.raises(ValueError, match=r'test\.de is empty'):
    data.build_translation_data(_config(tmp_path))


def test_too_long_sentences(corpus):
  tmp_path, splits = corpus  # generated sentences have at most 24 tokens with </s>
  splits['train'].insert(3, ('x ' * 40, 'y'))
  splits['test'].insert(5, ('a b', 'w ' * 30))
  for split in ('train', 'test'):
    _write(tmp_path / 'text', split, splits[split])
  with pytest.raises(ValueError, match=r'test sentence 5 \(.*test\.de / .*test\.en line 6\) '
                     r'has 3 source and 31 target tokens'):
    data.build_translation_data(_config(tmp_path), max_positions=30)

  d = data.build_translation_data(_config(tmp_path, skip_invalid_size=True), max_positions=30)
  info = d.describe()
  assert info['skipped'] == {'train': 1, 'valid': 0, 'test': 1}
  assert info['skipped_first']['test'] == ['test.de / test.en line 6: 3 source / 31 target tokens']
  assert [d.num_examples(s) for s in ('train', 'valid', 'test')] == [90, 23, 17]
  assert d.references('test') == [t.replace('@@ ', '') for k, (_, t) in
                                  enumerate(splits['test']) if k != 5]
  ids = np.concatenate([b['ids'] for b in d.eval_batches('test', max_tokens=256)])
  assert sorted(ids[ids >= 0].tolist()) == list(range(17))
  # Training leaves the long pair out even without skip_invalid_size.
  d = data.build_translation_data(_config(tmp_path, test=('valid',)), max_positions=30)
  assert d.describe()['skipped']['train'] == 1 and d.num_examples('train') == 90


# ---------------------------------------------------------------------------- real IWSLT14


def test_iwslt14_valid_and_test(tmp_path):
  bpe = IWSLT / 'bpe10k'
  if not (bpe / 'valid.de').is_file() or not (IWSLT / 'tok' / 'test.en').is_file():
    pytest.skip(f'IWSLT14 files not found under {IWSLT}')
  c = data.translation_data_config('iwslt14')
  c.train = ('valid',)  # the training split is not part of the shared data
  c.cache_dir = str(tmp_path / 'cache')
  d = data.build_translation_data(c, max_positions=1024)
  assert (d.num_examples('valid'), d.num_examples('test')) == (7283, 6750)
  assert not d.shared_vocab and len(d.src_vocab) % 8 == 0
  for split in ('valid', 'test'):
    for side, lang in (('references', 'en'), ('sources', 'de')):
      tok = (IWSLT / 'tok' / f'{split}.{lang}').read_text('utf-8').split('\n')[:-1]
      assert getattr(d, side)(split) == tok
