"""TFDS builder `enwik8`: the Hutter Prize bytes, split 90M/5M/5M as Transformer-XL does.

Records are `{'bytes': uint8[≤ 1 MiB]}` chunks of each split in order; `data/enwik8.py` joins
them back into the split's byte stream. Splits: train, validation, test.

Sources, in order of preference:
1. the manual directory (`tfds.download.DownloadConfig(manual_dir=…)`, `data.tfds_manual_dir`)
   holding `enwik8` (exactly 100,000,000 bytes), `enwik8.zip`, or — for another byte corpus —
   `train.txt`, `valid.txt`, `test.txt`;
2. a download of http://mattmahoney.net/dc/enwik8.zip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from data import enwik8
from data.tfds_builders import manual

CHUNK_BYTES = 1 << 20

_CITATION = """@misc{mahoney2011enwik8,
  author={Mahoney, Matt},
  title={Large Text Compression Benchmark},
  url={http://mattmahoney.net/dc/text.html},
  year={2011}
}"""


class Enwik8(tfds.core.GeneratorBasedBuilder):
  """enwik8, byte level, chunks in order (see module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': '1 MiB byte chunks; prep_enwik8.py split by offset.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Put enwik8.zip (from {enwik8.DOWNLOAD_URL}) or the 100,000,000-byte enwik8 file it contains in
  the manual directory; for another byte corpus, put train.txt, valid.txt and test.txt there.
  Without one, the builder downloads enwik8.zip.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='enwik8: the first 10^8 bytes of the English Wikipedia XML dump of '
                    '2006-03-03 (Hutter Prize), for byte-level language modelling.',
        features=tfds.features.FeaturesDict({
            'bytes': tfds.features.Tensor(shape=(None,), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
        }),
        homepage='http://mattmahoney.net/dc/textdata.html',
        citation=_CITATION,
        disable_shuffling=True,  # the order of chunks is the text
    )

  def _split_generators(self, dl_manager):
    folder = manual.manual_dir(dl_manager)
    if folder is None:
      archive = Path(str(dl_manager.download(enwik8.DOWNLOAD_URL)))
      splits = enwik8.official_split(enwik8.read_zip(archive))
    else:
      splits = enwik8.read_splits(folder)
    return {'train': self._generate_examples(splits['train']),
            'validation': self._generate_examples(splits['valid']),
            'test': self._generate_examples(splits['test'])}

  def _generate_examples(self, data: np.ndarray) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    for i, start in enumerate(range(0, len(data), CHUNK_BYTES)):
      yield i, {'bytes': np.asarray(data[start:start + CHUNK_BYTES], dtype=np.uint8)}
