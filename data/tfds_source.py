"""Reads this project's TFDS datasets (`data/tfds_builders/`) through `tfds.data_source`.

TFDS without TensorFlow (tensorflow.org/datasets/tfless_tfds): a dataset prepared in the
ArrayRecord file format is read by `tfds.data_source`, a random-access source of NumPy records
that needs no TensorFlow. With tensorflow-datasets 4.9.10 our builders also *prepare* without
TensorFlow (their features are plain text and byte arrays). Importing this module imports
`tensorflow_datasets` and registers the builders.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

try:
  import importlib_resources  # pylint: disable=g-import-not-at-top,unused-import
except ImportError as e:
  # tensorflow-datasets 4.9.x imports it for builders that live in a package but declares it
  # only for Python < 3.9 (tensorflow/datasets#11212).
  raise ImportError(
      'preparing the project\'s TFDS datasets with tensorflow-datasets 4.9.x needs the package '
      'importlib_resources, which TFDS forgets to declare (tensorflow/datasets#11212): '
      'pip install importlib_resources') from e

from data import tfds_builders  # pylint: disable=unused-import  (registers the builders)

# Our split names → TFDS split names.
TFDS_SPLITS = {'train': 'train', 'valid': 'validation', 'test': 'test'}


def data_sources(name: str, *, data_dir: str = '', manual_dir: str = '',
                 download: bool = True) -> tuple[dict[str, Sequence[Any]], Path]:
  """Prepares `name` if needed (ArrayRecord) and returns (split → data source, prepared dir).

  Args:
    name: a registered builder, e.g. 'wikitext103' or 'enwik8'.
    data_dir: TFDS data directory; '' = TFDS's default (`$TFDS_DATA_DIR` or
      ~/tensorflow_datasets).
    manual_dir: folder with the official archive or files (see each builder's
      MANUAL_DOWNLOAD_INSTRUCTIONS); '' = `<data_dir>/downloads/manual`, else download.
    download: prepare the dataset when it is not prepared yet.
  """
  data_dir = str(Path(data_dir).expanduser()) if data_dir else None
  builder_kwargs = {'file_format': 'array_record'}
  prepare_kwargs = {}
  if manual_dir:
    prepare_kwargs['download_config'] = tfds.download.DownloadConfig(
        manual_dir=str(Path(manual_dir).expanduser()))
  split_sources = tfds.data_source(
      name, split=list(TFDS_SPLITS.values()), data_dir=data_dir,
      download=download, builder_kwargs=builder_kwargs,
      download_and_prepare_kwargs=prepare_kwargs)
  builder = tfds.builder(name, data_dir=data_dir, **builder_kwargs)
  sources = dict(zip(TFDS_SPLITS, split_sources))
  return sources, Path(str(builder.data_path))


def iterate_records(source: Sequence[Any], *, chunk: int = 4096) -> Iterator[Any]:
  """Yields the records of a data source in order, reading `chunk` records per call."""
  get_many = getattr(source, '__getitems__', None)
  for start in range(0, len(source), chunk):
    keys = range(start, min(start + chunk, len(source)))
    if get_many is not None:
      yield from get_many(list(keys))
    else:
      for key in keys:
        yield source[key]
