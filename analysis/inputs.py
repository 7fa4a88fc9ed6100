"""What `eval.py --analysis` feeds the analyses: batches of a split or of one text, token facts,
and the gold alignment (read and checked before any model is loaded)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from analysis import alignment as align_lib
from analysis import plots
from analysis import report
from analysis import word_alignment

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RWTH_DIR = '../shared/data/rwth-deen-alignment'   # the RWTH de–en gold, project-relative
RWTH_FILES = ('deen.src.utf8', 'deen.tgt.utf8', 'alignmentDeEn.talp')
TEXT_SEPARATOR = '|||'


def _resolve(path: str) -> Path:
  p = Path(path)
  if p.is_absolute() or p.exists():
    return p
  return PROJECT_ROOT / p


# -------------------------------------------------------------------------------- token info


def _frequency_rank(vocab_kind: str, size: int) -> np.ndarray | None:
  """fairseq dictionaries list words by descending training count after the 4 specials."""
  if vocab_kind != 'fairseq':
    return None
  ranks = np.arange(size) - 3
  ranks[:4] = 0
  return ranks


def token_info(data, translation: bool):
  """A report.TokenInfo (LM) or {'source': …, 'target': …} (translation)."""
  if translation:
    def side(vocab):
      return report.TokenInfo(symbols=vocab.symbols, eos_id=data.eos_id, pad_id=data.pad_id,
                              frequency_rank=_frequency_rank(vocab.kind, len(vocab)))
    return {'source': side(data.src_vocab), 'target': side(data.tgt_vocab)}
  symbols = getattr(data, 'symbols', None)
  if symbols is not None:
    return report.TokenInfo(symbols=symbols, eos_id=data.start_id, pad_id=data.pad_id,
                            frequency_rank=_frequency_rank('fairseq', len(symbols)))
  byte_level = data.name == 'enwik8'
  eos = ord('\n') if byte_level else -1  # bytes: a line ends with a newline
  return report.TokenInfo(symbols=None, eos_id=eos, pad_id=data.pad_id, byte_level=byte_level)


# ----------------------------------------------------------------------------------- batches


def split_batches(data, config, split: str, count: int, translation: bool) -> list[dict]:
  """The first `count` sequences (LM windows of seq_len, no context) or sentences of `split`."""
  if translation:
    return list(data.eval_batches(split, max_tokens=config.data.max_tokens, limit=count))
  size = min(count, config.batch_size)
  out, rows = [], 0
  for batch in data.eval_batches(split, batch_size=size, seq_len=config.seq_len,
                                 context_window=0):
    take = min(count - rows, len(batch['inputs']))
    out.append({k: np.asarray(v)[:take] for k, v in batch.items()})
    rows += take
    if rows >= count:
      break
  return out


def text_batch(data, config, text: str, translation: bool) -> dict[str, np.ndarray]:
  """One text as a batch of one row; refuses a text longer than the model's positions."""
  limit = config.model.max_len
  if translation:
    if TEXT_SEPARATOR not in text:
      raise ValueError(f'--text for a translation model is "source {TEXT_SEPARATOR} target" '
                       '(teacher forcing needs both sides)')
    src_text, tgt_text = (t.strip() for t in text.split(TEXT_SEPARATOR, 1))
    src, tgt = data.src_vocab.encode(src_text), data.tgt_vocab.encode(tgt_text)
    for side, ids in (('source', src), ('target', tgt)):
      if len(ids) > limit:
        raise ValueError(f'--text: the {side} has {len(ids)} tokens with </s>, more than the '
                         f"model's {limit} positions (model.max_len)")
    target_in = np.concatenate([[data.bos_id], tgt[:-1]]).astype(np.int32)
    return {'source': src[None], 'target_in': target_in[None], 'targets': tgt[None],
            'weights': np.ones((1, len(tgt)), np.float32)}
  try:
    ids = data.encode(text)
  except (AttributeError, ValueError):
    raise ValueError(f'--text needs a text dataset; the {data.name} data has no text '
                     'encoder') from None
  if len(ids) > limit:
    raise ValueError(f"--text has {len(ids)} tokens (with the line's end), more than the "
                     f"model's {limit} positions (model.max_len)")
  inputs = np.concatenate([[data.start_id], ids[:-1]]).astype(np.int32)
  return {'inputs': inputs[None], 'targets': ids[None].astype(np.int32),
          'weights': np.ones((1, len(ids)), np.float32)}


# ------------------------------------------------------------------------------------- gold


@dataclasses.dataclass
class Gold:
  """Gold sentences and links, then (after `segment_gold`) their subword segmentations."""
  paths: tuple[str, str, str]
  source_tokens: list[list[str]]
  target_tokens: list[list[str]]
  source_words: list[list[str]]
  target_words: list[list[str]]
  links: list[tuple[set, set]]
  sources: list[dict[str, Any]] | None = None
  targets: list[dict[str, Any]] | None = None


def _merge_bpe(tokens: list[str]) -> list[str]:
  return ' '.join(tokens).replace('@@ ', '').split()


def read_gold(config, split: str, *, gold_file=None, source_file=None,
              target_file=None) -> Gold:
  """Reads and checks the gold alignment (counts, link ranges); refuses what does not fit."""
  given = [gold_file, source_file, target_file]
  if any(given) and not all(given):
    raise ValueError('give all three of --gold_file, --source_file and --target_file, or none '
                     '(for the defaults)')
  bpe = config.data.vocab != 'sentencepiece'
  if all(given):
    src_path, tgt_path, gold_path = (_resolve(p) for p in (source_file, target_file, gold_file))
  elif config.data.name == 'synthetic_alignment':
    from data import synthetic_alignment  # pylint: disable=g-import-not-at-top
    src_path, tgt_path, gold_path = synthetic_alignment.gold_files(config.data, split)
  elif (config.data.src_lang, config.data.tgt_lang) == ('de', 'en'):
    folder = _resolve(RWTH_DIR)
    src_path, tgt_path, gold_path = (folder / f for f in RWTH_FILES)
  else:
    raise ValueError(f'no default gold alignment for {config.data.name} '
                     f'{config.data.src_lang}→{config.data.tgt_lang}; give --gold_file, '
                     '--source_file and --target_file')
  for path in (src_path, tgt_path, gold_path):
    if not Path(path).is_file():
      raise ValueError(f'alignment input {path} does not exist')
  source = align_lib.read_sentences(src_path)
  target = align_lib.read_sentences(tgt_path)
  links = align_lib.read_talp(gold_path)
  src_words = [_merge_bpe(s) for s in source] if bpe else source
  tgt_words = [_merge_bpe(t) for t in target] if bpe else target
  align_lib.check_gold(src_words, tgt_words, links,
                       names=(Path(src_path).name, Path(tgt_path).name, Path(gold_path).name))
  return Gold((str(src_path), str(tgt_path), str(gold_path)), source, target, src_words,
              tgt_words, links)


def segment_gold(data, gold: Gold) -> Gold:
  """Adds the model's subwords of every gold sentence (word_alignment.segment)."""
  bpe = not hasattr(data.src_vocab, 'pieces')
  gold.sources = word_alignment.segment(
      data.src_vocab, gold.source_tokens, side=gold.paths[0],
      words_of=gold.source_words if bpe else None)
  gold.targets = word_alignment.segment(
      data.tgt_vocab, gold.target_tokens, side=gold.paths[1],
      words_of=gold.target_words if bpe else None)
  for side, limit, segs in (('source', data.max_source_positions, gold.sources),
                            ('target', data.max_target_positions, gold.targets)):
    for n, seg in enumerate(segs, start=1):
      if len(seg['ids']) > limit:
        raise ValueError(f'{side} sentence {n} has {len(seg["ids"])} subwords with </s>, more '
                         f'than the model reads ({limit})')
  return gold


def alignment_output(model, data, gold: Gold, *, name: str, meta: dict[str, Any],
                     limit: int | None = None) -> report.Output:
  """AER per layer and head, weights vs norms, AWO vs AWI; Pharaoh files of the best layer."""
  n = len(gold.links) if limit is None else min(limit, len(gold.links))
  sources, targets, links = gold.sources[:n], gold.targets[:n], gold.links[:n]
  matrices = word_alignment.cross_attention_matrices(
      model, sources, targets, bos_id=data.bos_id, pad_id=data.pad_id, progress=True)
  num_layers = len(model.decoder_layers)
  num_heads = matrices[0][0]['weights'].shape[0]
  table = word_alignment.aer_table(matrices, sources, targets, links, num_layers=num_layers,
                                   num_heads=num_heads)
  best = {key: int(np.argmin(values)) for key, values in table['layer'].items()}
  mean_norms = word_alignment.mean_norm_per_layer(matrices, num_layers)
  summary = {'analysis': 'alignment', **meta, 'gold': list(gold.paths), 'sentences': n,
             'protocol': 'teacher forcing; subwords → words (sum over source pieces, mean over '
                         'target pieces); target </s> row dropped; argmax on source </s> = no '
                         'link; corpus AER with sure and possible links',
             'aer_percent': table,
             'best_layer': {k: {'layer': v + 1, 'aer': table['layer'][k][v]}
                            for k, v in best.items()},
             'mean_summed_norm_per_layer': mean_norms,
             'largest_norm_layer': int(np.argmax(mean_norms)) + 1,
             'aer_mean_over_layers': {k: float(np.mean(v)) for k, v in table['layer'].items()}}
  texts = {}
  for method in word_alignment.METHODS:
    for setting in align_lib.SETTINGS:
      key = f'{method} {setting}'
      hyp = word_alignment.alignments(matrices, sources, targets, layer=best[key],
                                      method=method, setting=setting)
      texts[f'{method}-{setting}-layer{best[key] + 1}.pharaoh'] = ''.join(
          align_lib.format_pharaoh(h) + '\n' for h in hyp)
  arrays = {f'aer/{k}': np.asarray(v) for k, v in table['layer'].items()}
  arrays.update({f'aer_heads/{k}': np.asarray(v) for k, v in table['head'].items()})
  pictures = {'aer': lambda path: plots.aer_per_layer(
      path, table['layer'], title=f'AER per layer ({n} sentences; lower is better)')}
  for method in word_alignment.METHODS:
    key = f'{method} AWI'
    layer = best[key]
    matrix = align_lib.word_level_matrix(
        align_lib.awi_shift(word_alignment.layer_matrix(matrices[0][layer], method, None)),
        sources[0]['word_ids'], targets[0]['word_ids'])
    hyp = align_lib.hard_alignment(matrix)
    sure, possible = links[0]
    pictures[f'sentence1-{method}-AWI'] = (
        lambda path, m=matrix, h=hyp, s=sure, p=possible, method=method, layer=layer:
        plots.alignment_matrix(path, m, src_words=sources[0]['words'] + ['</s>'],
                               tgt_words=targets[0]['words'], sure=s, possible=p,
                               hypothesis=h,
                               title=f'sentence 1, {method}, AWI, layer {layer + 1}'))
  return report.Output(name, summary, arrays, pictures, texts)
