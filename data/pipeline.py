"""Grain input pipelines for language modelling: training blocks and evaluation windows.

Training (fairseq `--sample-break-mode none`, `fairseq/data/token_block_dataset.py`): the token
stream of a split is cut into contiguous blocks of `seq_len + 1` tokens at stride `seq_len`
(neighbouring blocks share one token, so every token after the first is a target exactly once per
epoch); a block gives `inputs = block[:-1]`, `targets = block[1:]`. The final `len % seq_len`
tokens that do not fill a block are left out, so every batch has the static shape [B, T] that
`jit` wants. Block order is shuffled with Grain's index shuffle, reseeded each epoch, and the
stream repeats forever. Grain iterators are checkpointable: `get_state()` is a small JSON-able
dict, and an iterator restored with `set_state()` yields exactly what the original would have.

Evaluation (fairseq `eval_lm --context-window`, `fairseq/data/lm_context_window_dataset.py`): the
split is scored in windows of `seq_len` tokens; each window scores the next
`stride = seq_len - context_window` tokens and shows before them up to `context_window` earlier
tokens as context (weight 0). Token `j` of the stream is predicted from token `j - 1`, and token 0
from a start symbol (fairseq's `</s>`), so every token of the split is scored exactly once and the
first scored token of every window sees `min(context_window, j)` tokens of real context.
`context_window = 0` gives independent blocks, which fairseq warns yields a worse (higher)
perplexity.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
import hashlib
import json
import math
from typing import Any

import grain
import numpy as np

Batch = dict[str, np.ndarray]
SPLITS = ('train', 'valid', 'test')
_SPLIT_ALIASES = {'validation': 'valid', 'dev': 'valid'}


def canonical_split(split: str, known=SPLITS) -> str:
  """'valid' for 'valid'/'validation'/'dev', otherwise the name itself if known; else ValueError."""
  name = _SPLIT_ALIASES.get(split, split)
  if name not in known:
    raise ValueError(f'unknown split {split!r}; known: {", ".join(known)} '
                     f'(aliases: {", ".join(_SPLIT_ALIASES)})')
  return name


def _read_options() -> grain.ReadOptions:
  # The data are in memory (or memory-mapped): no reader threads, as grain recommends, which also
  # keeps the iterator's work on the caller's thread.
  return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def check_shapes(batch_size: int, seq_len: int) -> None:
  if batch_size < 1 or seq_len < 1:
    raise ValueError(f'batch_size and seq_len must be ≥ 1; got {batch_size}, {seq_len}')


def process_rows(batch_size: int, num_micro: int = 1, process_index: int = 0,
                 process_count: int = 1) -> np.ndarray:
  """Which rows of a global batch one process reads, in the order it feeds them.

  The global batch of `batch_size` rows is `num_micro` micro-batches of consecutive rows; each
  process takes its consecutive share of every micro-batch, so that its rows reshaped to
  [num_micro, -1] are its parts of each micro-batch and the processes' parts, concatenated in
  process order, are exactly the single-process micro-batches. The global stream therefore does
  not depend on how many processes read it.
  """
  per_micro, share = batch_size // num_micro, batch_size // num_micro // max(process_count, 1)
  if batch_size % num_micro or per_micro % process_count or not 0 <= process_index < process_count:
    raise ValueError(f'a batch of {batch_size} rows cannot be split into {num_micro} micro-'
                     f'batch(es) × {process_count} process(es) of whole rows')
  return (np.arange(num_micro)[:, None] * per_micro + process_index * share
          + np.arange(share)[None, :]).reshape(-1)


class _GatherBlocks:
  """Maps a batch of block indices [B] to the training batch dict of those blocks."""

  def __init__(self, tokens: np.ndarray, seq_len: int, rows: np.ndarray | None = None):
    self._tokens = tokens
    self._offsets = np.arange(seq_len + 1)
    self._seq_len = seq_len
    self._rows = rows  # this process's rows of the batch (None: all)

  def __call__(self, block_ids: np.ndarray) -> Batch:
    block_ids = np.asarray(block_ids, dtype=np.int64)
    if self._rows is not None:
      block_ids = block_ids[self._rows]
    rows = block_ids[:, None] * self._seq_len + self._offsets
    blocks = np.asarray(self._tokens[rows], dtype=np.int32)
    return {
        'inputs': blocks[:, :-1],
        'targets': blocks[:, 1:],
        'weights': np.ones((blocks.shape[0], self._seq_len), np.float32),
    }


def num_train_blocks(num_tokens: int, seq_len: int) -> int:
  """How many `seq_len + 1`-token blocks at stride `seq_len` fit in a stream."""
  return max(0, (num_tokens - 1) // seq_len)


def train_block_iterator(tokens: np.ndarray, *, batch_size: int, seq_len: int, seed: int,
                         num_micro: int = 1, process_index: int = 0,
                         process_count: int = 1) -> grain.DatasetIterator:
  """Infinite, checkpointable iterator of shuffled training blocks of one token stream.

  Args:
    tokens: [N] the split's token ids (any integer dtype; may be memory-mapped).
    batch_size: B, rows per global batch (all processes, all micro-batches).
    seq_len: T, tokens per row.
    seed: shuffling seed; epoch e uses a seed derived from (seed, e).
    num_micro, process_index, process_count: this process reads only its rows of each global
      batch (`process_rows`); every process steps through the same global stream.

  Returns:
    A grain `DatasetIterator` of {'inputs', 'targets': [B', T] int32, 'weights': [B', T]
    float32}, B' = B / process_count.
  """
  check_shapes(batch_size, seq_len)
  rows = process_rows(batch_size, num_micro, process_index, process_count)
  n_blocks = num_train_blocks(len(tokens), seq_len)
  if n_blocks == 0:
    raise ValueError(f'a training stream of {len(tokens)} tokens is too short for one block of '
                     f'seq_len + 1 = {seq_len + 1} tokens; use a smaller seq_len')
  ds = (grain.MapDataset.range(n_blocks)
        .shuffle(seed=seed)
        .repeat()
        .batch(batch_size, drop_remainder=True)
        .map(_GatherBlocks(tokens, seq_len, None if process_count == 1 else rows)))
  return iter(ds.to_iter_dataset(_read_options()))


class _MakeExamples:
  """Maps a batch of example indices to the stacked examples of this process's rows."""

  def __init__(self, make_example: Callable[[int], Batch], rows: np.ndarray):
    self._make_example, self._rows = make_example, rows

  def __call__(self, indices: np.ndarray) -> Batch:
    examples = [self._make_example(i) for i in np.asarray(indices)[self._rows]]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def example_iterator(make_example: Callable[[int], Batch], num_examples: int, *,
                     batch_size: int, seed: int, num_micro: int = 1, process_index: int = 0,
                     process_count: int = 1) -> grain.DatasetIterator:
  """Infinite, checkpointable iterator over `make_example(i)` for i in a shuffled range.

  Used for tasks whose examples are independent sequences (the synthetic MQAR task). Processes
  read their rows of each global batch as in `train_block_iterator`.
  """
  if num_examples < 1:
    raise ValueError(f'need at least one training example, got {num_examples}')
  rows = process_rows(batch_size, num_micro, process_index, process_count)
  ds = (grain.MapDataset.range(num_examples)
        .shuffle(seed=seed)
        .repeat()
        .batch(batch_size, drop_remainder=True)
        .map(_MakeExamples(make_example, rows)))
  return iter(ds.to_iter_dataset(_read_options()))


class EvalBatches:
  """Finite, re-iterable evaluation batches; `len()` is the number of batches.

  Built by `context_windows` (token streams) or `example_batches` (independent examples).
  """

  def __init__(self, num_rows: int, batch_size: int,
               make_rows: Callable[[np.ndarray], Batch], seq_len: int, pad_id: int):
    self.num_rows = num_rows
    self.batch_size = batch_size
    self._make_rows = make_rows
    self._seq_len = seq_len
    self._pad_id = pad_id

  def __len__(self) -> int:
    return math.ceil(self.num_rows / self.batch_size)

  def __iter__(self) -> Iterator[Batch]:
    for start in range(0, self.num_rows, self.batch_size):
      rows = np.arange(start, min(start + self.batch_size, self.num_rows))
      batch = self._make_rows(rows)
      missing = self.batch_size - len(rows)
      if missing:  # Pad the last batch with rows that count for nothing.
        batch = {
            'inputs': np.pad(batch['inputs'], ((0, missing), (0, 0)),
                             constant_values=self._pad_id),
            'targets': np.pad(batch['targets'], ((0, missing), (0, 0)),
                              constant_values=self._pad_id),
            'weights': np.pad(batch['weights'], ((0, missing), (0, 0))),
        }
      yield batch


def check_context_window(seq_len: int, context_window: int) -> None:
  if not 0 <= context_window < seq_len:
    raise ValueError(
        f'context_window must satisfy 0 ≤ context_window < seq_len so that each window scores at '
        f'least one token; got context_window={context_window}, seq_len={seq_len} '
        f'(fairseq: --context-window < --tokens-per-sample)')


def context_windows(tokens: np.ndarray, *, batch_size: int, seq_len: int, context_window: int,
                    start_id: int, pad_id: int) -> EvalBatches:
  """Evaluation batches that score every token of `tokens` once (fairseq `--context-window`).

  Row k scores stream positions [s, e) with s = k·stride, e = min(s + stride, N),
  stride = seq_len − context_window, and holds positions [c, e) with
  c = max(0, s − context_window):
  targets = tokens[c:e], inputs = tokens[c−1:e−1] (the start symbol stands in for tokens[−1]),
  weights 1 on [s, e) and 0 on the context [c, s) and on padding after e.

  Example (hand-derived; tokens t0…t9, seq_len 4, context_window 2, stride 2; S = start_id,
  fairseq's `</s>`):
    row 0: inputs [S  t0 pad pad]  targets [t0 t1 pad pad]  weights [1 1 0 0]
    row 1: inputs [S  t0 t1 t2]    targets [t0 t1 t2 t3]    weights [0 0 1 1]
    row 2: inputs [t1 t2 t3 t4]    targets [t2 t3 t4 t5]    weights [0 0 1 1]
    … row 4: inputs [t5 t6 t7 t8]  targets [t6 t7 t8 t9]    weights [0 0 1 1]
  """
  check_shapes(batch_size, seq_len)
  check_context_window(seq_len, context_window)
  n = len(tokens)
  stride = seq_len - context_window
  offsets = np.arange(seq_len)

  def make_rows(rows: np.ndarray) -> Batch:
    s = rows * stride
    e = np.minimum(s + stride, n)
    c = np.maximum(0, s - context_window)
    pos = c[:, None] + offsets                       # [R, T] stream position of each target
    valid = pos < e[:, None]
    targets = np.asarray(tokens[np.minimum(pos, n - 1)], dtype=np.int32)
    inputs = np.asarray(tokens[np.clip(pos - 1, 0, n - 1)], dtype=np.int32)
    inputs = np.where(pos == 0, np.int32(start_id), inputs)
    weights = (valid & (pos >= s[:, None])).astype(np.float32)
    return {
        'inputs': np.where(valid, inputs, np.int32(pad_id)),
        'targets': np.where(valid, targets, np.int32(pad_id)),
        'weights': weights,
    }

  return EvalBatches(math.ceil(n / stride), batch_size, make_rows, seq_len, pad_id)


def example_batches(make_example: Callable[[int], Batch], indices: range, *, batch_size: int,
                    seq_len: int, pad_id: int) -> EvalBatches:
  """Evaluation batches of independent examples `make_example(i)` for i in `indices`."""
  check_shapes(batch_size, seq_len)

  def make_rows(rows: np.ndarray) -> Batch:
    examples = [make_example(indices[int(r)]) for r in rows]
    return {k: np.stack([ex[k] for ex in examples]) for k in examples[0]}

  return EvalBatches(len(indices), batch_size, make_rows, seq_len, pad_id)


def array_sha256(array: np.ndarray) -> str:
  """Hex SHA-256 of an array's dtype, shape and bytes (to identify a token stream)."""
  h = hashlib.sha256(f'{array.dtype.str}{array.shape}'.encode())
  flat = np.ascontiguousarray(array).reshape(-1)
  step = max(1, (64 << 20) // max(1, flat.itemsize))
  for i in range(0, len(flat), step):
    h.update(flat[i:i + step].tobytes())
  return h.hexdigest()


def describe_fingerprint(identity: dict) -> str:
  return hashlib.sha256(json.dumps(identity, sort_keys=True).encode('utf-8')).hexdigest()


class LMData(abc.ABC):
  """A language-modelling dataset: training iterator, evaluation windows, metadata.

  Attributes:
    name: 'mqar', 'wikitext' or 'enwik8'.
    vocab_size: number of token ids (the model's embedding rows).
    metric: 'accuracy' (mqar), 'perplexity' (word level) or 'bpc' (byte level); each is computed
      from weighted per-token losses or hits, summed over tokens (never a mean of batch means).
    pad_id: id used in padding positions (which always have weight 0).
    cache_hit: whether the token streams came from the on-disk cache (False when built now).
  """

  name: str
  vocab_size: int
  metric: str
  pad_id: int = 0
  cache_hit: bool = False

  @abc.abstractmethod
  def train_iterator(self, *, batch_size: int, seq_len: int, seed: int, num_micro: int = 1,
                     process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
    """Infinite, checkpointable iterator of training batches (see module docstring): this
    process's rows of global batches of `batch_size` rows (`process_rows`)."""

  @abc.abstractmethod
  def eval_batches(self, split: str, *, batch_size: int, seq_len: int,
                   context_window: int = 0) -> EvalBatches:
    """Finite batches that score every token (or query) of `split` exactly once."""

  @abc.abstractmethod
  def num_tokens(self, split: str) -> int:
    """Number of scored tokens in a full evaluation of `split`."""

  @abc.abstractmethod
  def describe(self) -> dict[str, Any]:
    """JSON-able summary; `describe()['fingerprint']` changes iff the data would."""

  @abc.abstractmethod
  def decode(self, ids) -> str:
    """Human-readable text of a sequence of ids."""


class TokenStreamLMData(LMData):
  """A corpus held as one token stream per split (WikiText, enwik8)."""

  def __init__(self, *, name: str, metric: str, vocab_size: int, streams: dict[str, np.ndarray],
               start_id: int, pad_id: int, decode: Callable[[Any], str], info: dict[str, Any],
               cache_hit: bool = False, encode: Callable[[str], np.ndarray] | None = None,
               symbols: list[str] | None = None):
    """Args:
      name, metric, vocab_size, pad_id: see `LMData`.
      streams: split → [N] token ids.
      start_id: the input that predicts a split's first token (fairseq uses `</s>`).
      decode: ids → text.
      encode: one line of text → its ids as the stream holds them (with the line's end
        symbol, for word-level data); None where the data has no text form.
      symbols: id → symbol, for analysis (word-level data: fairseq's dictionary order, most
        frequent first after the specials); None for bytes.
      info: JSON-able facts for `describe()`: source files (informational), and the identity
        keys 'tokens_sha256' (split → digest of the stream) and 'vocab_sha256', which enter
        the fingerprint together with name, vocab_size and num_tokens.
    """
    missing = [s for s in SPLITS if s not in streams]
    if missing:
      raise ValueError(f'{name}: missing splits {missing}')
    for split, stream in streams.items():
      if len(stream) == 0:
        raise ValueError(f'{name}: the {split} split is empty')
    self.name = name
    self.metric = metric
    self.vocab_size = int(vocab_size)
    self.pad_id = pad_id
    self.start_id = start_id
    self.streams = streams
    self.cache_hit = cache_hit
    self._decode = decode
    self._encode = encode
    self.symbols = symbols
    self._info = info

  def train_iterator(self, *, batch_size: int, seq_len: int, seed: int, num_micro: int = 1,
                     process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
    return train_block_iterator(self.streams['train'], batch_size=batch_size, seq_len=seq_len,
                                seed=seed, num_micro=num_micro, process_index=process_index,
                                process_count=process_count)

  def eval_batches(self, split: str, *, batch_size: int, seq_len: int,
                   context_window: int = 0) -> EvalBatches:
    return context_windows(self.streams[canonical_split(split)], batch_size=batch_size,
                           seq_len=seq_len, context_window=context_window,
                           start_id=self.start_id, pad_id=self.pad_id)

  def num_tokens(self, split: str) -> int:
    return int(len(self.streams[canonical_split(split)]))

  def describe(self) -> dict[str, Any]:
    out = dict(self._info)
    out.update(name=self.name, metric=self.metric, vocab_size=self.vocab_size,
               num_tokens={s: self.num_tokens(s) for s in SPLITS})
    identity = {k: out[k] for k in ('name', 'vocab_size', 'num_tokens', 'tokens_sha256',
                                    'vocab_sha256') if k in out}
    out['fingerprint'] = describe_fingerprint(identity)
    return out

  def decode(self, ids) -> str:
    return self._decode(ids)

  def encode(self, text: str) -> np.ndarray:
    """One line of text → int32 ids as in the stream (word level: `</s>` at the end)."""
    if self._encode is None:
      raise ValueError(f'the {self.name} data has no text encoder')
    return np.asarray(self._encode(text), np.int32)
