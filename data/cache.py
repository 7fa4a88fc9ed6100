"""On-disk cache of tokenized streams, keyed by a fingerprint of the source files.

Tokenizing WikiText-103 takes about a minute; loading its cached int32 stream takes milliseconds
(it is memory-mapped, not read). An entry is a directory `<cache_dir>/<namespace>/<key>/` holding
one `.npy` file per array and a `meta.json`; it is written under a temporary name and renamed into
place, and a rename is atomic on POSIX file systems, so a run killed while writing leaves no entry
that looks complete, and two runs building the same entry at once both end up with a valid one.

The key is a SHA-256 over each source file's resolved path, size and modification time
(nanoseconds), the tokenizer's version string and its options: editing, replacing or touching a
source file, or changing the tokenization code's version, gives a new key. Stale entries are never
overwritten; delete the cache directory to reclaim space.

**What is cached.** One folder per producer under the cache root: `wikitext/` and `enwik8/`
(tokenized int32 streams and their vocabularies), `translation/` (encoded parallel splits of
IWSLT14 / WMT14) and `sentencepiece/` (trained joint sentencepiece models). Nothing else is
written there, and nothing in it is the only copy of anything: the whole folder is safe to delete
whenever no run is building an entry (the next run rebuilds what it needs, tokenizing again; a
sentencepiece model is retrained with a fixed seed, and a workdir records the sha256 of its
vocabulary and token streams, so a rebuilt entry that differed would be refused, not used).

**Where.** The cache never lives beside the data (a data folder may be read-only). The root is,
first match wins:

1. `data.cache_dir` in the config, when set;
2. `$ATTENTION_LAB_CACHE`, when set and non-empty (e.g. `ATTENTION_LAB_CACHE=/scratch/al-cache`);
3. `$XDG_CACHE_HOME/attention_lab`, when `XDG_CACHE_HOME` is set and non-empty (the XDG base
   directory convention);
4. `~/.cache/attention_lab`.

`~` is expanded in all of them. `resolve_cache_dir()` returns the root in use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
import shutil
import time
import uuid

import numpy as np

ENV_VAR = 'ATTENTION_LAB_CACHE'
CACHE_NAME = 'attention_lab'
DEFAULT_DIR = f'~/.cache/{CACHE_NAME}'  # when neither $ATTENTION_LAB_CACHE nor $XDG_CACHE_HOME
_TMP_PREFIX = '.tmp-'
_STALE_TMP_SECONDS = 24 * 3600


def resolve_cache_dir(configured: str = '') -> Path:
  """`configured`, else `$ATTENTION_LAB_CACHE`, else `$XDG_CACHE_HOME/attention_lab`, else
  `~/.cache/attention_lab` (user-expanded; empty variables count as unset)."""
  if configured:
    return Path(configured).expanduser()
  if os.environ.get(ENV_VAR):
    return Path(os.environ[ENV_VAR]).expanduser()
  if os.environ.get('XDG_CACHE_HOME'):
    return Path(os.environ['XDG_CACHE_HOME']).expanduser() / CACHE_NAME
  return Path(DEFAULT_DIR).expanduser()


def _files_under(path: Path) -> list[Path]:
  if path.is_dir():
    return sorted(p for p in path.rglob('*') if p.is_file())
  return [path]


def fingerprint(paths: Iterable[str | os.PathLike], *, version: str, **options) -> str:
  """Hex SHA-256 of (path, size, mtime_ns) of every file (directories walked), version, options.

  Args:
    paths: the source files (or directories, e.g. a prepared TFDS dataset).
    version: the producing code's version; bump it whenever tokenization changes.
    **options: anything else that changes the output (JSON-able), e.g. `padding_factor=8`.
  """
  files = []
  for path in paths:
    for f in _files_under(Path(path).resolve()):
      st = f.stat()
      files.append((str(f), st.st_size, st.st_mtime_ns))
  blob = json.dumps({'files': files, 'version': version, 'options': options}, sort_keys=True)
  return hashlib.sha256(blob.encode('utf-8')).hexdigest()


@dataclasses.dataclass
class CacheEntry:
  """What `load_or_build` returns. `hit` says whether it came from disk."""
  arrays: dict[str, np.ndarray]
  meta: dict
  hit: bool
  path: Path


Builder = Callable[[], tuple[dict[str, np.ndarray], dict]]


def _load(entry_dir: Path) -> tuple[dict[str, np.ndarray], dict]:
  meta = json.loads((entry_dir / 'meta.json').read_text(encoding='utf-8'))
  arrays = {name: np.load(entry_dir / f'{name}.npy', mmap_mode='r')
            for name in meta['_arrays']}
  return arrays, meta


def _remove_stale_tmp(namespace_dir: Path) -> None:
  now = time.time()
  for tmp in namespace_dir.glob(_TMP_PREFIX + '*'):
    try:
      if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
        shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
      pass


def load_or_build(cache_dir: str | os.PathLike, namespace: str, key: str,
                  build: Builder) -> CacheEntry:
  """Returns the entry `<cache_dir>/<namespace>/<key>`, building and storing it if absent.

  Args:
    cache_dir: root of the cache (see `resolve_cache_dir`).
    namespace: a folder per producer, e.g. 'wikitext' or 'enwik8'.
    key: usually `fingerprint(...)` of the sources.
    build: returns (arrays, meta): named numpy arrays, stored as `.npy` and loaded back
      memory-mapped, and a JSON-able dict.
  """
  namespace_dir = Path(cache_dir).expanduser() / namespace
  entry_dir = namespace_dir / key
  if entry_dir.is_dir():
    try:
      arrays, meta = _load(entry_dir)
      logging.info('data cache hit: %s', entry_dir)
      return CacheEntry(arrays, meta, hit=True, path=entry_dir)
    except (OSError, ValueError, KeyError) as e:  # Damaged by hand; rebuild it.
      logging.warning('data cache entry %s is unreadable (%s); rebuilding it', entry_dir, e)
      shutil.rmtree(entry_dir, ignore_errors=True)

  start = time.perf_counter()
  arrays, meta = build()
  if '_arrays' in meta:
    raise ValueError("meta key '_arrays' is reserved by the cache")
  try:
    namespace_dir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise OSError(
        f'cannot create the data cache directory {namespace_dir} ({e}); set data.cache_dir or '
        f'${ENV_VAR} to a writable directory') from e
  _remove_stale_tmp(namespace_dir)
  tmp = namespace_dir / f'{_TMP_PREFIX}{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}'
  tmp.mkdir()
  try:
    for name, array in arrays.items():
      np.save(tmp / f'{name}.npy', np.ascontiguousarray(array))
    stored_meta = dict(meta, _arrays=sorted(arrays))
    (tmp / 'meta.json').write_text(json.dumps(stored_meta), encoding='utf-8')
    try:
      os.rename(tmp, entry_dir)
    except OSError:
      if not entry_dir.is_dir():
        raise
      # Another process finished the same entry first; theirs is as good as ours.
      shutil.rmtree(tmp, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  logging.info('data cache: built %s in %.1f s', entry_dir, time.perf_counter() - start)
  arrays, meta = _load(entry_dir)
  return CacheEntry(arrays, meta, hit=False, path=entry_dir)
