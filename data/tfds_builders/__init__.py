"""TFDS builders for the corpora that TFDS lacks: WikiText-103, enwik8 and IWSLT14 de-en.

Importing this package registers them as `wikitext103`, `enwik8` and `iwslt14` (fairseq's
prepare-iwslt14.sh, see data/iwslt14.py), so that `tfds.data_source('wikitext103', data_dir=…)`
prepares (once) and reads them. All three prepare from the official release: a folder given as
the manual directory (`DownloadConfig(manual_dir=…)`, `data.tfds_manual_dir`) that holds the
archive or its extracted files, or else a download of the official archive. All use
`disable_shuffling`, so records keep the order of the text, which a language model's token
stream needs (and IWSLT14 keeps fairseq's line order).
"""

from data.tfds_builders.enwik8 import Enwik8
from data.tfds_builders.iwslt14 import Iwslt14
from data.tfds_builders.wikitext103 import Wikitext103

__all__ = ['Enwik8', 'Iwslt14', 'Wikitext103']
