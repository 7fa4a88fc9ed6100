"""Translates a split with greedy or beam search and scores it with the three BLEUs.

    translator = Translator(graphdef, rest, data, DecodeSettings.from_config(config.decode),
                            max_positions=config.model.max_len, mesh=mesh)
    hypotheses = translator.translate(params, 'test', progress=True)   # split order
    scores = translator.score(hypotheses, 'test')                      # training/bleu.py
    translator.compiled                                                # shapes compiled so far

Each row's output is limited to `max_len_a · |source| + max_len_b` tokens before EOS (fairseq's
rule; |source| counts the source EOS, as fairseq's does) and to the model's positions.

**Batch shapes.** The jitted search compiles once per (rows, source width, buffer length), about
8 s on a CPU core for the WMT14 `small` beam search, so shapes are chosen from a small fixed set
(`decode.length_buckets` × `decode.batch_sizes`, `plan_batches`; newstest2014 needs 7 shapes,
where the data layer's exact batches need 16): a sentence goes to the narrowest bucket width
that holds its source, sentences of a bucket are sorted by length and cut into batches of the
allowed sizes, the last one filled with empty rows (id -1, all pad, max length 0, so they end
at once). The output buffer is derived from the bucket width, so it is
static per bucket, while each row keeps its own limit from its own length. The encoder masks pad
keys and every row is searched independently, so neither pad columns nor extra rows change a
hypothesis (tests/test_decode_buckets.py checks this against the exact shapes).
`decode.length_buckets=()` keeps the exact shapes: the data layer's batches (`eval_batches`,
about `decode.max_tokens` tokens, bucketed by the longer side in steps of `data.length_bucket`),
one compilation per batch shape; benchmarks/decode.py `--test_set` compares the two. On CPU the
search itself dominates a whole test set, so buckets pay most where decoding is short, as for
the validation BLEU during training (docs/benchmarks.md).

Global batches hold a multiple of the device count of rows, split over processes; every process
gets every hypothesis back. Outputs are put back in the split's order by sentence id, turned into
text at the references' level (`data.postprocess`: BPE `@@ ` removed, or sentencepiece decoded),
and never dropped: every sentence gets a line.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from configs import common
from models import decoding
from training import bleu, distributed
from training.progress import DEFAULT_INTERVAL, Progress


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """The decoding protocol; `describe()` is what a reported BLEU carries with it.

  `max_tokens`, `length_buckets` and `batch_sizes` only choose batch shapes (configs/common.py
  `decode_config`); they never change a hypothesis. Built directly, the settings keep the exact
  shapes (`length_buckets=()`); `from_config` takes the config's buckets.
  """
  beam_size: int = 5
  length_penalty: decoding.LengthPenalty = decoding.LengthPenalty('fairseq', 1.0)
  max_len_a: float = 0.0
  max_len_b: int = 200
  min_len: int = 1
  mode: str = 'auto'
  max_tokens: int = 8192
  length_buckets: tuple[int, ...] = ()
  batch_sizes: tuple[int, ...] = ()

  def __post_init__(self):
    for name in ('length_buckets', 'batch_sizes'):
      value = tuple(getattr(self, name))
      if any(not isinstance(v, (int, np.integer)) or v < 1 for v in value):
        raise ValueError(f'decode.{name}={value!r}: expected positive integers')
      object.__setattr__(self, name, tuple(int(v) for v in value))
    if self.length_buckets and not self.batch_sizes:
      raise ValueError('decode.batch_sizes is empty: give the rows per device a batch may have, '
                       'e.g. (16, 128), or set decode.length_buckets=() for exact shapes')

  @classmethod
  def from_config(cls, c: ml_collections.ConfigDict, *, beam_size: int | None = None,
                  lenpen: float | None = None, alpha: float | None = None,
                  max_len_a: float | None = None, max_len_b: int | None = None
                  ) -> 'DecodeSettings':
    """`config.decode` with command-line overrides; `lenpen` selects fairseq's penalty and
    `alpha` the GNMT one (giving both is an error). A config recorded before the batch-shape
    keys existed (a workdir's config.json) gets today's defaults for them."""
    defaults = common.decode_config()
    if lenpen is not None and alpha is not None:
      raise ValueError('give --lenpen (fairseq: score / len**lenpen) or --alpha (GNMT: score / '
                       '((5 + len) / 6)**alpha), not both')
    if lenpen is not None:
      penalty = decoding.LengthPenalty('fairseq', lenpen)
    elif alpha is not None:
      penalty = decoding.LengthPenalty('gnmt', alpha)
    else:
      value = {'fairseq': c.lenpen, 'gnmt': c.alpha, 'none': 0.0}.get(c.length_penalty)
      if value is None:
        raise ValueError(f'decode.length_penalty={c.length_penalty!r}: expected one of '
                         f'{", ".join(decoding.LENGTH_PENALTY_KINDS)}')
      penalty = decoding.LengthPenalty(c.length_penalty, value)
    settings = cls(beam_size=c.beam_size if beam_size is None else beam_size,
                   length_penalty=penalty,
                   max_len_a=c.max_len_a if max_len_a is None else max_len_a,
                   max_len_b=c.max_len_b if max_len_b is None else max_len_b,
                   min_len=c.min_len, mode=c.mode, max_tokens=c.max_tokens,
                   length_buckets=tuple(c.get('length_buckets', defaults.length_buckets)),
                   batch_sizes=tuple(c.get('batch_sizes', defaults.batch_sizes)))
    if settings.beam_size < 1:
      raise ValueError(f'beam size must be ≥ 1, got {settings.beam_size}')
    if settings.max_len_a < 0 or settings.max_len_b < 0:
      raise ValueError(f'max_len_a and max_len_b must be ≥ 0, got {settings.max_len_a}, '
                       f'{settings.max_len_b}')
    return settings

  def describe(self) -> dict[str, Any]:
    return {'search': 'greedy' if self.beam_size == 1 else 'beam', 'beam': self.beam_size,
            'length_penalty': self.length_penalty.kind,
            'length_penalty_value': self.length_penalty.value,
            'max_len_a': self.max_len_a, 'max_len_b': self.max_len_b, 'min_len': self.min_len}


def make_search(graphdef, rest, settings: DecodeSettings, *, bos_id: int, eos_id: int,
                pad_id: int, on_trace=None):
  """`search(params, source [B, S], max_lens [B], *, max_len) -> (tokens [B, L], lengths [B])`.

  The best hypothesis per sentence (tokens with EOS, then pad; lengths count the EOS), jitted
  with the buffer length `max_len` static. The model is (graphdef, params, rest) as in
  training/steps.py. `on_trace(rows, width, max_len)`, when given, is called each time a new
  shape is traced, i.e. once per compilation.
  """

  def search(params, source, max_lens, *, max_len: int):
    if on_trace is not None:
      on_trace(source.shape[0], source.shape[1], max_len)
    model = nnx.merge(graphdef, params, rest)
    memory, valid = model.encode(source)                                     # [B, S, D]
    b = source.shape[0]
    common = dict(max_len=max_len, max_lens=max_lens, bos_id=bos_id, eos_id=eos_id,
                  pad_id=pad_id, min_len=settings.min_len)
    if settings.beam_size == 1:
      step_fn, cache = model.decoder_step_fn(memory, valid, max_len=max_len, mode=settings.mode)
      out = decoding.greedy_search(step_fn, cache, batch_size=b, **common)
      return out.tokens, out.lengths
    step_fn, cache = model.decoder_step_fn(memory, valid, max_len=max_len, mode=settings.mode,
                                           beam_size=settings.beam_size)
    out = decoding.beam_search(step_fn, cache, batch_size=b, beam_size=settings.beam_size,
                               length_penalty=settings.length_penalty, **common)
    return out.tokens[:, 0], out.lengths[:, 0]

  return jax.jit(search, static_argnames=('max_len',))


def bucket_widths(length_buckets: tuple[int, ...], max_source_positions: int) -> tuple[int, ...]:
  """The source widths batches are padded to: the buckets capped at the model's positions, and
  a last one of all of them, so that every sentence that fits the model has a bucket."""
  return tuple(sorted({min(w, max_source_positions) for w in length_buckets}
                      | {max_source_positions}))


def plan_batches(lengths: np.ndarray, widths: tuple[int, ...], batch_sizes: tuple[int, ...], *,
                 max_tokens: int, row_multiple: int = 1) -> list[tuple[np.ndarray, int]]:
  """Global batches `[(ids [R] int32, width)]` that hold every sentence once (ids -1: filling).

  `lengths: [N]` source tokens with EOS, each ≤ `widths[-1]`. A sentence goes to the first width
  that holds it; a bucket's sentences, shortest first (split order on ties), fill batches of the
  largest of `batch_sizes` (rows per device, × `row_multiple` devices) with size × width ≤
  `max_tokens` (the smallest size when none fits), then of the next smaller sizes; the last
  batch is filled up with empty rows. Shapes used ≤ buckets used × len(batch_sizes).
  """
  lengths = np.asarray(lengths)
  if len(lengths) and lengths.max() > widths[-1]:
    raise ValueError(f'a source of {lengths.max()} tokens is longer than the widest bucket '
                     f'({widths[-1]}); add a wider decode.length_buckets entry')
  bucket = np.searchsorted(np.asarray(widths), lengths, side='left')
  order = np.lexsort((np.arange(len(lengths)), lengths))
  batches = []
  for k, width in enumerate(widths):
    ids = order[bucket[order] == k].astype(np.int32)
    fits = [s for s in batch_sizes if s * width <= max_tokens] or [min(batch_sizes)]
    start = 0
    for size in sorted(set(fits), reverse=True):
      rows = size * row_multiple
      while len(ids) - start >= rows:
        batches.append((ids[start:start + rows], width))
        start += rows
    if start < len(ids):
      rest = ids[start:]
      fill = np.full(min(fits) * row_multiple - len(rest), -1, np.int32)
      batches.append((np.concatenate([rest, fill]), width))
  return batches


class Translator:
  """Decodes splits of a `TranslationData` with a model given as (graphdef, params, rest).

  `compiled` lists the (rows, width, buffer length) shapes the search has been compiled for.
  """

  def __init__(self, graphdef, rest, data, settings: DecodeSettings, *, max_positions: int,
               mesh):
    self.data = data
    self.settings = settings
    self.mesh = mesh
    # The decoder sees bos plus the output, so at most max_positions − 1 tokens before EOS.
    self.cap = max_positions - 1
    self.compiled: list[tuple[int, int, int]] = []
    self._search = make_search(graphdef, rest, settings, bos_id=data.bos_id,
                               eos_id=data.eos_id, pad_id=data.pad_id,
                               on_trace=lambda *shape: self.compiled.append(shape))

  def buffer_length(self, source_width: int) -> int:
    """The static output buffer L for sources padded to `source_width` (tokens with EOS)."""
    s = self.settings
    return min(math.floor(s.max_len_a * source_width + s.max_len_b), self.cap) + 1

  def _batches(self, split: str, n: int):
    """This process's rows of each global batch: (source [R, S] int32, ids [R] int32)."""
    s = self.settings
    if not s.length_buckets:  # exact shapes, as the data layer batches them
      for batch in self.data.eval_batches(split, limit=n, **eval_batching(s.max_tokens)):
        yield batch['source'], batch['ids']
      return
    widths = bucket_widths(s.length_buckets, self.data.max_source_positions)
    plan = plan_batches(self.data.source_lengths(split)[:n], widths, s.batch_sizes,
                        max_tokens=s.max_tokens, row_multiple=jax.device_count())
    p, count = jax.process_index(), jax.process_count()
    for ids, width in plan:
      per = len(ids) // count
      local = ids[p * per:(p + 1) * per]
      yield self.data.source_rows(split, local, width), local

  def translate(self, params, split: str, *, max_sentences: int | None = None,
                progress: bool = False, progress_interval: float = DEFAULT_INTERVAL) -> list[str]:
    """Hypotheses for the first `max_sentences` sentences of `split` (all when None), in order.

    `progress` reports sentences decoded on stderr (process 0 only): a tqdm bar on a terminal,
    else a plain line at most every `progress_interval` seconds and a final one with the time
    taken.
    """
    n = self.data.num_examples(split)
    n = n if max_sentences is None else min(n, max_sentences)
    out: list[str | None] = [None] * n
    s = self.settings
    with Progress(f'decode {split}', n, unit='sentences', interval=progress_interval,
                  enabled=progress and jax.process_index() == 0) as bar:
      for source, ids in self._batches(split, n):
        # fairseq's src_len counts the source EOS (the data layer appends it). Filling rows get
        # no tokens before EOS, so they never keep the search loop running.
        max_lens = decoding.max_output_lengths((source != self.data.pad_id).sum(1),
                                               a=s.max_len_a, b=s.max_len_b, cap=self.cap)
        max_lens = np.where(ids >= 0, max_lens, 0).astype(np.int32)
        batch = distributed.global_batch({'source': source, 'max_lens': max_lens,
                                          'ids': np.asarray(ids, np.int32)}, self.mesh)
        tokens, lengths = self._search(params, batch['source'], batch['max_lens'],
                                       max_len=self.buffer_length(source.shape[1]))
        tokens, lengths, every_id = (np.asarray(x)
                                     for x in _gather((tokens, lengths, batch['ids'])))
        for row in np.flatnonzero(every_id >= 0):
          out[every_id[row]] = self.data.postprocess(tokens[row, :max(lengths[row] - 1, 0)])
        bar.update(int((every_id >= 0).sum()))
    missing = [i for i, h in enumerate(out) if h is None]
    if missing:
      raise RuntimeError(f'{len(missing)} sentence(s) of {split} were not decoded (first: '
                         f'{missing[:5]}); the data layer lost them')
    return out

  def score(self, hypotheses: list[str], split: str) -> dict[str, Any]:
    """The three BLEUs of `hypotheses` against the first len(hypotheses) references."""
    references = self.data.references(split)[:len(hypotheses)]
    return bleu.translation_bleus(hypotheses, references, lang=self.data.tgt_lang,
                                  level=self.data.text_level)


def eval_batching(max_tokens_per_device: int) -> dict[str, int]:
  """`eval_batches` arguments: global batches over all devices, this process's rows of them."""
  n = jax.device_count()
  return dict(max_tokens=max_tokens_per_device * n, row_multiple=n,
              process_index=jax.process_index(), process_count=jax.process_count())


def _gather(tree):
  """Device arrays → host NumPy, across processes when there are several."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)
