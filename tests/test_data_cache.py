"""The tokenized-stream cache: keyed by file fingerprints, written atomically."""

import os

import numpy as np
import pytest

from data import cache


def _build(counter, value=7):
  def build():
    counter.append(1)
    return {'tokens': np.full(5, value, np.int32)}, {'note': 'hi'}
  return build


def test_second_load_is_a_hit_with_the_same_content(tmp_path):
  calls = []
  first = cache.load_or_build(tmp_path, 'ns', 'k1', _build(calls))
  second = cache.load_or_build(tmp_path, 'ns', 'k1', _build(calls))
  assert (first.hit, second.hit, len(calls)) == (False, True, 1)
  np.testing.assert_array_equal(second.arrays['tokens'], np.full(5, 7))
  assert second.meta['note'] == 'hi'
  assert isinstance(second.arrays['tokens'], np.memmap)  # loaded lazily, not read


def test_fingerprint_follows_path_size_mtime_version_and_options(tmp_path):
  f = tmp_path / 'a.txt'
  f.write_text('abc')
  base = cache.fingerprint([f], version='v1')
  assert cache.fingerprint([f], version='v1') == base
  assert cache.fingerprint([f], version='v2') != base
  assert cache.fingerprint([f], version='v1', padding_factor=1) != base
  st = f.stat()
  os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
  assert cache.fingerprint([f], version='v1') != base
  touched = cache.fingerprint([f], version='v1')
  f.write_text('abcd')
  assert cache.fingerprint([f], version='v1') != touched
  # A directory (e.g. a prepared TFDS dataset) is fingerprinted by the files inside it.
  d = tmp_path / 'd'
  d.mkdir()
  (d / 'x').write_text('1')
  before = cache.fingerprint([d], version='v1')
  (d / 'y').write_text('2')
  assert cache.fingerprint([d], version='v1') != before


def test_a_failed_build_leaves_no_entry(tmp_path):
  def explode():
    raise KeyboardInterrupt  # as if the run were killed while tokenizing

  with pytest.raises(KeyboardInterrupt):
    cache.load_or_build(tmp_path, 'ns', 'k', explode)
  calls = []
  assert not cache.load_or_build(tmp_path, 'ns', 'k', _build(calls)).hit
  assert len(calls) == 1


def test_a_write_killed_halfway_is_never_read(tmp_path, monkeypatch):
  real_save = np.save

  def dying_save(path, array):
    real_save(path, array[:1])
    raise OSError('disk full')

  monkeypatch.setattr(np, 'save', dying_save)
  with pytest.raises(OSError, match='disk full'):
    cache.load_or_build(tmp_path, 'ns', 'k', _build([]))
  monkeypatch.undo()
  assert not (tmp_path / 'ns' / 'k').exists()
  assert not list((tmp_path / 'ns').iterdir())  # the temporary folder is gone too
  entry = cache.load_or_build(tmp_path, 'ns', 'k', _build([]))
  assert not entry.hit and len(entry.arrays['tokens']) == 5


def test_a_damaged_entry_is_rebuilt(tmp_path):
  entry = cache.load_or_build(tmp_path, 'ns', 'k', _build([]))
  (entry.path / 'tokens.npy').unlink()
  calls = []
  again = cache.load_or_build(tmp_path, 'ns', 'k', _build(calls, value=3))
  assert not again.hit and calls == [1]
  np.testing.assert_array_equal(again.arrays['tokens'], np.full(5, 3))


def test_cache_dir_resolution(monkeypatch, tmp_path):
  assert cache.ENV_VAR == 'ATTENTION_LAB_CACHE'  # also named in tests/conftest.py
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / 'env'))
  assert cache.resolve_cache_dir('') == tmp_path / 'env'
  assert cache.resolve_cache_dir(str(tmp_path / 'cfg')) == tmp_path / 'cfg'
  monkeypatch.setenv(cache.ENV_VAR, '')  # empty = unset
  assert cache.resolve_cache_dir('') == tmp_path / 'xdg' / 'attention_lab'
  monkeypatch.delenv(cache.ENV_VAR)
  assert cache.resolve_cache_dir('') == tmp_path / 'xdg' / 'attention_lab'
  monkeypatch.delenv('XDG_CACHE_HOME')
  assert cache.resolve_cache_dir('') == cache.Path('~/.cache/attention_lab').expanduser()
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert cache.resolve_cache_dir('') == tmp_path / 'home' / '.cache' / 'attention_lab'


def test_the_suite_keeps_the_cache_in_its_basetemp(tmp_path_factory):
  """conftest.py points the variable at the session's basetemp (the user's cache stays clean)."""
  root = tmp_path_factory.getbasetemp().resolve()
  assert root in cache.resolve_cache_dir('').resolve().parents


def test_the_environment_variable_is_where_entries_go(monkeypatch, tmp_path):
  """The producers pass `resolve_cache_dir(data.cache_dir)`: with cache_dir '' the variable wins."""
  monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / 'env'))
  entry = cache.load_or_build(cache.resolve_cache_dir(''), 'ns', 'k', _build([]))
  assert entry.path == tmp_path / 'env' / 'ns' / 'k'
  assert (tmp_path / 'env' / 'ns' / 'k' / 'tokens.npy').is_file()
