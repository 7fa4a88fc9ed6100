"""TFDS builder `iwslt14`: IWSLT14 German–English as fairseq's prepare-iwslt14.sh makes it.

Records are `{'de': line, 'en': line}` pairs of BPE'd text (joint subword-nmt BPE, 10,000
merges, `@@ ` continuation marks) in file order: the files `data/iwslt14.py`'s `prepare`
writes to `bpe10k/`, which are those fairseq-preprocess binarizes for its
`transformer_iwslt_de_en` recipe. Splits: train (160,239 pairs), validation (every 23rd
cleaned training pair, 7,283), test (dev2010, TEDX.dev2012, tst2010–2012: 6,750).
`supervised_keys` is ('de', 'en'), the recipe's direction.

Sources, in order of preference:
1. the manual directory (`tfds.download.DownloadConfig(manual_dir=…)`) holding `de-en.tgz`
   (IWSLT 2014, 2014-01 release) or its extracted `de-en/` folder, or those files directly;
2. a download of `de-en.tgz` from the URL fairseq's script uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
import tempfile

import tensorflow_datasets as tfds

from data import iwslt14
from data.tfds_builders import manual

_CITATION = """@inproceedings{cettolo2014report,
  title={Report on the 11th {IWSLT} Evaluation Campaign, {IWSLT} 2014},
  author={Cettolo, Mauro and Niehues, Jan and St{\\"u}ker, Sebastian and Bentivogli, Luisa and
          Federico, Marcello},
  booktitle={Proceedings of the International Workshop on Spoken Language Translation},
  year={2014}
}"""


class Iwslt14(tfds.core.GeneratorBasedBuilder):
  """IWSLT14 de-en, fairseq's preparation, BPE'd pairs in order (see module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'fairseq prepare-iwslt14.sh: Moses tokens, lowercased, '
                            'clean-corpus 1.5/1/175, valid = every 23rd, joint BPE 10k.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Put {iwslt14.ARCHIVE} (from {iwslt14.DOWNLOAD_URL}, originally {iwslt14.ORIGINAL_URL}) or its
  extracted {iwslt14.PAIR}/ folder in the manual directory. Without one, the builder downloads
  the archive.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='IWSLT 2014 German-English TED talks as fairseq prepares them '
                    '(examples/translation/prepare-iwslt14.sh): Moses-tokenized, lowercased, '
                    'joint BPE with 10,000 merges.',
        features=tfds.features.FeaturesDict({
            'de': tfds.features.Text(),
            'en': tfds.features.Text(),
        }),
        supervised_keys=('de', 'en'),
        homepage='https://github.com/facebookresearch/fairseq/tree/main/examples/translation',
        citation=_CITATION,
        disable_shuffling=True,  # records keep the order of fairseq's files
    )

  def _split_generators(self, dl_manager):
    folder = manual.manual_dir(dl_manager)
    source = folder if folder is not None else Path(
        str(dl_manager.download(iwslt14.DOWNLOAD_URL)))
    # The prepared files are read into memory (about 40 MB of text), so the temporary folder can go
    # before TFDS consumes the generators.
    with tempfile.TemporaryDirectory(prefix='iwslt14-') as tmp:
      prepared = Path(tmp) / 'iwslt14-de-en'
      iwslt14.prepare(source, prepared)
      pairs = {split: iwslt14.read_pairs(prepared, split) for split in iwslt14.SPLITS}
    return {'train': self._generate_examples(pairs['train']),
            'validation': self._generate_examples(pairs['valid']),
            'test': self._generate_examples(pairs['test'])}

  def _generate_examples(self, pairs: Sequence[tuple[str, str]],
                         ) -> Iterator[tuple[int, dict[str, str]]]:
    for i, (de, en) in enumerate(pairs):
      yield i, {'de': de, 'en': en}
