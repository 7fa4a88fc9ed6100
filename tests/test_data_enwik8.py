"""enwik8: the 90M/5M/5M byte split of prep_enwik8.py, the zip, and split files."""

import zipfile

import numpy as np
import pytest

import data
from data import enwik8

MARKERS = {  # offset -> byte, at both sides of each split boundary
    0: ord('<'), 89_999_999: ord('a'), 90_000_000: ord('b'), 94_999_999: ord('c'),
    95_000_000: ord('d'), 99_999_999: ord('e')}


def _sparse_enwik8(path, size=enwik8.ENWIK8_BYTES):
  """A cheap file of `size` bytes: zeros (sparse on disk) with marker bytes at the boundaries."""
  with open(path, 'wb') as f:
    f.truncate(size)
    for offset, value in MARKERS.items():
      if offset < size:
        f.seek(offset)
        f.write(bytes([value]))
  return path


def _config(folder, cache):
  config = data.lm_data_config('enwik8')
  config.dir, config.cache_dir = str(folder), str(cache)
  return config


def _check_official_split(lm):
  assert {s: lm.num_tokens(s) for s in ('train', 'valid', 'test')} == {
      'train': 90_000_000, 'valid': 5_000_000, 'test': 5_000_000}
  train, valid, test = (lm.streams[s] for s in ('train', 'valid', 'test'))
  assert (train[0], train[-1]) == (MARKERS[0], MARKERS[89_999_999])
  assert (valid[0], valid[-1]) == (MARKERS[90_000_000], MARKERS[94_999_999])
  assert (test[0], test[-1]) == (MARKERS[95_000_000], MARKERS[99_999_999])
  assert lm.vocab_size == 256 and lm.metric == 'bpc'


def test_official_file_is_split_by_byte_offset(tmp_path):
  folder = tmp_path / 'enwik8'
  folder.mkdir()
  _sparse_enwik8(folder / 'enwik8')
  lm = data.build_lm_data(_config(folder, tmp_path / 'cache'), seed=0)
  _check_official_split(lm)
  assert lm.describe()['layout'] == 'raw'


def test_official_zip(tmp_path):
  folder = tmp_path / 'data'
  folder.mkdir()
  raw = _sparse_enwik8(tmp_path / 'enwik8')
  with zipfile.ZipFile(folder / 'enwik8.zip', 'w', zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
    zf.write(raw, 'enwik8')
  lm = data.build_lm_data(_config(folder, tmp_path / 'cache'), seed=0)
  _check_official_split(lm)
  assert not lm.cache_hit
  assert data.build_lm_data(_config(folder, tmp_path / 'cache'), seed=0).cache_hit


def test_a_file_named_enwik8_with_another_size_is_refused(tmp_path):
  _sparse_enwik8(tmp_path / 'enwik8', size=1_000_000)
  with pytest.raises(ValueError, match=r'1,000,000 bytes.*exactly 100,000,000'):
    data.build_lm_data(_config(tmp_path, tmp_path / 'cache'), seed=0)


def test_a_zip_without_enwik8_is_refused(tmp_path):
  with zipfile.ZipFile(tmp_path / 'enwik8.zip', 'w') as zf:
    zf.writestr('text8', b'abc')
  with pytest.raises(ValueError, match='not the member enwik8'):
    data.build_lm_data(_config(tmp_path, tmp_path / 'cache'), seed=0)


def test_separate_split_files_of_raw_bytes(tmp_path):
  texts = {'train': 'h\u00e9llo world\n'.encode(), 'valid': b'\x00\xff', 'test': b'xyz'}
  for split, content in texts.items():
    (tmp_path / f'{split}.txt').write_bytes(content)
  lm = data.build_lm_data(_config(tmp_path, tmp_path / 'cache'), seed=0)
  for split, content in texts.items():
    np.testing.assert_array_equal(lm.streams[split], np.frombuffer(content, np.uint8))
  assert lm.decode(lm.streams['train']) == 'h\u00e9llo world\n'
  batch = next(lm.train_iterator(batch_size=2, seq_len=4, seed=0))
  assert batch['inputs'].dtype == np.int32 and batch['inputs'].shape == (2, 4)
  rows = list(lm.eval_batches('valid', batch_size=4, seq_len=4))
  assert rows[0]['targets'][0, :2].tolist() == [0, 255]
  assert rows[0]['weights'].sum() == 2


def test_missing_data_names_every_accepted_layout(tmp_path):
  with pytest.raises(ValueError) as error:
    data.build_lm_data(_config(tmp_path, tmp_path / 'cache'), seed=0)
  for expected in ('enwik8', 'enwik8.zip', 'train.txt', 'mattmahoney.net/dc/enwik8.zip'):
    assert expected in str(error.value)
