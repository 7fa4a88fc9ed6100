"""TFDS builders prepare ArrayRecord files from the official layouts, without TensorFlow.

With tensorflow-datasets 4.9.10 both preparing (`download_and_prepare`, file_format
'array_record') and reading (`tfds.data_source`) work in an environment where TensorFlow is not
installed: the project's test environment has none, and these tests pass there.

TFDS 4.9.10 makes an empty `tmp…tfds` folder with `tempfile.mkdtemp` (never removed) each time a
builder is made for a dataset not prepared yet (`DatasetInfo.initialize_from_bucket`); the
`library_tempdir` fixture (conftest.py) keeps them in the test's tmp_path.
"""

import zipfile

import numpy as np
import pytest

tfds = pytest.importorskip(
    'tensorflow_datasets', reason='tensorflow-datasets is not installed (pip install '
    'tensorflow-datasets array_record); the TFDS builders cannot be tested')
pytest.importorskip('array_record', reason='array_record is not installed (pip install '
                    'array_record); TFDS cannot write or read ArrayRecord files')
pytest.importorskip(
    'importlib_resources', reason='tensorflow-datasets 4.9.x needs importlib_resources to '
    'prepare builders defined in a package (tensorflow/datasets#11212); pip install '
    'importlib_resources')

import data  # pylint: disable=g-import-not-at-top
from data import tfds_source  # pylint: disable=g-import-not-at-top

pytestmark = pytest.mark.usefixtures('library_tempdir')  # TFDS's tmp…tfds folders

WIKI_TEXT = {
    'train': ' \n = Valkyria Chronicles = \n \n The game began development in 2010 . \n'
             ' The game <unk> the <unk> of the series . \n',
    'valid': ' \n = Tower Building = \n The building is tall . \n',
    'test': ' \n = Robert Boulter = \n Robert is an actor in the game . \n',
}


def _config(name, tmp_path, manual_dir, **overrides):
  config = data.lm_data_config(name)
  config.source = 'tfds'
  config.tfds_data_dir = str(tmp_path / 'tfds')
  config.tfds_manual_dir = str(manual_dir)
  config.cache_dir = str(tmp_path / 'cache')
  config.update(overrides)
  return config


def test_prepares_and_trains_without_tensorflow(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  with zipfile.ZipFile(manual / 'wikitext-103-v1.zip', 'w') as zf:
    for split, text in WIKI_TEXT.items():
      zf.writestr(f'wikitext-103/wiki.{split}.tokens', text)
  lm = data.build_lm_data(_config('wikitext', tmp_path, manual), seed=0)

  prepared = list((tmp_path / 'tfds' / 'wikitext103').rglob('*.array_record*'))
  assert {p.name.split('.')[0] for p in prepared} == {
      'wikitext103-train', 'wikitext103-validation', 'wikitext103-test'}
  records = tfds.data_source('wikitext103', split='validation',
                             data_dir=str(tmp_path / 'tfds'))
  assert [r['text'].decode() for r in records] == WIKI_TEXT['valid'].split('\n')[:-1]

  # Same tokens, vocabulary and describe() identity as reading the extracted files.
  files_dir = tmp_path / 'files'
  files_dir.mkdir()
  for split, text in WIKI_TEXT.items():
    (files_dir / f'wiki.{split}.tokens').write_text(text, encoding='utf-8')
  config = data.lm_data_config('wikitext')
  config.dir, config.cache_dir = str(files_dir), str(tmp_path / 'cache')
  reference = data.build_lm_data(config, seed=0)
  for split in ('train', 'valid', 'test'):
    np.testing.assert_array_equal(lm.streams[split], reference.streams[split])
  assert lm.describe()['fingerprint'] == reference.describe()['fingerprint']
  assert lm.describe()['source'] == 'tfds'
  batch = next(lm.train_iterator(batch_size=2, seq_len=4, seed=0))
  assert batch['inputs'].shape == (2, 4)


def test_wikitext_from_extracted_files_in_the_manual_dir(tmp_path):
  manual = tmp_path / 'manual' / 'wikitext-103'
  manual.mkdir(parents=True)
  for split, text in WIKI_TEXT.items():
    (manual / f'wiki.{split}.tokens').write_text(text, encoding='utf-8')
  lm = data.build_lm_data(_config('wikitext', tmp_path, manual.parent), seed=0)
  assert lm.num_tokens('test') == 15


def test_wikitext_manual_dir_without_the_files_is_explained(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'README').write_text('nothing here')
  with pytest.raises(ValueError, match='wikitext-103-v1.zip'):
    data.build_lm_data(_config('wikitext', tmp_path, manual), seed=0)


def test_enwik8_official_file_by_byte_offset(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  with open(manual / 'enwik8', 'wb') as f:
    f.truncate(100_000_000)
    for offset, value in ((89_999_999, 1), (90_000_000, 2), (95_000_000, 3), (99_999_999, 4)):
      f.seek(offset)
      f.write(bytes([value]))
  lm = data.build_lm_data(_config('enwik8', tmp_path, manual), seed=0)
  train, valid, test = (lm.streams[s] for s in ('train', 'valid', 'test'))
  assert (len(train), len(valid), len(test)) == (90_000_000, 5_000_000, 5_000_000)
  assert (train[-1], valid[0], test[0], test[-1]) == (1, 2, 3, 4)
  assert len(tfds.data_source('enwik8', split='test', data_dir=str(tmp_path / 'tfds'))) == 5


def test_enwik8_split_files_match_the_files_source(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  rng = np.random.default_rng(0)
  for split, size in (('train', 3_000_000), ('valid', 1000), ('test', 10)):
    (manual / f'{split}.txt').write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
  lm = data.build_lm_data(_config('enwik8', tmp_path, manual), seed=0)
  assert not lm.cache_hit
  assert data.build_lm_data(_config('enwik8', tmp_path, manual), seed=0).cache_hit
  config = data.lm_data_config('enwik8')
  config.dir, config.cache_dir = str(manual), str(tmp_path / 'cache')
  reference = data.build_lm_data(config, seed=0)
  for split in ('train', 'valid', 'test'):
    np.testing.assert_array_equal(lm.streams[split], reference.streams[split])
  assert lm.describe()['fingerprint'] == reference.describe()['fingerprint']
  assert tfds_source.TFDS_SPLITS['valid'] == 'validation'
