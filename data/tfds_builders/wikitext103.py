"""TFDS builder `wikitext103`: WikiText-103 (Merity et al. 2016), one record per line.

Records are `{'text': line}` (without the line break) in file order, the empty lines included,
so that `data/wikitext.py` rebuilds exactly the token stream fairseq-preprocess makes from the
`.tokens` files (every line's words, then `</s>`). Splits: train, validation, test.

Sources, in order of preference:
1. the manual directory (`tfds.download.DownloadConfig(manual_dir=…)`, `data.tfds_manual_dir`)
   holding `wikitext-103-v1.zip`, or the extracted `wiki.{train,valid,test}.tokens` (directly or
   in `wikitext-103/`), or `train.txt`, `valid.txt`, `test.txt`;
2. a download of the official `wikitext-103-v1.zip`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import io
from pathlib import Path
from typing import TextIO
import zipfile

import tensorflow_datasets as tfds

from data import wikitext
from data.tfds_builders import manual

_CITATION = """@inproceedings{merity2017pointer,
  title={Pointer Sentinel Mixture Models},
  author={Merity, Stephen and Xiong, Caiming and Bradbury, James and Socher, Richard},
  booktitle={International Conference on Learning Representations},
  year={2017}
}"""

Opener = Callable[[], contextlib.AbstractContextManager[TextIO]]


def _file_openers(files: dict[str, Path]) -> dict[str, Opener]:
  return {s: (lambda p=p: open(p, encoding='utf-8')) for s, p in files.items()}


def _zip_openers(archive: Path) -> dict[str, Opener]:
  """Openers for the `wiki.<split>.tokens` members of the official zip (any folder inside)."""
  with zipfile.ZipFile(archive) as zf:
    names = zf.namelist()
  members = {}
  for split in wikitext.SPLITS:
    wanted = f'wiki.{split}.tokens'
    found = [n for n in names if n.rsplit('/', 1)[-1] == wanted]
    if not found:
      raise ValueError(f'{archive} has no member {wanted} (members: {names[:6]}). '
                       f'{wikitext.WHERE_TO_GET}.')
    members[split] = found[0]

  @contextlib.contextmanager
  def open_member(member):
    with zipfile.ZipFile(archive) as zf, zf.open(member) as raw:
      yield io.TextIOWrapper(raw, encoding='utf-8')

  return {s: (lambda m=m: open_member(m)) for s, m in members.items()}


class Wikitext103(tfds.core.GeneratorBasedBuilder):
  """WikiText-103, word level, lines in order (see module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'One record per line of the official .tokens files, in order.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Put {wikitext.OFFICIAL_ZIP} (from {wikitext.DOWNLOAD_URL}, originally
  {wikitext.ORIGINAL_URL}) or its extracted wiki.train.tokens, wiki.valid.tokens and
  wiki.test.tokens in the manual directory. Without one, the builder downloads the zip.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='WikiText-103: 103M tokens of verified Good and Featured Wikipedia articles, '
                    'tokenized, with a 267k-word vocabulary (rarer words are <unk>).',
        features=tfds.features.FeaturesDict({'text': tfds.features.Text()}),
        homepage='https://www.salesforce.com/blog/the-wikitext-long-term-dependency-language-'
                 'modeling-dataset/',
        citation=_CITATION,
        disable_shuffling=True,  # the order of lines is the text
    )

  def _locate(self, dl_manager) -> dict[str, Opener]:
    folder = manual.manual_dir(dl_manager)
    if folder is None:
      return _zip_openers(Path(str(dl_manager.download(wikitext.DOWNLOAD_URL))))
    if (folder / wikitext.OFFICIAL_ZIP).is_file():
      return _zip_openers(folder / wikitext.OFFICIAL_ZIP)
    errors = []
    for candidate in (folder, folder / 'wikitext-103'):
      try:
        return _file_openers(wikitext.split_files(candidate))
      except ValueError as e:
        errors.append(str(e))
    raise ValueError(f'the manual directory {folder} has neither {wikitext.OFFICIAL_ZIP} nor the '
                     f'split files: {errors[0]}')

  def _split_generators(self, dl_manager):
    openers = self._locate(dl_manager)
    return {'train': self._generate_examples(openers['train']),
            'validation': self._generate_examples(openers['valid']),
            'test': self._generate_examples(openers['test'])}

  def _generate_examples(self, opener: Opener) -> Iterator[tuple[int, dict[str, str]]]:
    with opener() as f:
      for i, line in enumerate(f):
        yield i, {'text': line[:-1] if line.endswith('\n') else line}
