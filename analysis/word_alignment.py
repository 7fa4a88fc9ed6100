"""Word alignment from a translation model's cross-attention, weights vs norms, AER per layer.

Kobayashi et al. 2020 ("Attention is Not Only a Weight: Analyzing Transformers with Vector
Norms", arXiv:2004.10102, §5), with the extraction rules of analysis/alignment.py:

1. Each gold sentence pair is segmented into the model's subwords (sentencepiece pieces, or BPE
   tokens with "@@"); the subwords of each word must join back to exactly the gold's
   whitespace word, or the run stops naming the sentence (never a silent skip).
2. Teacher forcing: the decoder reads `</s>` + target subwords; every decoder layer's
   cross-attention is sown in the same forward (no decoding).
3. Per layer, the weight-based matrix is the head mean of α and the norm-based one is
   ‖Σ_h α^h f^h(x_j)‖ (analysis/norms.py); per head, α^h and ‖α^h f^h(x_j)‖.
4. AWO and AWI, subword → word merge, hard argmax alignment (source `</s>` = no link), corpus
   AER against sure/possible gold links.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from analysis import alignment as align_lib
from analysis import layers as layers_lib
from analysis import norms as norms_lib
from training import progress as progress_lib

METHODS = ('weights', 'norms')
LENGTH_BUCKET = 8


def _pieces(vocab, words: Sequence[str]) -> tuple[list[str], np.ndarray, str]:
  """(subwords, ids with </s>, scheme) of one whitespace-tokenized sentence."""
  if hasattr(vocab, 'pieces'):                     # sentencepiece
    line = ' '.join(words)
    pieces = vocab.pieces(line)
    ids = vocab.encode(line)
    return pieces, ids, 'sentencepiece'
  return list(words), vocab.encode(' '.join(words)), 'bpe'


def segment(vocab, sentences: Sequence[Sequence[str]], *, side: str,
            words_of: Sequence[Sequence[str]] | None = None) -> list[dict[str, Any]]:
  """Per sentence {'ids', 'word_ids', 'words'}; refuses a sentence that does not map back.

  For sentencepiece, `sentences` are the gold words and the pieces come from the model. For
  BPE, `sentences` are the model's tokens (with "@@") and `words_of` the gold words.
  """
  out = []
  for n, tokens in enumerate(sentences, start=1):
    pieces, ids, scheme = _pieces(vocab, tokens)
    words = list(tokens) if words_of is None else list(words_of[n - 1])
    if scheme == 'bpe' and words_of is None:
      words = ' '.join(tokens).replace('@@ ', '').split()
    try:
      word_ids = align_lib.subword_word_ids(pieces, words, scheme=scheme, sentence=n)
    except ValueError as e:
      raise ValueError(f'{side}: {e}') from None
    if len(ids) != len(pieces) + 1:
      raise ValueError(f'{side}: sentence {n}: {len(pieces)} subwords but {len(ids) - 1} ids')
    out.append({'ids': np.asarray(ids, np.int32), 'word_ids': word_ids, 'words': words})
  return out


def _batches(sources, targets, *, bos_id: int, pad_id: int, batch_size: int):
  """Teacher-forced batches in length order: (indices, {'source', 'target_in'})."""
  order = sorted(range(len(sources)), key=lambda i: (len(targets[i]['ids']),
                                                     len(sources[i]['ids'])))
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    s_len = -(-max(len(sources[i]['ids']) for i in rows) // LENGTH_BUCKET) * LENGTH_BUCKET
    t_len = -(-max(len(targets[i]['ids']) for i in rows) // LENGTH_BUCKET) * LENGTH_BUCKET
    source = np.full((batch_size, s_len), pad_id, np.int32)
    target_in = np.full((batch_size, t_len), pad_id, np.int32)
    for r, i in enumerate(rows):
      src, tgt = sources[i]['ids'], targets[i]['ids']
      source[r, :len(src)] = src
      target_in[r, 0] = bos_id
      target_in[r, 1:len(tgt)] = tgt[:-1]          # </s> + target subwords (no final </s>)
    yield rows, {'source': source, 'target_in': target_in}


def cross_attention_matrices(model, sources, targets, *, bos_id: int, pad_id: int,
                             batch_size: int = 32, progress: bool = False
                             ) -> list[dict[str, np.ndarray]]:
  """Per sentence {layer i: {'weights': [N, T, S], 'weighted_norm': [N, T, S],
  'mean_weights': [T, S], 'summed_norm': [T, S]}} with T = target subwords + 1 (decoder steps)
  and S = source subwords + 1 (the source `</s>` last)."""
  cross = [l for l in layers_lib.attention_layers(model) if l.role == 'cross']
  out: list[Any] = [None] * len(sources)
  bar = progress_lib.Progress('alignment', total=len(sources), unit='sentences',
                              enabled=progress)
  for rows, batch in _batches(sources, targets, bos_id=bos_id, pad_id=pad_id,
                              batch_size=batch_size):
    _, sown = layers_lib.forward(model, batch)
    per_layer = layers_lib.group(sown, cross)
    parts = {}
    for layer in cross:
      w_out = layers_lib.module_at(model, layer.path).out_proj.kernel[...]
      p = norms_lib.decompose(per_layer[layer.path], w_out)
      parts[layer.index] = {k: np.asarray(p[k]) for k in
                            ('weights', 'weighted_norm', 'mean_weights', 'summed_norm')}
    for r, i in enumerate(rows):
      t, s = len(targets[i]['ids']), len(sources[i]['ids'])
      out[i] = {l: {'weights': v['weights'][r, :, :t, :s],
                    'weighted_norm': v['weighted_norm'][r, :, :t, :s],
                    'mean_weights': v['mean_weights'][r, :t, :s],
                    'summed_norm': v['summed_norm'][r, :t, :s]} for l, v in parts.items()}
    bar.update(len(rows))
  bar.close()
  return out


def layer_matrix(entry: dict[str, np.ndarray], method: str, head: int | None) -> np.ndarray:
  """The [T, S] matrix of one layer: layer level (head None) or one head, weights or norms."""
  if head is None:
    return entry['mean_weights'] if method == 'weights' else entry['summed_norm']
  return entry['weights'][head] if method == 'weights' else entry['weighted_norm'][head]


def alignments(matrices, sources, targets, *, layer: int, method: str, setting: str,
               head: int | None = None) -> list[set]:
  """Hard word alignments of every sentence for one (layer, method, setting, head)."""
  return [align_lib.extract_alignment(layer_matrix(m[layer], method, head),
                                      src['word_ids'], tgt['word_ids'], setting)
          for m, src, tgt in zip(matrices, sources, targets)]


def aer_table(matrices, sources, targets, gold, *, num_layers: int, num_heads: int
              ) -> dict[str, Any]:
  """AER (%) for every layer × {weights, norms} × {AWO, AWI}, at layer and head level."""
  table: dict[str, Any] = {'layer': {}, 'head': {}}
  for method in METHODS:
    for setting in align_lib.SETTINGS:
      key = f'{method} {setting}'
      table['layer'][key] = [
          100 * align_lib.aer(alignments(matrices, sources, targets, layer=l, method=method,
                                         setting=setting), gold).aer
          for l in range(num_layers)]
      table['head'][key] = [[
          100 * align_lib.aer(alignments(matrices, sources, targets, layer=l, method=method,
                                         setting=setting, head=h), gold).aer
          for h in range(num_heads)] for l in range(num_layers)]
  return table


def mean_norm_per_layer(matrices, num_layers: int) -> list[float]:
  """Average ‖Σ_h α f‖ per layer: the paper picks the best AWI layer by it, without gold."""
  return [float(np.mean([np.mean(m[l]['summed_norm'][:-1]) for m in matrices]))
          for l in range(num_layers)]
