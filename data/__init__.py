"""Language-modelling data: the synthetic MQAR task, WikiText (word level) and enwik8 (bytes).

The trainer needs two calls:

    data = build_lm_data(config.data, seed=config.seed)
    it = data.train_iterator(batch_size=B, seq_len=T, seed=config.seed)   # grain, checkpointable
    for batch in data.eval_batches('valid', batch_size=B, seq_len=T, context_window=C): ...

Every batch is a dict of numpy arrays: 'inputs' and 'targets' [B, T] int32 (targets are the next
tokens) and 'weights' [B, T] float32 (1 = counts in the loss and the metric). `lm_data_config(name)`
gives the `config.data` block of a task; every key any LM task may set exists in every block, so
`--config.data.name=enwik8 --config.data.dir=…` works from any config.

Data flow and references: `wikitext.py` (fairseq tokenization), `enwik8.py` (prep_enwik8.py
split), `synthetic.py` (Zoology's MQAR), `pipeline.py` (grain training blocks, fairseq
`--context-window` evaluation), `cache.py` (tokenized streams on disk), `tfds_builders/` (TFDS
builders preparing ArrayRecord files from the official archives, read without TensorFlow).

Translation (IWSLT14 de→en, WMT14 en→de) has its own pair, in `translation.py`:
`build_translation_data(config.data, max_positions=config.model.max_len)` gives a
`TranslationData` whose training iterator and evaluation batches carry 'source', 'target_in',
'targets' and 'weights' under a token budget (`max_tokens`), and whose `postprocess`,
`references` give text for BLEU; `translation_data_config(name)` gives its `config.data` block.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from data.pipeline import EvalBatches
from data.pipeline import LMData
from data.translation import build_translation_data
from data.translation import TranslationData
from data.translation import translation_data_config

__all__ = ['LMData', 'EvalBatches', 'build_lm_data', 'lm_data_config', 'resolve_data_dir',
           'TranslationData', 'build_translation_data', 'translation_data_config']

NAMES = ('mqar', 'wikitext', 'enwik8')
SOURCES = ('synthetic', 'files', 'tfds')
PROJECT_ROOT = Path(__file__).resolve().parents[1]
_DEFAULT_DIRS = {'mqar': '', 'wikitext': '../shared/data/wikitext-2', 'enwik8': '~/data/enwik8'}
_DEFAULT_TFDS_NAMES = {'mqar': '', 'wikitext': 'wikitext103', 'enwik8': 'enwik8'}


def lm_data_config(name: str) -> ml_collections.ConfigDict:
  """The default `config.data` block for task `name` ∈ {'mqar', 'wikitext', 'enwik8'}."""
  if name not in NAMES:
    raise ValueError(f'unknown data name {name!r}; known: {", ".join(NAMES)}')
  c = ml_collections.ConfigDict()
  c.name = name
  c.source = 'synthetic' if name == 'mqar' else 'files'   # synthetic (mqar) | files | tfds
  # Folder with the split files (see data/wikitext.py, data/enwik8.py). A relative path is taken
  # from the working directory, else from the project root (so '../shared/data/…' works).
  c.dir = _DEFAULT_DIRS[name]
  c.tfds_name = _DEFAULT_TFDS_NAMES[name]   # registered builder in data/tfds_builders/
  c.tfds_data_dir = ''     # '' = TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
  c.tfds_manual_dir = ''   # official archive/files for preparing offline ('' = download)
  # Tokenized streams: '' = $ATTENTION_LAB_CACHE, else $XDG_CACHE_HOME/attention_lab, else
  # ~/.cache/attention_lab (data/cache.py; safe to delete).
  c.cache_dir = ''
  c.padding_factor = 8     # word vocabulary padded to a multiple of this (fairseq default)
  # MQAR (data/synthetic.py); the sequence length is the trainer's seq_len.
  c.num_kv_pairs = 8
  c.num_queries = 8
  c.key_vocab_size = 32
  c.value_vocab_size = 32   # chance accuracy = 1 / value_vocab_size
  c.pair_tokens = False     # one token per key–value pair (one attention hop; data/synthetic.py)
  c.num_train_examples = 100_000
  c.num_valid_examples = 1_000
  c.num_test_examples = 1_000
  c.data_seed = 0           # MQAR examples; -1 = the run's seed
  return c


def resolve_data_dir(directory: str) -> Path:
  """`directory` with ~ expanded; relative: from the working directory if it exists there, else
  from the project root (where `../shared/data` lives). A folder found in neither is returned as
  given, for the loader to report with the files it expects."""
  if not directory:
    raise ValueError('data.dir is empty; set it to the folder that holds the data')
  path = Path(directory).expanduser()
  if path.exists():
    return path
  if not path.is_absolute() and (PROJECT_ROOT / path).exists():
    return PROJECT_ROOT / path
  # A missing folder is reported by the task's loader, which names the files it expects there.
  return path


def build_lm_data(data_config: ml_collections.ConfigDict, *, seed: int) -> LMData:
  """Builds the dataset that `data_config` (a `lm_data_config` block) describes.

  Args:
    data_config: `config.data`.
    seed: the run's seed; used for MQAR examples when `data_seed` is -1 (shuffling seeds are
      given to `train_iterator`).
  """
  name, source = data_config.name, data_config.source
  if name not in NAMES:
    raise ValueError(f'unknown data.name {name!r}; known: {", ".join(NAMES)}')
  if name == 'mqar':
    if source != 'synthetic':
      raise ValueError(f"data.source for mqar must be 'synthetic', got {source!r}")
    from data import synthetic  # pylint: disable=g-import-not-at-top
    return synthetic.MQARData(
        num_kv_pairs=data_config.num_kv_pairs, num_queries=data_config.num_queries,
        key_vocab_size=data_config.key_vocab_size, value_vocab_size=data_config.value_vocab_size,
        num_train_examples=data_config.num_train_examples,
        num_valid_examples=data_config.num_valid_examples,
        num_test_examples=data_config.num_test_examples,
        data_seed=seed if data_config.data_seed < 0 else data_config.data_seed,
        pair_tokens=data_config.pair_tokens)
  if source not in ('files', 'tfds'):
    raise ValueError(f"data.source for {name} must be 'files' or 'tfds', got {source!r}")
  cache_dir = data_config.cache_dir
  if name == 'wikitext':
    from data import wikitext  # pylint: disable=g-import-not-at-top
    if source == 'files':
      return wikitext.load_files(resolve_data_dir(data_config.dir), cache_dir=cache_dir,
                                 padding_factor=data_config.padding_factor)
    return wikitext.load_tfds(data_config.tfds_name or 'wikitext103',
                              data_dir=data_config.tfds_data_dir,
                              manual_dir=data_config.tfds_manual_dir, cache_dir=cache_dir,
                              padding_factor=data_config.padding_factor)
  from data import enwik8  # pylint: disable=g-import-not-at-top
  if source == 'files':
    return enwik8.load_files(resolve_data_dir(data_config.dir), cache_dir=cache_dir)
  return enwik8.load_tfds(data_config.tfds_name or 'enwik8', data_dir=data_config.tfds_data_dir,
                          manual_dir=data_config.tfds_manual_dir, cache_dir=cache_dir)

