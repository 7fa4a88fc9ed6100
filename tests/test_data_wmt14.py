"""WMT14 data: a joint sentencepiece vocabulary with fairseq's ids, raw text, Moses input, TFDS.

Small generated corpora keep sentencepiece training under a second; the real newstest files
(`../shared/data/wmt14-en-de`) are loaded with a small model trained on the dev-extra sets.
The TFDS path reads a tiny translation dataset that the test prepares with a builder shaped
like `wmt14_translate` (the real one needs the network to prepare).
"""

from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

import data

DATA = Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data'
WMT = DATA / 'wmt14-en-de'
SYLLABLES = {'en': ['the', 'ca', 'ro', 'win', 'ter', 'mo', 'ing', 'ly', 'st', 'on', 'ex'],
             'de': ['der', 'schö', 'ge', 'ßen', 'ung', 'lich', 'ü', 'ber', 'ch', 'au', 'ei']}


def _raw_pairs(n, seed):
  rng = np.random.default_rng(seed)
  words = {lang: [''.join(rng.choice(s, size=int(rng.integers(1, 4)))) for _ in range(150)]
           for lang, s in SYLLABLES.items()}

  def sentence(lang):
    ws = [str(rng.choice(words[lang])) for _ in range(int(rng.integers(2, 14)))]
    return ' '.join([ws[0].capitalize()] + ws[1:]) + rng.choice(['.', '?', ', 2014.', ' "x".'])

  return [(sentence('en'), sentence('de')) for _ in range(n)]


def _write(directory, prefix, pairs):
  directory.mkdir(parents=True, exist_ok=True)
  (directory / f'{prefix}.en').write_text(''.join(e + '\n' for e, _ in pairs), 'utf-8')
  (directory / f'{prefix}.de').write_text(''.join(d + '\n' for _, d in pairs), 'utf-8')


@pytest.fixture
def raw_corpus(tmp_path):
  splits = {'train': _raw_pairs(300, 0), 'valid': _raw_pairs(20, 1), 'test': _raw_pairs(20, 2)}
  for split, pairs in splits.items():
    _write(tmp_path / 'text', split, pairs)
  return tmp_path, splits


def _config(tmp_path, **overrides):
  c = data.translation_data_config('wmt14')
  c.dir = str(tmp_path / 'text')
  c.cache_dir = str(tmp_path / 'cache')
  c.train, c.valid, c.test = ('train',), ('valid',), ('test',)
  c.spm_vocab_size = 400
  c.update(overrides)
  return c


def test_joint_sentencepiece_has_fairseq_ids_and_decodes_to_raw_text(raw_corpus):
  tmp_path, splits = raw_corpus
  d = data.build_translation_data(_config(tmp_path))
  assert d.shared_vocab and d.src_vocab is d.tgt_vocab and len(d.src_vocab) == 400
  sp = spm.SentencePieceProcessor(model_proto=d.src_vocab.model_proto)
  assert [sp.id_to_piece(i) for i in range(4)] == ['<s>', '<pad>', '</s>', '<unk>']
  assert (d.bos_id, d.pad_id, d.eos_id) == (2, 1, 2) and d.text_level == 'raw'
  for english, german in splits['train']:  # both languages' characters are pieces, not bytes
    assert not any(sp.is_byte(i) for i in sp.encode(english) + sp.encode(german))
  assert any(sp.is_byte(i) for i in sp.encode('ж'))  # an unseen character: byte fallback
  for split in ('train', 'valid', 'test'):
    assert d.sources(split) == [e for e, _ in splits[split]]
    assert d.references(split) == [g for _, g in splits[split]]
  for _, target in splits['train'] + splits['test']:
    ids = d.tgt_vocab.encode(target)
    assert ids[-1] == d.eos_id and d.postprocess(ids) == target
  for batch in d.eval_batches('test', max_tokens=256):
    for row, i in zip(batch['targets'], batch['ids']):
      if i >= 0:
        assert d.postprocess(row) == splits['test'][i][1]


def test_sentencepiece_model_is_cached_and_can_be_given(raw_corpus):
  tmp_path, _ = raw_corpus
  first = data.build_translation_data(_config(tmp_path))
  second = data.build_translation_data(_config(tmp_path))
  assert second.cache_hit
  assert len(list((tmp_path / 'cache' / 'sentencepiece').iterdir())) == 1
  model = tmp_path / 'joint.model'
  model.write_bytes(first.src_vocab.model_proto)
  given = data.build_translation_data(_config(tmp_path, spm_model=str(model)))
  assert given.describe()['fingerprint'] == first.describe()['fingerprint']


def test_sentencepiece_model_without_fairseq_ids_is_refused(raw_corpus):
  tmp_path, splits = raw_corpus
  model = tmp_path / 'default_ids.model'
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter([e for e, _ in splits['train']]), model_prefix=str(model)[:-6],
      vocab_size=200, minloglevel=2)  # sentencepiece's own layout: <unk>=0 <s>=1 </s>=2
  with pytest.raises(ValueError, match='--bos_id=0 --pad_id=1 --eos_id=2 --unk_id=3'):
    data.build_translation_data(_config(tmp_path, spm_model=str(model)))
  with pytest.raises(ValueError, match="data.vocab='sentencepiece'"):
    data.build_translation_data(_config(tmp_path, vocab='separate', spm_model=str(model)))


def test_moses_entries_are_detokenized_on_load(raw_corpus):
  tmp_path, _ = raw_corpus
  tok = tmp_path / 'text' / 'tok'
  tok.mkdir()
  (tok / 'src.en.tok').write_text('Parliament &apos;s rules , he said &quot; no &quot; .\n')
  (tok / 'tgt.de.tok').write_text('Die Regeln des Parlaments , sagte er .\n')
  c = _config(tmp_path, train=('train', 'moses:en=tok/src.en.tok,de=tok/tgt.de.tok'))
  d = data.build_translation_data(c)
  assert d.sources('train')[-1] == 'Parliament\'s rules, he said "no".'
  assert d.references('train')[-1] == 'Die Regeln des Parlaments, sagte er.'
  assert d.describe()['files']['train'][1]['moses'] is True


def test_vocabulary_too_large_for_the_text_is_explained(raw_corpus):
  with pytest.raises(ValueError, match='change data.spm_vocab_size'):
    data.build_translation_data(_config(raw_corpus[0], spm_vocab_size=50_000))


# ----------------------------------------------------------------------------- real files


def _real_config(tmp_path, **overrides):
  c = data.translation_data_config('wmt14')
  c.cache_dir = str(tmp_path / 'cache')
  c.spm_vocab_size = 1000
  c.update(overrides)
  return c


def test_real_newstest_sets_with_the_offline_training_text(tmp_path):
  if not (WMT / 'newstest2014.de').is_file():
    pytest.skip(f'WMT14 files not found under {WMT}')
  d = data.build_translation_data(_real_config(tmp_path), max_positions=1024)
  assert (d.num_examples('valid'), d.num_examples('test')) == (3000, 3003)
  assert d.num_examples('train') == 13_071 + 10_000
  assert d.describe()['skipped'] == {'train': 0, 'valid': 0, 'test': 0}
  for split, year in (('valid', 2013), ('test', 2014)):
    for lang, texts in (('en', d.sources(split)), ('de', d.references(split))):
      raw = (WMT / f'newstest{year}.{lang}').read_text('utf-8').split('\n')[:-1]
      assert texts == [line.strip() for line in raw]
  sample = d.sources('train')[-10_000:]  # the Moses-tokenized OpenNMT sample, detokenized
  tokenized = (WMT / 'opennmt-sample' / 'src-train.en.tok').read_text('utf-8')
  assert '&apos;' in tokenized and not any('&apos;' in s or '&quot;' in s for s in sample)
  assert sample[0].startswith("It is not acceptable that, with the help of the national "
                              "bureaucracies, Parliament's legislative prerogative")


def test_real_misaligned_files_are_an_error(tmp_path):
  if not (WMT / 'newstest2014.de').is_file():
    pytest.skip(f'WMT14 files not found under {WMT}')
  c = _real_config(tmp_path, valid=('en=newstest2013.en,de=newstest2014.de',))
  with pytest.raises(ValueError, match=r'newstest2013\.en has 3000 lines and .*newstest2014\.de '
                     r'has 3003'):
    data.build_translation_data(c)


# ------------------------------------------------------------------------------------ TFDS


@pytest.mark.usefixtures('library_tempdir')  # TFDS's tmp…tfds folders (conftest.py)
def test_tfds_records_are_read_in_the_configured_direction(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets', reason='tensorflow-datasets is not installed')
  pytest.importorskip('array_record', reason='array_record is not installed (ArrayRecord files)')
  pytest.importorskip('importlib_resources', reason='tensorflow-datasets 4.9.x needs '
                      'importlib_resources to prepare builders (tensorflow/datasets#11212)')
  splits = {'train': _raw_pairs(200, 3), 'validation': _raw_pairs(7, 4), 'test': _raw_pairs(5, 5)}

  class FakeWmtTranslate(tfds.core.GeneratorBasedBuilder):
    """`wmt14_translate/de-en` in miniature: Translation features {'de', 'en'}."""
    VERSION = tfds.core.Version('1.0.0')
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='de-en')]

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.Translation(languages=('de', 'en')),
          supervised_keys=('de', 'en'))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {name: self._generate_examples(name) for name in splits}

    def _generate_examples(self, name):
      for i, (en, de) in enumerate(splits[name]):
        yield i, {'de': de, 'en': en}

  c = _config(tmp_path, source='tfds', tfds_name='fake_wmt_translate/de-en',
              tfds_data_dir=str(tmp_path / 'tfds'))
  d = data.build_translation_data(c)
  assert FakeWmtTranslate.name == 'fake_wmt_translate'
  assert d.describe()['source'] == 'tfds' and (d.src_lang, d.tgt_lang) == ('en', 'de')
  for split, name in (('train', 'train'), ('valid', 'validation'), ('test', 'test')):
    assert d.num_examples(split) == len(splits[name])
    assert sorted(zip(d.sources(split), d.references(split))) == sorted(splits[name])
  assert data.build_translation_data(c).cache_hit
