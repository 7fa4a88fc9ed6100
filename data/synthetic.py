"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology", arXiv 2312.04927).

The default task: it needs no download and separates attention variants by how well they recall.
Each example lists `num_kv_pairs` key–value pairs, then, at random places in the rest of the
sequence, asks `num_queries` of the keys again; the answer to a query is the value that followed
that key. As a token stream of `seq_len + 1` tokens:

    k₁ v₁ k₂ v₂ … kₙ vₙ  .  .  k₃ v₃  .  k₁ v₁  .  .  …

`inputs` is the stream without its last token and `targets` the stream shifted by one, so the
model predicts the next token everywhere, but only the query keys' targets (their values) have
weight 1: the metric is the accuracy of recalling the value of each queried key.

Vocabulary: id 0 is the filler '.', ids 1…key_vocab_size are keys, the next value_vocab_size ids
are values. Keys in an example are distinct; values are drawn uniformly and independently, so a
model that has not found the key's pair is right with probability 1/value_vocab_size: chance
accuracy is 1/32 ≈ 3.1% with the defaults (and at most 10%, since value_vocab_size ≥ 10 is
required).

Defaults (8 pairs, 8 queries, 32 keys, 32 values, vocabulary 65, sequences of 64) are sized so a
2-layer softmax transformer (d_model 128) reaches ≥ 90% accuracy within a few minutes on two CPU
cores, while making the task depend on attention (the answer is up to 60 positions back).
Zoology's own sweeps use longer sequences (64–512) and more pairs (4–64).

With `pair_tokens=True` each key–value pair is written as one token `(k, v)` (a vocabulary of
key_vocab_size × value_vocab_size pair tokens), so the stream reads `(k₁v₁) (k₂v₂) … . k₃ v₃ .`.
Recall is then one attention hop: the query key must find the pair token with its key and read
that token's value, which one attention layer can do. The two-token form needs an induction
circuit over two layers (the key's identity first copied onto the next position), which forms
after a plateau whose length depends on the optimizer. Measured with 2-layer, d_model-128 LMs:
with AdamW at lr 3e-3 and weight decay 0.01, 4 pairs stalled near 57% accuracy after 1,750
updates of 64 sequences; with Adam at lr 1e-3 and no weight decay, accuracy jumped from ~25% to
~99% after 300–1,000 updates (4–8 pairs). The pair-token form passes 90% within 200 updates
under the default config, which keeps the default run well inside its 3-minute budget; the
two-token form is the one Zoology studies.

Example `i` of a split is generated from `np.random.default_rng([data_seed, split_id, i])`:
the same (seed, split, index, shapes) always give the same example, and the training, validation
and test sets are disjoint index streams.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from data import pipeline

FILLER_ID = 0
MIN_VALUE_VOCAB = 10  # keeps chance accuracy at most 10%
_SPLIT_IDS = {'train': 0, 'valid': 1, 'test': 2}


def vocab_size(key_vocab_size: int, value_vocab_size: int, pair_tokens: bool = False) -> int:
  pairs = key_vocab_size * value_vocab_size if pair_tokens else 0
  return 1 + key_vocab_size + value_vocab_size + pairs


def min_seq_len(num_kv_pairs: int, num_queries: int, pair_tokens: bool = False) -> int:
  """Shortest seq_len that fits the pairs and the queries (a query and its answer take 2)."""
  return (1 if pair_tokens else 2) * num_kv_pairs + 2 * num_queries - 1


def check_options(*, seq_len: int, num_kv_pairs: int, num_queries: int, key_vocab_size: int,
                  value_vocab_size: int, pair_tokens: bool = False) -> None:
  """Raises ValueError with the fix when the options cannot make an MQAR example."""
  if num_kv_pairs < 1 or num_queries < 1:
    raise ValueError(f'MQAR needs num_kv_pairs ≥ 1 and num_queries ≥ 1; got {num_kv_pairs}, '
                     f'{num_queries}')
  if num_queries > num_kv_pairs:
    raise ValueError(f'num_queries ({num_queries}) may not exceed num_kv_pairs ({num_kv_pairs}): '
                     'each query asks a distinct key')
  if key_vocab_size < num_kv_pairs:
    raise ValueError(f'key_vocab_size ({key_vocab_size}) must be ≥ num_kv_pairs '
                     f'({num_kv_pairs}): keys in an example are distinct')
  if value_vocab_size < MIN_VALUE_VOCAB:
    raise ValueError(f'value_vocab_size must be ≥ {MIN_VALUE_VOCAB} so that chance accuracy '
                     f'(1/value_vocab_size) is at most 10%; got {value_vocab_size}')
  needed = min_seq_len(num_kv_pairs, num_queries, pair_tokens)
  if seq_len < needed:
    raise ValueError(f'seq_len {seq_len} is too short for {num_kv_pairs} key-value pairs and '
                     f'{num_queries} queries; need seq_len ≥ {needed}')


def make_example(index: int, *, split: str = 'train', data_seed: int = 0, seq_len: int = 64,
                 num_kv_pairs: int = 8, num_queries: int = 8, key_vocab_size: int = 32,
                 value_vocab_size: int = 32, pair_tokens: bool = False) -> pipeline.Batch:
  """Example `index` of `split`: {'inputs', 'targets': [seq_len] int32, 'weights': float32}."""
  rng = np.random.default_rng([data_seed, _SPLIT_IDS[split], index])
  n, q = num_kv_pairs, num_queries
  keys = rng.choice(key_vocab_size, size=n, replace=False) + 1
  values = rng.integers(0, value_vocab_size, size=n) + 1 + key_vocab_size
  asked = rng.choice(n, size=q, replace=False)
  context = n if pair_tokens else 2 * n
  num_slots = (seq_len + 1 - context) // 2
  slots = rng.choice(num_slots, size=q, replace=False)

  stream = np.full(seq_len + 1, FILLER_ID, dtype=np.int32)
  if pair_tokens:
    first_pair = 1 + key_vocab_size + value_vocab_size
    stream[:n] = first_pair + (keys - 1) * value_vocab_size + (values - 1 - key_vocab_size)
  else:
    stream[0:2 * n:2] = keys
    stream[1:2 * n:2] = values
  query_pos = context + 2 * slots
  stream[query_pos] = keys[asked]
  stream[query_pos + 1] = values[asked]
  weights = np.zeros(seq_len, dtype=np.float32)
  weights[query_pos] = 1.0
  return {'inputs': stream[:-1], 'targets': stream[1:], 'weights': weights}


class MQARData(pipeline.LMData):
  """The MQAR task behind the `LMData` interface (see module docstring)."""

  name = 'mqar'
  metric = 'accuracy'
  pad_id = FILLER_ID

  def __init__(self, *, num_kv_pairs: int = 8, num_queries: int = 8, key_vocab_size: int = 32,
               value_vocab_size: int = 32, num_train_examples: int = 100_000,
               num_valid_examples: int = 1_000, num_test_examples: int = 1_000,
               data_seed: int = 0, pair_tokens: bool = False):
    check_options(seq_len=min_seq_len(num_kv_pairs, num_queries, pair_tokens),
                  num_kv_pairs=num_kv_pairs, num_queries=num_queries,
                  key_vocab_size=key_vocab_size, value_vocab_size=value_vocab_size,
                  pair_tokens=pair_tokens)
    for split, count in (('train', num_train_examples), ('valid', num_valid_examples),
                         ('test', num_test_examples)):
      if count < 1:
        raise ValueError(f'num_{split}_examples must be ≥ 1, got {count}')
    self.options = dict(num_kv_pairs=num_kv_pairs, num_queries=num_queries,
                        key_vocab_size=key_vocab_size, value_vocab_size=value_vocab_size,
                        pair_tokens=pair_tokens)
    self.num_examples = {'train': num_train_examples, 'valid': num_valid_examples,
                         'test': num_test_examples}
    self.data_seed = data_seed
    self.vocab_size = vocab_size(key_vocab_size, value_vocab_size, pair_tokens)

  @property
  def chance_accuracy(self) -> float:
    return 1.0 / self.options['value_vocab_size']

  def _example_fn(self, split: str, seq_len: int):
    check_options(seq_len=seq_len, **self.options)
    options = dict(self.options, split=split, data_seed=self.data_seed, seq_len=seq_len)
    return lambda index: make_example(int(index), **options)

  def train_iterator(self, *, batch_size: int, seq_len: int, seed: int, num_micro: int = 1,
                     process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
    pipeline.check_shapes(batch_size, seq_len)
    return pipeline.example_iterator(self._example_fn('train', seq_len),
                                     self.num_examples['train'], batch_size=batch_size, seed=seed,
                                     num_micro=num_micro, process_index=process_index,
                                     process_count=process_count)

  def eval_batches(self, split: str, *, batch_size: int, seq_len: int,
                   context_window: int = 0) -> pipeline.EvalBatches:
    """Every query of `split` once. Examples are independent, so `context_window` changes nothing
    (it is only checked, for the same errors as on a corpus)."""
    split = pipeline.canonical_split(split)
    pipeline.check_context_window(seq_len, context_window)
    return pipeline.example_batches(self._example_fn(split, seq_len),
                                    range(self.num_examples[split]), batch_size=batch_size,
                                    seq_len=seq_len, pad_id=self.pad_id)

  def num_tokens(self, split: str) -> int:
    """Scored positions (queries) in `split`."""
    return self.num_examples[pipeline.canonical_split(split)] * self.options['num_queries']

  def describe(self) -> dict[str, Any]:
    out = dict(name=self.name, metric=self.metric, vocab_size=self.vocab_size,
               data_seed=self.data_seed, num_examples=dict(self.num_examples),
               num_tokens={s: self.num_tokens(s) for s in pipeline.SPLITS},
               chance_accuracy=self.chance_accuracy, **self.options)
    out['fingerprint'] = pipeline.describe_fingerprint(out)
    return out

  def decode(self, ids) -> str:
    k = self.options['key_vocab_size']
    words = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if i == FILLER_ID:
        words.append('.')
      elif i <= k:
        words.append(f'k{i - 1}')
      elif i <= k + self.options['value_vocab_size']:
        words.append(f'v{i - 1 - k}')
      else:
        pair, v = divmod(i - 1 - k - self.options['value_vocab_size'],
                         self.options['value_vocab_size'])
        words.append(f'k{pair}v{v}')
    return ' '.join(words)
