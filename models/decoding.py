"""Greedy and beam search for the seq2seq model: call `beam_search(step_fn, cache, ...)` in `jit`.

    memory, valid = model.encode(source)                      # [B, S, D], once per sentence
    step_fn, cache = model.decoder_step_fn(memory, valid, max_len=max_len, beam_size=K)
    max_lens = max_output_lengths(source_lengths, a=0.0, b=200, cap=max_positions - 1)
    tokens, scores, lengths = beam_search(
        step_fn, cache, batch_size=B, beam_size=K, max_len=max_len, max_lens=max_lens,
        bos_id=bos, eos_id=eos, pad_id=pad, length_penalty=LengthPenalty('fairseq', 1.0))

The search is model-independent and pure JAX: one `lax.while_loop`, fixed-size buffers, any batch
size, so it runs inside `jax.jit` with the step function closed over. The published recipes
(fairseq's translation examples, and Vaswani et al. 2017, arXiv:1706.03762, §6.1):

| recipe | beam | length penalty | max length (tokens before EOS) |
|---|---|---|---|
| IWSLT14 `fairseq-generate --beam 5` | 5 | `LengthPenalty('fairseq', 1.0)` | a=0, b=200 (default) |
| IWSLT14 in-training `--eval-bleu-args` | 5 | `LengthPenalty('fairseq', 1.0)` | a=1.2, b=10 |
| WMT14 fairseq `--beam 4 --lenpen 0.6` | 4 | `LengthPenalty('fairseq', 0.6)` | a=0, b=200 |
| WMT14 Vaswani et al. 2017 | 4 | `LengthPenalty('gnmt', 0.6)` | a=1, b=50 |

**The step function.** `step_fn(tokens: [N, L] int32, t, cache) -> (log_probs [N, V], cache)`.
`tokens` is the decoder-input buffer: bos at position 0, the output tokens chosen so far at
positions 1..t, pad after; `log_probs` is the normalised distribution of output position t (the
token that will sit at input position t + 1). N = batch × beam (batch for greedy). Array leaves of
`cache` have leading dimension N and are reordered along it when beams are re-selected (scalar
leaves, such as a step counter, are left alone). A step function that recomputes the prefix
ignores the cache; an incremental one reads `tokens[:, t]` and appends to it.

**How lengths are counted.** Output positions are 0-based; a hypothesis whose EOS sits at position
t has t tokens before EOS and length t + 1.
* `max_lens[b]` is fairseq's `max_len`, the most tokens *before* EOS: at position `max_lens[b]` only
  EOS is allowed, so a hypothesis holds at most `max_lens[b] + 1` tokens. The static buffer
  `max_len` (L) holds tokens *with* EOS, so `max_lens` must be ≤ L − 1 (fairseq likewise caps
  `max_len` at `max_decoder_positions() − 1`); L is also the decoder-input length the model sees.
* `min_len` is fairseq's `min_len`, the fewest tokens before EOS (EOS is banned at positions
  < min_len). Where `min_len > max_lens[b]` the forced EOS wins; fairseq asserts instead, but here
  a padding row may legitimately get a short limit.
* `lengths` and the length inside every penalty count the EOS: fairseq divides by `(step + 1)`
  in `finalize_hypos` (= `len(hypo['tokens'])`), flax `examples/wmt/decode.py` by
  `brevity_penalty(alpha, cur_index + 1)` and tensor2tensor by `(5 + (i + 1)) / 6`, all the
  position of EOS plus one, so there is no other reading to choose.
* Vaswani et al.'s "input + 50" is taken as fairseq's a=1, b=50 (50 tokens beyond the source,
  then EOS); whether their limit counted the EOS is not stated, a difference of one token.

**Beam search = fairseq `SequenceGenerator._generate` with `search.BeamSearch`** (fairseq
`fairseq/sequence_generator.py`): per sentence the top 2K of the K × V extensions by cumulative
log-probability are the candidates; EOS candidates among the *first K* of them are finalised in
candidate order with score `sum_logprob / penalty(len)` until the sentence holds K finalised
hypotheses; the next beam is the first K non-EOS candidates; a sentence is finished once K
hypotheses are finalised or at its max length (where EOS is forced); the finalised hypotheses are
returned best first (stable in finalisation order on ties). Pad is never selected, NaN
log-probabilities count as −inf (as fairseq does), and a −inf candidate is never finalised. At
step 0 fairseq looks at the first beam only; here the other beams start at −inf, which gives the
same finite candidates. Differences from fairseq:
* fixed buffers for `jit`: finished sentences stay in the batch, frozen, instead of being removed;
* per-sentence `max_lens`. fairseq computes one `max_len` per batch from the *padded* source
  width (`src_tokens.size(1)`, source EOS included), so its limit depends on the batching; pass
  that width for every row to reproduce it exactly;
* a sentence with fewer than K finalised hypotheses (only possible when candidates are −inf, e.g.
  a row whose step function gives NaN) fills the remaining slots with a sentinel: score −inf,
  length 0, all pad. fairseq returns a shorter list;
* not implemented: `unk_penalty`, `no_repeat_ngram_size`, prefix tokens, constraints,
  `match_source_len`, sampling, diverse beam search, ensembles, temperature;
* scores accumulate in float32 whatever the model's dtype (fairseq: the model's dtype).

**GNMT penalty** (Wu et al. 2016, arXiv 1609.08144, eq. 14): `s(Y, X) = log P(Y|X) / lp(Y)`,
`lp(Y) = ((5 + |Y|) / 6) ** α`, as in flax `examples/wmt/decode.py`; the coverage penalty cp is
not implemented (β = 0). The *search* stays fairseq's. GNMT, tensor2tensor (used by Vaswani et
al.) and flax's decode.py instead keep the best K of all finished hypotheses and stop when no live
hypothesis divided by lp(max length) can beat the worst of them, so with α > 0 their output can
differ from this module's.

**Greedy search** is beam search with K = 1 (the top candidate is finalised if it is EOS),
returning raw summed log-probabilities; `min_len` applies as in beam search.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

StepFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]

LENGTH_PENALTY_KINDS = ('fairseq', 'gnmt', 'none')


@dataclasses.dataclass(frozen=True)
class LengthPenalty:
  """How a finished hypothesis' summed log-probability is normalised by its length.

  `fairseq`: `score / len ** value` (`--lenpen`, default 1; fairseq `finalize_hypos`).
  `gnmt`: `score / ((5 + len) / 6) ** value` (Wu et al. 2016, eq. 14; α = 0.6 in Vaswani et al.).
  `none`: the raw sum (fairseq `--unnormalized`); `value` is ignored.
  `len` counts the EOS (see the module docstring).
  """
  kind: str = 'fairseq'
  value: float = 1.0

  def __post_init__(self):
    if self.kind not in LENGTH_PENALTY_KINDS:
      raise ValueError(f'unknown length penalty kind {self.kind!r}; known: '
                       f'{", ".join(LENGTH_PENALTY_KINDS)}')
    if not math.isfinite(self.value):
      raise ValueError(f'length penalty value must be finite, got {self.value}')

  def normalize(self, scores: jax.Array, lengths: jax.Array) -> jax.Array:
    """`scores / penalty(lengths)`; `lengths` ≥ 1 count the EOS. −inf stays −inf."""
    lengths = jnp.asarray(lengths, jnp.float32)
    if self.kind == 'fairseq':
      return scores / lengths ** self.value
    if self.kind == 'gnmt':
      return scores / ((5.0 + lengths) / 6.0) ** self.value
    return scores


class GreedyResult(NamedTuple):
  """`tokens: [B, L]` (EOS, then pad), `lengths: [B]` (with EOS), `scores: [B]` (raw sum)."""
  tokens: jax.Array
  lengths: jax.Array
  scores: jax.Array


class BeamResult(NamedTuple):
  """`tokens: [B, K, L]`, `scores: [B, K]` (normalised, best first), `lengths: [B, K]`."""
  tokens: jax.Array
  scores: jax.Array
  lengths: jax.Array


def reorder_cache(cache: Any, rows: jax.Array) -> Any:
  """`cache` with every array leaf taken at `rows` along its leading dimension (scalar leaves,
  such as a step counter, are left alone): the hypotheses' caches follow them to their new beam
  slots."""
  return jax.tree.map(lambda x: x if np.ndim(x) == 0 else jnp.take(x, rows, axis=0), cache)


def max_output_lengths(source_lengths: Any, *, a: float, b: int, cap: int) -> np.ndarray:
  """fairseq's limit `int(a · src_len + b)`, capped, per sentence: `[B]` int32 for `max_lens`.

  Host-side (NumPy, float64 like fairseq's Python arithmetic, so 1.2 · 5 + 10 is exactly 16);
  call it on the batch before `jit`. The result counts tokens before EOS (fairseq `max_len_a`,
  `max_len_b`). `cap` is the model's limit, `max_decoder_positions − 1` in fairseq; the search
  buffer then needs `max_len ≥ result.max() + 1`. fairseq uses the padded batch width as
  `src_len` for every row; pass that to reproduce it exactly.
  """
  if isinstance(source_lengths, jax.core.Tracer):
    raise ValueError('max_output_lengths runs on the host: call it on the concrete batch before '
                     'jax.jit, and pass the result as max_lens')
  src = np.asarray(source_lengths)
  if src.ndim != 1 or not np.issubdtype(src.dtype, np.integer):
    raise ValueError(f'source_lengths must be a [B] integer array, got shape {src.shape} and '
                     f'dtype {src.dtype}')
  if (src < 0).any():
    raise ValueError(f'source_lengths must be ≥ 0, got {src.min()}')
  if a < 0 or b < 0 or cap < 0:
    raise ValueError(f'max_output_lengths needs a ≥ 0, b ≥ 0 and cap ≥ 0; got a={a}, b={b}, '
                     f'cap={cap}')
  limits = np.floor(float(a) * src.astype(np.float64) + int(b))
  return np.minimum(limits, cap).astype(np.int32)


def expand_for_beam(tree: Any, beam_size: int) -> Any:
  """Repeats every array leaf's leading dim B → B·K, each row K times in a row (fairseq order).

  For the encoder memory, the source mask and the initial cache; scalar leaves are kept.
  """
  if beam_size < 1:
    raise ValueError(f'beam_size must be ≥ 1, got {beam_size}')

  def expand(x):
    x = jnp.asarray(x)
    return x if x.ndim == 0 else jnp.repeat(x, beam_size, axis=0)

  return jax.tree.map(expand, tree)


def greedy_search(step_fn: StepFn, cache: Any, *, batch_size: int, max_len: int,
                  max_lens: Any, bos_id: int, eos_id: int, pad_id: int,
                  min_len: int = 1) -> GreedyResult:
  """Takes the most probable token at each position until EOS or the row's max length.

  Args:
    step_fn: see the module docstring; called with N = batch_size rows.
    cache: initial cache, array leaves with leading dim batch_size (or None).
    batch_size: B.
    max_len: L, static buffer size: output tokens including EOS; also the decoder-input length.
    max_lens: `[B]` int, tokens before EOS at most (EOS forced at that position), ≤ L − 1.
    bos_id, eos_id, pad_id: special token ids.
    min_len: fewest tokens before EOS (fairseq `--min-len`, default 1).

  Returns:
    `GreedyResult(tokens [B, L] int32, lengths [B] int32, scores [B] float32)`: scores are the
    summed log-probabilities including EOS. A row whose step function gives no finite choice
    (e.g. NaN log-probabilities) returns the sentinel score −inf, length 0, all pad.
  """
  max_lens = _check_arguments(batch_size=batch_size, beam_size=1, max_len=max_len,
                              max_lens=max_lens, min_len=min_len, eos_id=eos_id, pad_id=pad_id)
  _check_cache(cache, batch_size)
  b, n = batch_size, batch_size
  seqs = jnp.full((b, max_len + 1), pad_id, jnp.int32).at[:, 0].set(bos_id)
  init = (jnp.int32(0), seqs, jnp.zeros((b,), jnp.float32), jnp.zeros((b,), jnp.int32),
          jnp.zeros((b,), bool), jnp.zeros((b,), bool), cache)

  def cond(state):
    t, done = state[0], state[4]
    return (t < max_len) & ~jnp.all(done)

  def body(state):
    t, seqs, scores, lengths, done, dead, cache = state
    log_probs, cache = step_fn(seqs[:, :max_len], t, cache)
    log_probs = _constrain(_check_log_probs(log_probs, n, eos_id, pad_id).reshape(b, 1, -1), t,
                           max_lens, min_len=min_len, eos_id=eos_id, pad_id=pad_id)[:, 0]
    token = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
    best = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
    dead_now = ~done & (best == -jnp.inf)
    token = jnp.where(done | dead_now, pad_id, token)
    scores = jnp.where(done, scores, scores + best)
    seqs = seqs.at[:, t + 1].set(token)
    ended = ~done & ((token == eos_id) | dead_now)
    lengths = jnp.where(ended, t + 1, lengths)
    return t + 1, seqs, scores, lengths, done | ended, dead | dead_now, cache

  _, seqs, scores, lengths, _, dead, _ = jax.lax.while_loop(cond, body, init)
  tokens = jnp.where(dead[:, None], pad_id, seqs[:, 1:])
  return GreedyResult(tokens, jnp.where(dead, 0, lengths), jnp.where(dead, -jnp.inf, scores))


class _BeamState(NamedTuple):
  t: jax.Array            # scalar int32: the output position being chosen
  seqs: jax.Array         # [B, K, L + 1] int32: bos, then the live hypotheses' tokens
  live_scores: jax.Array  # [B, K] float32: cumulative log-probability of each live hypothesis
  cache: Any
  fin_tokens: jax.Array   # [B, K, L] int32: finalised hypotheses in finalisation order
  fin_scores: jax.Array   # [B, K] float32: normalised; −inf in empty slots
  fin_lengths: jax.Array  # [B, K] int32: with EOS; 0 in empty slots
  fin_count: jax.Array    # [B] int32: finalised so far (fairseq `len(finalized[sent])`)
  done: jax.Array         # [B] bool: sentence finished (fairseq `finished[sent]`)


def beam_search(step_fn: StepFn, cache: Any, *, batch_size: int, beam_size: int, max_len: int,
                max_lens: Any, bos_id: int, eos_id: int, pad_id: int,
                length_penalty: LengthPenalty, min_len: int = 1) -> BeamResult:
  """fairseq's beam search (see the module docstring) with fixed buffers.

  Args:
    step_fn: see the module docstring; called with N = batch_size · beam_size rows, sentence b
      owning rows b·K … b·K + K − 1 (the order of `expand_for_beam`).
    cache: initial cache, array leaves with leading dim N (`expand_for_beam` of the batch's).
    batch_size: B.
    beam_size: K.
    max_len: L, static buffer size: output tokens including EOS; also the decoder-input length.
    max_lens: `[B]` int, tokens before EOS at most (EOS forced at that position), ≤ L − 1.
      Checked when concrete; under `jit` larger values are clipped to L − 1.
    bos_id, eos_id, pad_id: special token ids (bos may equal eos, as in fairseq).
    length_penalty: how finished scores are normalised.
    min_len: fewest tokens before EOS (fairseq `--min-len`, default 1).

  Returns:
    `BeamResult(tokens [B, K, L] int32, scores [B, K] float32, lengths [B, K] int32)`, best
    first; tokens end in EOS, then pad; lengths count the EOS. Empty slots (fewer than K
    hypotheses could be finalised) hold score −inf, length 0, all pad.
  """
  if not isinstance(length_penalty, LengthPenalty):
    raise ValueError(f'length_penalty must be a LengthPenalty, got {length_penalty!r}; e.g. '
                     "LengthPenalty('fairseq', 1.0) or LengthPenalty('gnmt', 0.6)")
  max_lens = _check_arguments(batch_size=batch_size, beam_size=beam_size, max_len=max_len,
                              max_lens=max_lens, min_len=min_len, eos_id=eos_id, pad_id=pad_id)
  b, k, n = batch_size, beam_size, batch_size * beam_size
  _check_cache(cache, n)
  beam_ids = jnp.arange(k, dtype=jnp.int32)

  init = _BeamState(
      t=jnp.int32(0),
      seqs=jnp.full((b, k, max_len + 1), pad_id, jnp.int32).at[:, :, 0].set(bos_id),
      # All beams of a sentence start identical; only beam 0 may extend at step 0 (fairseq
      # reads `lprobs[:, ::beam_size]` there), so the copies start at −inf.
      live_scores=jnp.where(beam_ids == 0, 0.0, -jnp.inf).astype(jnp.float32)[None].repeat(b, 0),
      cache=cache,
      fin_tokens=jnp.full((b, k, max_len), pad_id, jnp.int32),
      fin_scores=jnp.full((b, k), -jnp.inf, jnp.float32),
      fin_lengths=jnp.zeros((b, k), jnp.int32),
      fin_count=jnp.zeros((b,), jnp.int32),
      done=jnp.zeros((b,), bool))

  def cond(s: _BeamState):
    return (s.t < max_len) & ~jnp.all(s.done)

  def body(s: _BeamState) -> _BeamState:
    t = s.t
    log_probs, cache = step_fn(s.seqs[:, :, :max_len].reshape(n, max_len), t, s.cache)
    log_probs = _check_log_probs(log_probs, n, eos_id, pad_id)
    vocab_size = log_probs.shape[-1]
    log_probs = _constrain(log_probs.reshape(b, k, vocab_size), t, max_lens, min_len=min_len,
                           eos_id=eos_id, pad_id=pad_id)
    # −inf + finite and −inf + −inf are −inf; nothing here subtracts, so no NaN can appear.
    extended = s.live_scores[:, :, None] + log_probs                     # [B, K, V]
    cand_scores, cand_beams, cand_tokens = _top_candidates(extended, 2 * k)  # [B, 2K], best first
    cand_eos = (cand_tokens == eos_id) & (cand_scores > -jnp.inf)

    # Finalise EOS candidates among the first K, in order, while the sentence has room.
    new_eos = cand_eos[:, :k] & ~s.done[:, None]
    slot = s.fin_count[:, None] + jnp.cumsum(new_eos, axis=1, dtype=jnp.int32) - 1
    accept = new_eos & (slot < k)                                        # [B, K candidates]
    eos_seqs = jnp.take_along_axis(s.seqs, cand_beams[:, :k, None], axis=1)
    eos_tokens = eos_seqs.at[:, :, t + 1].set(eos_id)[:, :, 1:]           # [B, K, L]
    eos_scores = length_penalty.normalize(cand_scores[:, :k], t + 1)
    hit = accept[:, :, None] & (slot[:, :, None] == beam_ids[None, None, :])  # [B, cand, slot]
    filled = jnp.any(hit, axis=1)                                        # [B, slot]
    source = jnp.argmax(hit, axis=1)                                     # [B, slot]
    fin_tokens = jnp.where(filled[:, :, None],
                           jnp.take_along_axis(eos_tokens, source[:, :, None], axis=1),
                           s.fin_tokens)
    fin_scores = jnp.where(filled, jnp.take_along_axis(eos_scores, source, axis=1),
                           s.fin_scores)
    fin_lengths = jnp.where(filled, t + 1, s.fin_lengths)
    fin_count = s.fin_count + jnp.sum(accept, axis=1, dtype=jnp.int32)
    done = s.done | (fin_count >= k) | (t >= max_lens)

    # The next beam: the first K non-EOS candidates (fairseq's `active_mask` ranking). Among 2K
    # candidates at most K are EOS (one per beam), so K non-EOS always exist.
    rank = jnp.where(cand_eos, 2 * k, 0) + jnp.arange(2 * k, dtype=jnp.int32)
    _, active = jax.lax.top_k(-rank, k)
    next_beams = jnp.take_along_axis(cand_beams, active, axis=1)
    next_tokens = jnp.take_along_axis(cand_tokens, active, axis=1)
    live_scores = jnp.take_along_axis(cand_scores, active, axis=1)
    # Finished sentences are frozen: beams stay in place, nothing extends them again.
    next_beams = jnp.where(done[:, None], beam_ids[None, :], next_beams)
    next_tokens = jnp.where(done[:, None], pad_id, next_tokens)
    live_scores = jnp.where(done[:, None], -jnp.inf, live_scores)
    seqs = jnp.take_along_axis(s.seqs, next_beams[:, :, None], axis=1)
    seqs = seqs.at[:, :, t + 1].set(next_tokens)
    rows = (jnp.arange(b, dtype=jnp.int32)[:, None] * k + next_beams).reshape(n)
    cache = reorder_cache(cache, rows)
    return _BeamState(t + 1, seqs, live_scores, cache, fin_tokens, fin_scores, fin_lengths,
                      fin_count, done)

  final = jax.lax.while_loop(cond, body, init)
  # Best first; the stable sort keeps finalisation order on ties, as Python's `sorted` does.
  order = jnp.argsort(-final.fin_scores, axis=1, stable=True)
  return BeamResult(
      tokens=jnp.take_along_axis(final.fin_tokens, order[:, :, None], axis=1),
      scores=jnp.take_along_axis(final.fin_scores, order, axis=1),
      lengths=jnp.take_along_axis(final.fin_lengths, order, axis=1))


def _top_candidates(extended: jax.Array, n: int):
  """The `n` best of `extended: [B, K, V]` per sentence, as (scores, beams, tokens) `[B, n]`.

  Equal to `top_k` over the flattened `[B, K·V]` (ties to the lower beam, then the lower
  token), done in two stages: the best n of each beam, then the best n of those K·n. XLA on CPU
  lowers a `top_k` inside the search's while loop over K·V elements to a full sort, which made
  each step cost O(K·V log(K·V)); the staged form only sorts K·n values.
  """
  b, k, _ = extended.shape
  n_beam = min(n, extended.shape[2])
  beam_scores, beam_tokens = jax.lax.top_k(extended, n_beam)              # [B, K, n]
  scores, index = jax.lax.top_k(beam_scores.reshape(b, k * n_beam), n)   # [B, n]
  beams = index // n_beam
  tokens = jnp.take_along_axis(beam_tokens.reshape(b, k * n_beam), index, axis=1)
  return scores, beams.astype(jnp.int32), tokens.astype(jnp.int32)


def _constrain(log_probs: jax.Array, t: jax.Array, max_lens: jax.Array, *, min_len: int,
               eos_id: int, pad_id: int) -> jax.Array:
  """fairseq's hard constraints on `[B, K, V]` log-probs at output position t (no renormalising).

  NaN → −inf; pad never; only EOS at t ≥ max_lens[b]; no EOS at t < min_len unless forced.
  """
  vocab = jnp.arange(log_probs.shape[-1])
  is_eos = (vocab == eos_id)[None, None, :]
  forced = (t >= max_lens)[:, None, None]
  banned_eos = ((t < min_len) & (t < max_lens))[:, None, None]
  drop = ((vocab == pad_id)[None, None, :] | (forced & ~is_eos) | (banned_eos & is_eos)
          | jnp.isnan(log_probs))
  return jnp.where(drop, -jnp.inf, log_probs)


def _check_arguments(*, batch_size: int, beam_size: int, max_len: int, max_lens: Any,
                     min_len: int, eos_id: int, pad_id: int) -> jax.Array:
  """Validates the static arguments and `max_lens`; returns `max_lens` as `[B]` int32."""
  for name, value, low in (('batch_size', batch_size, 1), ('beam_size', beam_size, 1),
                           ('max_len', max_len, 1), ('min_len', min_len, 0)):
    if not isinstance(value, (int, np.integer)) or value < low:
      raise ValueError(f'{name} must be a Python int ≥ {low} (it fixes buffer shapes), got '
                       f'{value!r}')
  if min_len > max_len - 1:
    raise ValueError(f'min_len={min_len} leaves no room for EOS in a buffer of max_len={max_len} '
                     f'(EOS can sit at positions ≤ {max_len - 1}); raise max_len or lower min_len')
  if eos_id == pad_id:
    raise ValueError(f'eos_id and pad_id must differ, both are {eos_id}')
  shape = np.shape(max_lens)
  if shape != (batch_size,):
    raise ValueError(f'max_lens must have shape [batch_size] = ({batch_size},), got {shape}')
  if not jnp.issubdtype(jnp.result_type(max_lens), jnp.integer):
    raise ValueError(f'max_lens must be integers (tokens before EOS), got dtype '
                     f'{jnp.result_type(max_lens)}')
  if not isinstance(max_lens, jax.core.Tracer):
    concrete = np.asarray(max_lens)
    if (concrete < 0).any() or (concrete > max_len - 1).any():
      raise ValueError(f'max_lens must lie in [0, max_len - 1] = [0, {max_len - 1}] (tokens '
                       f'before EOS; the buffer of {max_len} also holds the EOS), got '
                       f'min {concrete.min()} and max {concrete.max()}; raise max_len to '
                       f'max_lens.max() + 1 or cap max_output_lengths')
  return jnp.clip(jnp.asarray(max_lens), 0, max_len - 1).astype(jnp.int32)


def _check_cache(cache: Any, n: int) -> None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(cache):
    if np.ndim(leaf) > 0 and np.shape(leaf)[0] != n:
      raise ValueError(f'cache leaf {jax.tree_util.keystr(path)} has leading dim '
                       f'{np.shape(leaf)[0]}, expected {n} (batch × beam; use expand_for_beam '
                       'on the batch cache)')


def _check_log_probs(log_probs: jax.Array, n: int, eos_id: int, pad_id: int) -> jax.Array:
  if log_probs.ndim != 2 or log_probs.shape[0] != n:
    raise ValueError(f'step_fn must return log_probs of shape [N, V] with N = {n}, got '
                     f'{log_probs.shape}')
  vocab_size = log_probs.shape[1]
  if max(eos_id, pad_id) >= vocab_size or min(eos_id, pad_id) < 0:
    raise ValueError(f'eos_id={eos_id} and pad_id={pad_id} must be token ids below the '
                     f'vocabulary size {vocab_size}')
  return log_probs.astype(jnp.float32)
