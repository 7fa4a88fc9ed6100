"""Shared pytest setup: hardware markers skip cleanly where the hardware is absent; tests write
nothing outside pytest's tmp folders.

* `ATTENTION_LAB_CACHE` (data/cache.py) points at a folder of the session's basetemp, for this
  process and the train.py / eval.py subprocesses the tests start (they inherit the environment),
  so that a test whose config leaves `data.cache_dir` empty adds no entry to the user's cache.
* The `library_tempdir` fixture points Python's `tempfile` at the test's tmp_path, for libraries
  that leave folders in the system temp dir (TFDS 4.9.10 leaves one empty `tmp…tfds` folder each
  time a builder is made for a dataset not prepared yet).
"""

import os
import tempfile

import jax
import pytest

DATA_CACHE_VAR = 'ATTENTION_LAB_CACHE'  # data/cache.py's ENV_VAR


def pytest_collection_modifyitems(config, items):
  backend = jax.default_backend()
  for item in items:
    if 'gpu' in item.keywords and backend != 'gpu':
      item.add_marker(pytest.mark.skip(reason=f'needs a GPU; this backend is {backend}'))
    if 'tpu' in item.keywords and backend != 'tpu':
      item.add_marker(pytest.mark.skip(reason=f'needs a TPU; this backend is {backend}'))


@pytest.fixture(scope='session', autouse=True)
def _data_cache_in_basetemp(tmp_path_factory):
  saved = os.environ.get(DATA_CACHE_VAR)
  os.environ[DATA_CACHE_VAR] = str(tmp_path_factory.mktemp('attention_lab_cache'))
  yield
  if saved is None:
    os.environ.pop(DATA_CACHE_VAR, None)
  else:
    os.environ[DATA_CACHE_VAR] = saved


@pytest.fixture
def library_tempdir(tmp_path, monkeypatch):
  """`tempfile.mkdtemp()` and friends create under `<tmp_path>/system-tmp` during the test."""
  folder = tmp_path / 'system-tmp'
  folder.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(folder))
  return folder
