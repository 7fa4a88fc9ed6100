"""TFDS builders for the corpora that TFDS lacks: WikiText-103 and enwik8.

Importing this package registers them as `wikitext103` and `enwik8`, so that
`tfds.data_source('wikitext103', data_dir=…)` prepares (once) and reads them. Both prepare from
the official release: a folder given as the manual directory (`DownloadConfig(manual_dir=…)`,
`data.tfds_manual_dir`) that holds the archive or its extracted files, or else a download of
the official archive. Both use `disable_shuffling`, so records keep the order of the text, which a
language model's token stream needs.
"""

from data.tfds_builders.enwik8 import Enwik8
from data.tfds_builders.wikitext103 import Wikitext103

__all__ = ['Enwik8', 'Wikitext103']
