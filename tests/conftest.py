"""Shared pytest setup: hardware markers skip cleanly where the hardware is absent; tests write
nothing outside pytest's tmp folders.

* `ATTENTION_LAB_CACHE` (data/cache.py) points at a folder of the session's basetemp, for this
  process and the train.py / eval.py subprocesses the tests start (they inherit the environment),
  so that a test whose config leaves `data.cache_dir` empty adds no entry to the user's cache.
* JAX's persistent compilation cache lives in the session's basetemp (one per xdist worker), for
  this process and, through `JAX_COMPILATION_CACHE_DIR`, for the subprocesses: the many runs of
  one tiny config (resume and fault tests) compile once, about 3x faster a run on CPU, and tests
  that rebuild the same model reuse its executables. A cache entry is an executable keyed by the
  program and compile options, so a hit runs exactly what a fresh compile would.
* The `library_tempdir` fixture points Python's `tempfile` at the test's tmp_path, for libraries
  that leave folders in the system temp dir (TFDS 4.9.10 leaves one empty `tmp…tfds` folder each
  time a builder is made for a dataset not prepared yet).
"""

import os
import tempfile

import jax
import pytest

DATA_CACHE_VAR = 'ATTENTION_LAB_CACHE'  # data/cache.py's ENV_VAR
COMPILATION_CACHE = {  # jax config name -> value; the subprocesses read the same names in capitals
    'jax_persistent_cache_min_compile_time_secs': 0,
    'jax_persistent_cache_min_entry_size_bytes': 0,
}
_saved_environment: dict[str, str | None] = {}


def pytest_sessionstart(session):
  """Caches in the session's basetemp, set before collection compiles anything (jax reads its
  compilation-cache settings once, at the first compile)."""
  factory = session.config._tmp_path_factory  # pylint: disable=protected-access
  settings = dict(COMPILATION_CACHE, jax_compilation_cache_dir=str(factory.mktemp('jax_compilation_cache')))
  for name, value in settings.items():
    jax.config.update(name, value)
  environment = {name.upper(): str(value) for name, value in settings.items()}
  environment[DATA_CACHE_VAR] = str(factory.mktemp('attention_lab_cache'))
  _saved_environment.update({name: os.environ.get(name) for name in environment})
  os.environ.update(environment)


def pytest_sessionfinish(session, exitstatus):
  for name, value in _saved_environment.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value


@pytest.fixture(scope='session')
def uninterrupted(tmp_path_factory):
  """One finished 40-step run of `tests/test_train.py` TINY (1 device), which the resume, fault
  and multi-process tests compare against; they only read it (or copy it)."""
  from tests import test_train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('uninterrupted')
  test_train.run('train.py', *test_train.TINY, f'--workdir={workdir}')
  return workdir


def pytest_collection_modifyitems(config, items):
  backend = jax.default_backend()
  for item in items:
    if 'gpu' in item.keywords and backend != 'gpu':
      item.add_marker(pytest.mark.skip(reason=f'needs a GPU; this backend is {backend}'))
    if 'tpu' in item.keywords and backend != 'tpu':
      item.add_marker(pytest.mark.skip(reason=f'needs a TPU; this backend is {backend}'))


@pytest.fixture
def library_tempdir(tmp_path, monkeypatch):
  """`tempfile.mkdtemp()` and friends create under `<tmp_path>/system-tmp` during the test."""
  folder = tmp_path / 'system-tmp'
  folder.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(folder))
  return folder
