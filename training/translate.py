"""Translates a split with greedy or beam search and scores it with the three BLEUs.

    translator = Translator(graphdef, rest, data, DecodeSettings.from_config(config.decode),
                            max_positions=config.model.max_len, mesh=mesh)
    hypotheses = translator.translate(params, 'test', progress=True)   # split order
    scores = translator.score(hypotheses, 'test')                      # training/bleu.py

Sentences are decoded in batches of about `decode.max_tokens` source tokens (sorted by length by
the data layer), each row's output limited to `max_len_a · |source| + max_len_b` tokens before
EOS (fairseq's rule; |source| counts the source EOS, as fairseq's does) and to the model's
positions. One compiled search serves every batch of the same shape. Outputs are put back in the
split's order by sentence id, turned into text at the references' level (`data.postprocess`:
BPE `@@ ` removed, or sentencepiece decoded), and never dropped: every sentence gets a line.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from models import decoding
from training import bleu, distributed
from training.progress import DEFAULT_INTERVAL, Progress


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """The decoding protocol; `describe()` is what a reported BLEU carries with it."""
  beam_size: int = 5
  length_penalty: decoding.LengthPenalty = decoding.LengthPenalty('fairseq', 1.0)
  max_len_a: float = 0.0
  max_len_b: int = 200
  min_len: int = 1
  mode: str = 'auto'
  max_tokens: int = 8192

  @classmethod
  def from_config(cls, c: ml_collections.ConfigDict, *, beam_size: int | None = None,
                  lenpen: float | None = None, alpha: float | None = None,
                  max_len_a: float | None = None, max_len_b: int | None = None
                  ) -> 'DecodeSettings':
    """`config.decode` with command-line overrides; `lenpen` selects fairseq's penalty and
    `alpha` the GNMT one (giving both is an error)."""
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
                   min_len=c.min_len, mode=c.mode, max_tokens=c.max_tokens)
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
                pad_id: int):
  """`search(params, source [B, S], max_lens [B], *, max_len) -> (tokens [B, L], lengths [B])`.

  The best hypothesis per sentence (tokens with EOS, then pad; lengths count the EOS), jitted
  with the buffer length `max_len` static. The model is (graphdef, params, rest) as in
  training/steps.py.
  """

  def search(params, source, max_lens, *, max_len: int):
    model = nnx.merge(graphdef, params, rest)
    memory, valid = model.encode(source)                                     # [B, S, D]
    b = source.shape[0]
    common = dict(max_len=max_len, max_lens=max_lens, bos_id=bos_id, eos_id=eos_id,
                  pad_id=pad_id, min_len=settings.min_len)
    if settings.beam_size == 1:
      step_fn, cache = model.decoder_step_fn(memory, valid, max_len=max_len, mode=settings.mode)
      out = decoding.greedy_search(step_fn, cache, batch_size=b, **common)
      return out.tokens, out.lengths
    memory, valid = decoding.expand_for_beam((memory, valid), settings.beam_size)
    step_fn, cache = model.decoder_step_fn(memory, valid, max_len=max_len, mode=settings.mode)
    out = decoding.beam_search(step_fn, cache, batch_size=b, beam_size=settings.beam_size,
                               length_penalty=settings.length_penalty, **common)
    return out.tokens[:, 0], out.lengths[:, 0]

  return jax.jit(search, static_argnames=('max_len',))


class Translator:
  """Decodes splits of a `TranslationData` with a model given as (graphdef, params, rest)."""

  def __init__(self, graphdef, rest, data, settings: DecodeSettings, *, max_positions: int,
               mesh):
    self.data = data
    self.settings = settings
    self.mesh = mesh
    # The decoder sees bos plus the output, so at most max_positions − 1 tokens before EOS.
    self.cap = max_positions - 1
    self._search = make_search(graphdef, rest, settings, bos_id=data.bos_id,
                               eos_id=data.eos_id, pad_id=data.pad_id)

  def buffer_length(self, source_width: int) -> int:
    """The static output buffer L for sources padded to `source_width` (tokens with EOS)."""
    s = self.settings
    return min(math.floor(s.max_len_a * source_width + s.max_len_b), self.cap) + 1

  def translate(self, params, split: str, *, max_sentences: int | None = None,
                progress: bool = False, progress_interval: float = DEFAULT_INTERVAL) -> list[str]:
    """Hypotheses for the first `max_sentences` sentences of `split` (all when None), in order.

    `progress` reports sentences decoded on stderr (process 0 only): a tqdm bar on a terminal,
    else a plain line at most every `progress_interval` seconds and a final one with the time
    taken.
    """
    n = self.data.num_examples(split)
    n = n if max_sentences is None else min(n, max_sentences)
    batches = self.data.eval_batches(split, limit=n, **eval_batching(self.settings.max_tokens))
    out: list[str | None] = [None] * n
    pad = self.data.pad_id
    with Progress(f'decode {split}', n, unit='sentences', interval=progress_interval,
                  enabled=progress and jax.process_index() == 0) as bar:
      for batch in batches:
        source = batch['source']
        # fairseq's src_len counts the source EOS (the data layer appends it).
        max_lens = decoding.max_output_lengths((source != pad).sum(1), a=self.settings.max_len_a,
                                               b=self.settings.max_len_b, cap=self.cap)
        max_len = self.buffer_length(source.shape[1])
        global_source = distributed.global_batch({'source': source}, self.mesh)['source']
        tokens, lengths = self._search(params, global_source, max_lens, max_len=max_len)
        tokens, lengths = (np.asarray(x) for x in _gather((tokens, lengths)))
        for row, sentence in enumerate(batch['ids']):
          if sentence >= 0:
            out[sentence] = self.data.postprocess(tokens[row, :max(lengths[row] - 1, 0)])
        # This process's real rows (all of them on one host).
        bar.update(int((np.asarray(batch['ids']) >= 0).sum()))
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
