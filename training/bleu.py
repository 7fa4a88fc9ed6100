"""Translation BLEU three ways: call `translation_bleus(hyps, refs, lang='de', level='raw')`.

Three different numbers are all called "BLEU" in the translation literature, and published results
are only comparable when the protocol matches (Post 2018, "A Call for Clarity in Reporting BLEU
Scores", arXiv 1804.08771):

* `bleu`: tokenized corpus BLEU-4 without smoothing. Equals Moses `multi-bleu.perl`, the BLEU4
  that `fairseq-generate` prints (whose scorer on token ids also never counts a reference `<unk>`
  as a match), and `fairseq-score`.
* `bleu_compound_split`: the same after rewriting hyphenated compounds `x-y` to
  `x ##AT##-##AT## y` on both sides. Equals tensor2tensor `get_ende_bleu.sh` and fairseq
  `scripts/compound_split_bleu.sh`.
* `sacrebleu`: sacreBLEU on detokenized text (13a tokenizer, exp smoothing, one reference), with
  its signature in `sacrebleu_signature`. Equals the `sacrebleu` command line and fairseq's
  `--eval-bleu --eval-bleu-detok moses` validation BLEU.

Which to report: IWSLT14 de→en papers report `bleu` (fairseq-generate's BLEU4 on the tokenized,
lowercased test set). WMT14 en→de papers report `bleu_compound_split` (Vaswani et al. 2017 27.3 /
28.4; Ott et al. 2018 29.3) and, more recently, `sacrebleu`. Always report `sacrebleu` with its
signature as well.

The model's output, after subword removal, comes at one of two text levels:

* `level='tokenized'` (IWSLT14 from fairseq `prepare-iwslt14.sh`: Moses-tokenized with
  `tokenizer.perl -l LANG`, XML-escaped, lowercased; the references are the tokenized files).
  `bleu` and `bleu_compound_split` are computed on the text as given; for `sacrebleu` both sides
  are detokenized with sacremoses `MosesDetokenizer(lang)`, which also unescapes Moses entities
  (`&apos;`, `&quot;`, `&amp;`, ...), exactly as fairseq's `--eval-bleu-detok moses` does.
* `level='raw'` (WMT14 with a sentencepiece model; the references are the raw newstest files).
  `sacrebleu` is computed on the text as given; for `bleu` and `bleu_compound_split` both sides are
  first tokenized with sacremoses `MosesTokenizer(lang)` with `tokenizer.perl` defaults (no `-a`
  aggressive hyphen splitting), as `get_ende_bleu.sh` does. We skip the XML escaping that
  `tokenizer.perl` applies by default: it maps each token to another token injectively and never
  touches spaces or hyphens, so every n-gram match, and therefore every BLEU, is unchanged, and the
  tokenized text stays readable.

Tokenized BLEU is case-sensitive (multi-bleu.perl without `-lc`); lowercase both sides yourself
for the `-lc` variant.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import re
from typing import Sequence

import sacrebleu
import sacremoses

MAX_ORDER = 4
LEVELS = ('tokenized', 'raw')

# perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g' works on bytes (no -C), so match on UTF-8
# bytes too: \s is ASCII whitespace only, and /g resumes after the byte that the second \S
# consumed, which for a multi-byte character is not the whole character.
_COMPOUND_HYPHEN = re.compile(rb'(\S)-(\S)')
COMPOUND_SPLIT_HYPHEN = '##AT##-##AT##'


@dataclasses.dataclass(frozen=True)
class Bleu:
  """Corpus BLEU-4 and its sufficient statistics, as multi-bleu.perl prints them.

  Attributes:
    score: BLEU in [0, 100].
    precisions: clipped n-gram precisions for n = 1..4, in percent (0 where no n-grams exist).
    brevity_penalty: exp(1 − r/c) when c < r, else 1 (0 for an all-empty hypothesis corpus).
    ratio: hyp_len / ref_len (0 when ref_len is 0, as multi-bleu.perl prints).
    hyp_len: c, the number of hypothesis tokens.
    ref_len: r, the number of reference tokens.
    correct: clipped n-gram matches summed over the corpus, n = 1..4.
    total: hypothesis n-grams summed over the corpus, n = 1..4.
  """
  score: float
  precisions: tuple[float, ...]
  brevity_penalty: float
  ratio: float
  hyp_len: int
  ref_len: int
  correct: tuple[int, ...]
  total: tuple[int, ...]

  def format(self) -> str:
    """The one-line summary in multi-bleu.perl's layout, for logs."""
    p = '/'.join(f'{x:.1f}' for x in self.precisions)
    return (f'BLEU = {self.score:.2f}, {p} (BP={self.brevity_penalty:.3f}, ratio={self.ratio:.3f},'
            f' hyp_len={self.hyp_len}, ref_len={self.ref_len})')


def _check_corpora(hypotheses: Sequence[str], references: Sequence[str]) -> None:
  for name, lines in (('hypotheses', hypotheses), ('references', references)):
    if isinstance(lines, str):
      raise ValueError(f'{name} must be a sequence of sentences, one string per line; got a single '
                       f'string of {len(lines)} characters. Wrap it in a list or split it on '
                       'newlines.')
  if len(hypotheses) != len(references):
    raise ValueError(f'got {len(hypotheses)} hypotheses but {len(references)} references; BLEU '
                     'needs exactly one reference per hypothesis, line by line. Check that '
                     'decoding did not skip or add sentences and that the reference file is the '
                     'matching split.')
  if not hypotheses:
    raise ValueError('got no sentences: the hypothesis and reference corpora are both empty. '
                     'Check the split that was decoded.')


def _ngram_counts(tokens: list[str]) -> collections.Counter:
  return collections.Counter(
      tuple(tokens[i:i + n]) for n in range(1, MAX_ORDER + 1) for i in range(len(tokens) - n + 1))


def bleu_from_counts(correct: Sequence[int], total: Sequence[int], hyp_len: int,
                     ref_len: int) -> Bleu:
  """BLEU from corpus sums of clipped matches and n-gram totals (multi-bleu.perl's final step).

  Summing these statistics over shards and scoring once gives the same number as scoring the
  concatenated corpus; averaging per-shard BLEUs does not.

  Args:
    correct: clipped n-gram matches for n = 1..4.
    total: hypothesis n-grams for n = 1..4.
    hyp_len: hypothesis tokens c.
    ref_len: reference tokens r.

  Returns:
    The `Bleu`; its score is 0 when any precision is 0 (no smoothing), when c = 0 (where
    multi-bleu.perl would divide by zero), or when r = 0 (multi-bleu.perl prints 0 and fails).
  """
  if len(correct) != MAX_ORDER or len(total) != MAX_ORDER:
    raise ValueError(f'expected {MAX_ORDER} n-gram orders of matches and totals, got '
                     f'{len(correct)} and {len(total)}')
  correct, total = tuple(int(x) for x in correct), tuple(int(x) for x in total)
  precisions = tuple(100.0 * m / t if t else 0.0 for m, t in zip(correct, total))
  if ref_len == 0:
    return Bleu(0.0, precisions, 0.0, 0.0, hyp_len, ref_len, correct, total)
  if hyp_len < ref_len:
    brevity_penalty = math.exp(1.0 - ref_len / hyp_len) if hyp_len else 0.0
  else:
    brevity_penalty = 1.0
  if min(precisions) == 0.0:
    score = 0.0
  else:
    log_mean = sum(math.log(m / t) for m, t in zip(correct, total)) / MAX_ORDER
    score = 100.0 * brevity_penalty * math.exp(log_mean)
  return Bleu(score, precisions, brevity_penalty, hyp_len / ref_len, hyp_len, ref_len, correct,
              total)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> Bleu:
  """Tokenized corpus BLEU-4 of whitespace-tokenized text, as Moses `multi-bleu.perl ref < hyp`.

  Papineni et al. 2002: clipped n-gram matches and hypothesis n-grams for n = 1..4 are summed over
  the corpus, their precisions combined by a geometric mean, times the brevity penalty
  exp(1 − r/c) when the c hypothesis tokens are fewer than the r reference tokens; 0 when any
  precision is 0. One reference per sentence. An empty line is a sentence of zero tokens: it adds
  nothing to c and its reference's length to r.

  Tokens are `str.split()` fields, as in sacreBLEU (`tokenize='none'`) and `fairseq-score`.
  multi-bleu.perl reads bytes and splits on ASCII whitespace only, so the two differ only on text
  with non-ASCII whitespace (no-break space, U+2009, ...), which Moses tokenization has already
  collapsed to plain spaces.

  Args:
    hypotheses: one tokenized system output per line.
    references: the matching tokenized reference lines.

  Returns:
    The `Bleu` with its statistics.

  Raises:
    ValueError: the corpora differ in length, are empty, or one was passed as a single string.
  """
  _check_corpora(hypotheses, references)
  correct = [0] * MAX_ORDER
  total = [0] * MAX_ORDER
  hyp_len = ref_len = 0
  for hypothesis, reference in zip(hypotheses, references):
    hyp_tokens, ref_tokens = hypothesis.split(), reference.split()
    hyp_len += len(hyp_tokens)
    ref_len += len(ref_tokens)
    ref_counts = _ngram_counts(ref_tokens)
    for ngram, count in _ngram_counts(hyp_tokens).items():
      total[len(ngram) - 1] += count
      correct[len(ngram) - 1] += min(count, ref_counts.get(ngram, 0))
  return bleu_from_counts(correct, total, hyp_len, ref_len)


def compound_split(line: str) -> str:
  r"""Splits hyphenated compounds as `perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g'`.

  This is the rewrite of tensor2tensor `get_ende_bleu.sh` and fairseq
  `scripts/compound_split_bleu.sh` behind the WMT14 en→de numbers of Vaswani et al. 2017, so that
  `rich-text` counts as three tokens like GNMT/ConvS2S's tokenization. Reproduced exactly,
  including its quirks:

  * Matches do not overlap: `a-b-c` → `a ##AT##-##AT## b-c`, because the `b` was consumed by the
    first match (`a-b-c-d` → `a ##AT##-##AT## b-c ##AT##-##AT## d`). perl consumed one byte,
    though, so between two hyphens a one-letter non-ASCII word leaves a byte for the next match:
    `a-ä-b` → `a ##AT##-##AT## ä ##AT##-##AT## b`.
  * Whitespace is ASCII whitespace: a no-break space next to a dash counts as part of a word.
  * A dash with whitespace or the line edge on either side is untouched (`-a`, `a-`, `a - b`).
  * Moses aggressive hyphen tokens (`tokenizer.perl -a`) become `a @-@ b` →
    `a @ ##AT##-##AT## @ b`, two extra tokens per hyphen that match on both sides and shift the
    score (usually up); undo `-a` (replace ` @-@ ` with `-`) before comparing with published
    numbers.

  Args:
    line: one tokenized sentence.

  Returns:
    The sentence with `x-y` rewritten to `x ##AT##-##AT## y`.
  """
  replacement = rb'\1 ' + COMPOUND_SPLIT_HYPHEN.encode() + rb' \2'
  # Spaces go only next to the ASCII hyphen, i.e. between characters, so the bytes stay UTF-8.
  return _COMPOUND_HYPHEN.sub(replacement, line.encode('utf-8')).decode('utf-8')


def sacrebleu_score(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
  """sacreBLEU of detokenized text with its defaults (13a tokenizer, exp smoothing, mixed case).

  Args:
    hypotheses: one detokenized system output per line.
    references: the matching detokenized reference lines (one reference each).

  Returns:
    (score, signature), e.g. (28.6, 'nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0');
    publish the signature with the score.
  """
  _check_corpora(hypotheses, references)
  metric = sacrebleu.metrics.BLEU()
  result = metric.corpus_score(list(hypotheses), [list(references)])
  return result.score, str(metric.get_signature())


@functools.lru_cache(maxsize=None)
def _moses_tokenizer(lang: str) -> sacremoses.MosesTokenizer:
  return sacremoses.MosesTokenizer(lang=lang)


@functools.lru_cache(maxsize=None)
def _moses_detokenizer(lang: str) -> sacremoses.MosesDetokenizer:
  return sacremoses.MosesDetokenizer(lang=lang)


def tokenize(lines: Sequence[str], lang: str) -> list[str]:
  """Moses-tokenizes each line as `tokenizer.perl -l LANG -no-escape` (sacremoses port).

  Args:
    lines: detokenized sentences.
    lang: ISO 639-1 code selecting the non-breaking prefixes (`de`, `en`, ...).

  Returns:
    Space-separated tokens, hyphenated words kept whole (no `-a`), characters not XML-escaped.
  """
  tokenizer = _moses_tokenizer(lang)
  return [tokenizer.tokenize(line, escape=False, return_str=True) for line in lines]


def detokenize(lines: Sequence[str], lang: str) -> list[str]:
  """Moses-detokenizes each line as `detokenizer.perl -l LANG` (sacremoses port).

  Args:
    lines: Moses-tokenized sentences, possibly XML-escaped (`&apos;` etc. are unescaped).
    lang: ISO 639-1 code selecting the language's rules (`de`, `en`, ...).

  Returns:
    Detokenized sentences, as fairseq's `--eval-bleu-detok moses` produces them.
  """
  detokenizer = _moses_detokenizer(lang)
  return [detokenizer.detokenize(line.split()) for line in lines]


def translation_bleus(hypotheses: Sequence[str], references: Sequence[str], *, lang: str,
                      level: str) -> dict:
  """The three BLEUs of the module docstring for one decoded test set.

  Args:
    hypotheses: system outputs after subword removal, one per line.
    references: the matching reference lines at the same text level.
    lang: target language code, for the Moses tokenizer/detokenizer.
    level: 'tokenized' (Moses-tokenized text, e.g. IWSLT14) or 'raw' (detokenized text, e.g. WMT14
      with sentencepiece).

  Returns:
    {'bleu': tokenized BLEU, 'bleu_compound_split': the same after compound splitting,
     'sacrebleu': detokenized sacreBLEU, 'sacrebleu_signature': its signature,
     'bleu_detail': {'precisions', 'bp', 'ratio', 'hyp_len', 'ref_len'} of `bleu`}.

  Raises:
    ValueError: unknown level, or corpora that differ in length or are empty.
  """
  _check_corpora(hypotheses, references)
  if level == 'tokenized':
    tok_hyps, tok_refs = list(hypotheses), list(references)
    detok_hyps, detok_refs = detokenize(hypotheses, lang), detokenize(references, lang)
  elif level == 'raw':
    tok_hyps, tok_refs = tokenize(hypotheses, lang), tokenize(references, lang)
    detok_hyps, detok_refs = list(hypotheses), list(references)
  else:
    raise ValueError(f'unknown text level {level!r}; known: {", ".join(LEVELS)}. Use '
                     "'tokenized' for Moses-tokenized output (IWSLT14) and 'raw' for detokenized "
                     'output (WMT14 with sentencepiece).')
  bleu = corpus_bleu(tok_hyps, tok_refs)
  split = corpus_bleu([compound_split(x) for x in tok_hyps], [compound_split(x) for x in tok_refs])
  score, signature = sacrebleu_score(detok_hyps, detok_refs)
  return {
      'bleu': bleu.score,
      'bleu_compound_split': split.score,
      'sacrebleu': score,
      'sacrebleu_signature': signature,
      'bleu_detail': {
          'precisions': list(bleu.precisions),
          'bp': bleu.brevity_penalty,
          'ratio': bleu.ratio,
          'hyp_len': bleu.hyp_len,
          'ref_len': bleu.ref_len,
      },
  }
