"""Tests for models/decoding.py: beam and greedy search against exhaustive enumeration and a
float64 re-statement of fairseq's SequenceGenerator loop, on toy step functions whose
log-probabilities are an exact table lookup keyed by the whole prefix."""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import decoding
from models.decoding import LengthPenalty

PAD, EOS = 0, 1
BOS = EOS  # fairseq starts the decoder with EOS


# ---------------------------------------------------------------------------- toy step functions
# Prefix y_1..y_t (output tokens before position t) ↦ a row of a table, with no collisions: rows
# for length t start at offset(t) = Σ_{s<t} V^s and the prefix is read as a base-V number.

def offsets(vocab_size: int, max_len: int) -> np.ndarray:
  return np.concatenate([[0], np.cumsum(vocab_size ** np.arange(max_len))]).astype(np.int64)


def row_of(prefix: tuple[int, ...], vocab_size: int, max_len: int) -> int:
  return int(offsets(vocab_size, max_len)[len(prefix)]
             + sum(tok * vocab_size ** i for i, tok in enumerate(prefix)))


def random_tables(seed: int, batch: int, vocab_size: int, max_len: int, *,
                  eos_logit: float = 0.0) -> np.ndarray:
  """`[batch, rows, V]` float64 log-probabilities (pad included; the search must mask it)."""
  rows = int(offsets(vocab_size, max_len)[max_len])
  logits = 1.5 * np.random.default_rng(seed).normal(size=(batch, rows, vocab_size))
  logits[..., EOS] += eos_logit
  return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def recompute_step_fn(tables: jax.Array, sentence_of_row: jax.Array, max_len: int):
  """Reads the whole prefix from the decoder-input buffer at every step; ignores the cache."""
  vocab_size = tables.shape[-1]
  offs = jnp.asarray(offsets(vocab_size, max_len), jnp.int32)
  powers = jnp.asarray(vocab_size ** np.arange(max_len - 1), jnp.int32)
  positions = jnp.arange(1, max_len)

  def step(tokens, t, cache):
    digits = jnp.where(positions[None, :] <= t, tokens[:, 1:], 0)       # y_1..y_t
    row = offs[t] + jnp.sum(digits * powers[None, :], axis=1)
    return tables[sentence_of_row, row], cache

  return step


def incremental_step_fn(tables: jax.Array, sentence_of_row: jax.Array, max_len: int):
  """Reads only `tokens[:, t]` and keeps the prefix in the cache, in two forms that must agree:
  a running code `[N]` and the token history `[N, L]` (plus a scalar step counter). A wrong
  reordering of either gives NaN log-probabilities, which the search turns into empty slots."""
  vocab_size = tables.shape[-1]
  offs = jnp.asarray(offsets(vocab_size, max_len), jnp.int32)
  powers = jnp.asarray(vocab_size ** np.arange(max_len), jnp.int32)
  positions = jnp.arange(max_len)

  def step(tokens, t, cache):
    token = jax.lax.dynamic_index_in_dim(tokens, t, axis=1, keepdims=False)
    code = cache['code'] + jnp.where(t > 0, token * powers[jnp.maximum(t - 1, 0)], 0)
    history = cache['history'].at[:, t].set(token)
    from_history = jnp.sum(jnp.where((positions >= 1) & (positions <= t), history, 0)
                           * jnp.roll(powers, 1)[None, :], axis=1)
    log_probs = tables[sentence_of_row, offs[t] + code]
    log_probs = jnp.where((code == from_history)[:, None], log_probs, jnp.nan)
    return log_probs, {'code': code, 'history': history, 'steps': cache['steps'] + 1}

  return step


def initial_cache(batch: int, max_len: int) -> dict:
  return {'code': jnp.zeros((batch,), jnp.int32),
          'history': jnp.zeros((batch, max_len), jnp.int32), 'steps': jnp.int32(0)}


@functools.partial(jax.jit, static_argnames=('beam_size', 'max_len', 'penalty', 'min_len',
                                             'incremental'))
def run_beam(tables, max_lens, *, beam_size, max_len, penalty=LengthPenalty('fairseq', 1.0),
             min_len=1, incremental=False):
  batch = tables.shape[0]
  sentence_of_row = decoding.expand_for_beam(jnp.arange(batch), beam_size)
  make = incremental_step_fn if incremental else recompute_step_fn
  cache = None
  if incremental:
    cache = decoding.expand_for_beam(initial_cache(batch, max_len), beam_size)
  return decoding.beam_search(
      make(tables.astype(jnp.float32), sentence_of_row, max_len), cache, batch_size=batch,
      beam_size=beam_size, max_len=max_len, max_lens=max_lens, bos_id=BOS, eos_id=EOS,
      pad_id=PAD, length_penalty=penalty, min_len=min_len)


@functools.partial(jax.jit, static_argnames=('max_len', 'min_len', 'incremental'))
def run_greedy(tables, max_lens, *, max_len, min_len=1, incremental=False):
  batch = tables.shape[0]
  make = incremental_step_fn if incremental else recompute_step_fn
  cache = initial_cache(batch, max_len) if incremental else None
  return decoding.greedy_search(
      make(tables.astype(jnp.float32), jnp.arange(batch), max_len), cache, batch_size=batch,
      max_len=max_len, max_lens=max_lens, bos_id=BOS, eos_id=EOS, pad_id=PAD, min_len=min_len)


# ---------------------------------------------------------------------- float64 references

def denominator(penalty: LengthPenalty, length: int) -> float:
  """The penalty written from its sources: fairseq `len ** lenpen`, GNMT eq. 14."""
  if penalty.kind == 'fairseq':
    return length ** penalty.value
  if penalty.kind == 'gnmt':
    return ((5 + length) / 6) ** penalty.value
  return 1.0


def constrained(log_probs: np.ndarray, step: int, max_len: int, min_len: int) -> np.ndarray:
  out = log_probs.copy()
  out[PAD] = -np.inf
  if step >= max_len:
    out[np.arange(len(out)) != EOS] = -np.inf
  elif step < min_len:
    out[EOS] = -np.inf
  return out


def exhaustive(table, *, max_len, min_len, penalty, vocab_size, buffer_len):
  """Every complete hypothesis (≤ max_len tokens before EOS, ≥ min_len unless forced), scored
  and sorted best first."""
  real = [v for v in range(vocab_size) if v not in (PAD, EOS)]
  hypotheses = []
  for n in range(min(min_len, max_len), max_len + 1):
    for body in itertools.product(real, repeat=n):
      score = sum(table[row_of(body[:i], vocab_size, buffer_len)][tok]
                  for i, tok in enumerate(body))
      score += table[row_of(body, vocab_size, buffer_len)][EOS]
      hypotheses.append((body + (EOS,), score / denominator(penalty, n + 1)))
  return sorted(hypotheses, key=lambda h: -h[1])


def fairseq_reference(table, *, beam, max_len, min_len, penalty, vocab_size, buffer_len):
  """fairseq `SequenceGenerator._generate` with `search.BeamSearch`, one sentence, float64.

  Only finite candidates are kept: fairseq's −inf candidates are never finalised and never
  extend to anything finite, so dropping them changes no returned hypothesis."""
  live = [((), 0.0)]
  finalized = []
  for step in range(max_len + 1):
    candidates = []
    for beam_index, (prefix, score) in enumerate(live):
      log_probs = constrained(table[row_of(prefix, vocab_size, buffer_len)], step, max_len,
                              min_len)
      candidates += [(score + lp, beam_index, tok) for tok, lp in enumerate(log_probs)
                     if lp > -np.inf]
    candidates = sorted(candidates, key=lambda c: -c[0])[:2 * beam]
    for score, beam_index, tok in candidates[:beam]:
      if tok == EOS and len(finalized) < beam:
        finalized.append((live[beam_index][0] + (EOS,), score / denominator(penalty, step + 1)))
    if len(finalized) == beam or step == max_len:
      break
    live = [(live[b][0] + (tok,), score) for score, b, tok in candidates if tok != EOS][:beam]
  return sorted(finalized, key=lambda h: -h[1])


def hypotheses_of(tokens, scores, lengths):
  """Finite slots of one sentence as (tokens with EOS, score); checks the slot layout."""
  out = []
  for toks, score, length in zip(np.asarray(tokens), np.asarray(scores), np.asarray(lengths)):
    assert not np.isnan(score)
    if score == -np.inf:
      assert length == 0 and (toks == PAD).all(), 'an empty slot must be all pad, length 0'
      continue
    assert toks[length - 1] == EOS and (toks[length:] == PAD).all()
    assert EOS not in toks[:length - 1]
    out.append((tuple(int(x) for x in toks[:length]), float(score)))
  return out


def assert_same_hypotheses(got, expected):
  assert [h[0] for h in got] == [h[0] for h in expected]
  np.testing.assert_allclose([h[1] for h in got], [h[1] for h in expected], rtol=2e-5)


PENALTIES = [LengthPenalty('fairseq', 1.0), LengthPenalty('fairseq', 2.0),
             LengthPenalty('gnmt', 0.6), LengthPenalty('none')]


# --------------------------------------------------------------------------------------- tests

# (vocab size, buffer L, min_len, beam): the beam holds every live prefix and every candidate
# finite at any step, and K ≥ the number of complete hypotheses, so fairseq's search enumerates
# them all and must return all of them, sorted.
COVERING = {'v4': (4, 4, 1, 14), 'v5': (5, 3, 1, 12), 'min0': (4, 4, 0, 15),
            'min2': (4, 4, 2, 12)}


@pytest.mark.parametrize('config, penalty',
                         [(c, p) for c in ('v4', 'v5') for p in PENALTIES]
                         + [('min0', PENALTIES[0]), ('min2', PENALTIES[2])])
def test_covering_beam_returns_every_hypothesis_best_first(config, penalty):
  vocab_size, buffer_len, min_len, beam = COVERING[config]
  tables = random_tables(7, 2, vocab_size, buffer_len)
  max_lens = np.array([buffer_len - 1, buffer_len - 2])   # the second sentence leaves slots empty
  result = run_beam(tables, max_lens, beam_size=beam, max_len=buffer_len, penalty=penalty,
                    min_len=min_len)
  for b in range(2):
    expected = exhaustive(tables[b], max_len=int(max_lens[b]), min_len=min_len, penalty=penalty,
                          vocab_size=vocab_size, buffer_len=buffer_len)
    got = hypotheses_of(result.tokens[b], result.scores[b], result.lengths[b])
    assert_same_hypotheses(got, expected)
  assert len(got) < beam  # the short sentence really had empty slots


@pytest.mark.parametrize('beam', [2, 3])
@pytest.mark.parametrize('penalty', [PENALTIES[0], PENALTIES[2], PENALTIES[3]],
                         ids=lambda p: f'{p.kind}{p.value}')
def test_small_beam_matches_fairseq_loop(beam, penalty):
  vocab_size, buffer_len = 6, 5
  max_lens = np.array([4, 4, 3, 2, 1, 0])
  for seed in range(3):
    tables = random_tables(seed, len(max_lens), vocab_size, buffer_len)
    result = run_beam(tables, max_lens, beam_size=beam, max_len=buffer_len, penalty=penalty)
    for b, limit in enumerate(max_lens):
      expected = fairseq_reference(tables[b], beam=beam, max_len=int(limit), min_len=1,
                                   penalty=penalty, vocab_size=vocab_size, buffer_len=buffer_len)
      got = hypotheses_of(result.tokens[b], result.scores[b], result.lengths[b])
      assert_same_hypotheses(got, expected)


def hand_table() -> np.ndarray:
  """pad 0, eos 1, a 2, b 3; probabilities per prefix, 1/3 each for eos, a, b elsewhere."""
  a, b = 2, 3
  probs = {(): {a: .5, b: .3, EOS: .2},
           (a,): {EOS: .7, a: .2, b: .1},
           (b,): {a: .7, EOS: .2, b: .1},
           (b, a): {a: .6, EOS: .3, b: .1},
           (a, a): {EOS: .5, a: .3, b: .2}}
  table = np.full((int(offsets(4, 4)[4]), 4), np.log(1 / 3))
  table[:, PAD] = -np.inf
  for prefix, dist in probs.items():
    row = table[row_of(prefix, 4, 4)]
    row[:] = -np.inf
    for tok, p in dist.items():
      row[tok] = np.log(p)
  return table


def test_fairseq_rules_on_a_hand_worked_case():
  # beam 2, lenpen 1, at most 3 tokens before EOS, EOS banned at step 0.
  # step 0: live a (.5), b (.3).
  # step 1: candidates a·eos .35, b·a .21, a·a .10, b·eos .06, a·b .05, b·b .03. The top 2K = 4
  #   hold two EOS; only a·eos is among the top K = 2, so only it is finalised (score
  #   log .35 / 2). Taking EOS from all 2K would also finalise b·eos and stop here.
  #   Next beam: the first two non-EOS, b·a (.21) and a·a (.10).
  # step 2: b·a·a .126, b·a·eos .063, a·a·eos .05, …; top K: b·a·a and b·a·eos; b·a·eos is
  #   finalised (log .063 / 3) and the sentence holds K = 2, so it stops, although
  #   b·a·a·eos (log(.126/3) / 4 ≈ −0.79) would beat −0.92.
  table = hand_table()
  result = run_beam(table[None], np.array([3]), beam_size=2, max_len=4)
  np.testing.assert_array_equal(result.tokens[0], [[2, 1, 0, 0], [3, 2, 1, 0]])
  np.testing.assert_array_equal(result.lengths[0], [2, 3])
  np.testing.assert_allclose(result.scores[0], [math.log(.35) / 2, math.log(.063) / 3],
                             rtol=1e-6)
  best_two = exhaustive(table, max_len=3, min_len=1, penalty=PENALTIES[0], vocab_size=4,
                        buffer_len=4)[:2]
  assert [h[0] for h in best_two] == [(2, 1), (3, 2, 2, 1)], 'the stop rule must matter here'
  greedy = run_greedy(table[None], np.array([3]), max_len=4)
  np.testing.assert_array_equal(greedy.tokens[0], [2, 1, 0, 0])
  assert int(greedy.lengths[0]) == 2
  np.testing.assert_allclose(greedy.scores[0], math.log(.35), rtol=1e-6)


def greedy_reference(table, *, max_len, min_len, vocab_size, buffer_len):
  prefix, score = (), 0.0
  for step in range(max_len + 1):
    log_probs = constrained(table[row_of(prefix, vocab_size, buffer_len)], step, max_len, min_len)
    tok = int(np.argmax(log_probs))
    prefix, score = prefix + (tok,), score + log_probs[tok]
    if tok == EOS:
      break
  return prefix, score


def test_beam_of_one_is_greedy():
  vocab_size, buffer_len = 6, 6
  max_lens = np.array([5, 4, 2, 0])
  tables = random_tables(3, len(max_lens), vocab_size, buffer_len, eos_logit=-1.0)
  greedy = run_greedy(tables, max_lens, max_len=buffer_len)
  beam = run_beam(tables, max_lens, beam_size=1, max_len=buffer_len, penalty=LengthPenalty('none'))
  np.testing.assert_array_equal(beam.tokens[:, 0], greedy.tokens)
  np.testing.assert_array_equal(beam.lengths[:, 0], greedy.lengths)
  np.testing.assert_allclose(beam.scores[:, 0], greedy.scores, rtol=1e-6)
  for b, limit in enumerate(max_lens):
    tokens, score = greedy_reference(tables[b], max_len=int(limit), min_len=1,
                                     vocab_size=vocab_size, buffer_len=buffer_len)
    assert_same_hypotheses(hypotheses_of(greedy.tokens[b:b + 1], greedy.scores[b:b + 1],
                                         greedy.lengths[b:b + 1]), [(tokens, score)])


def test_max_lens_force_eos_at_each_sentences_limit():
  vocab_size, buffer_len, beam = 5, 6, 3
  max_lens = np.array([5, 3, 1, 0])
  tables = random_tables(4, len(max_lens), vocab_size, buffer_len, eos_logit=-20.0)
  result = run_beam(tables, max_lens, beam_size=beam, max_len=buffer_len)
  greedy = run_greedy(tables, max_lens, max_len=buffer_len)
  for b, limit in enumerate(max_lens):
    got = hypotheses_of(result.tokens[b], result.scores[b], result.lengths[b])
    # max_lens = 0 overrides min_len = 1: the only hypothesis is EOS, from beam 0.
    assert len(got) == (1 if limit == 0 else beam)
    assert all(len(tokens) == limit + 1 for tokens, _ in got)
    assert int(greedy.lengths[b]) == limit + 1 and int(greedy.tokens[b, limit]) == EOS
  np.testing.assert_allclose(result.scores[3, 0], tables[3, 0, EOS], rtol=1e-6)


def test_min_len_forbids_early_eos():
  vocab_size, buffer_len, beam, min_len = 5, 6, 3, 3
  max_lens = np.array([5, 5])
  tables = random_tables(5, 2, vocab_size, buffer_len, eos_logit=10.0)
  result = run_beam(tables, max_lens, beam_size=beam, max_len=buffer_len, min_len=min_len)
  greedy = run_greedy(tables, max_lens, max_len=buffer_len, min_len=min_len)
  # EOS dominates every distribution, so it comes at the first allowed position.
  np.testing.assert_array_equal(result.lengths, min_len + 1)
  np.testing.assert_array_equal(greedy.lengths, min_len + 1)
  for b in range(2):
    expected = fairseq_reference(tables[b], beam=beam, max_len=5, min_len=min_len,
                                 penalty=PENALTIES[0], vocab_size=vocab_size,
                                 buffer_len=buffer_len)
    assert_same_hypotheses(hypotheses_of(result.tokens[b], result.scores[b], result.lengths[b]),
                           expected)


def test_incremental_cache_equals_recomputing_the_prefix():
  vocab_size, buffer_len, beam = 6, 6, 3
  max_lens = np.array([5, 4, 3])
  tables = random_tables(6, 3, vocab_size, buffer_len, eos_logit=-1.0)
  for run, kwargs in ((run_beam, {'beam_size': beam}), (run_greedy, {})):
    recomputed = run(tables, max_lens, max_len=buffer_len, **kwargs)
    incremental = run(tables, max_lens, max_len=buffer_len, incremental=True, **kwargs)
    assert np.isfinite(np.asarray(incremental.scores)).all(), 'a cache row was misplaced'
    for a, b in zip(recomputed, incremental):
      np.testing.assert_array_equal(a, b)


def test_sentences_decoded_together_equal_each_alone():
  vocab_size, buffer_len, beam = 6, 5, 3
  max_lens = np.array([4, 2, 3])
  tables = random_tables(8, 3, vocab_size, buffer_len)
  together = run_beam(tables, max_lens, beam_size=beam, max_len=buffer_len)
  for b in range(3):
    alone = run_beam(tables[b:b + 1], max_lens[b:b + 1], beam_size=beam, max_len=buffer_len)
    np.testing.assert_array_equal(together.tokens[b], alone.tokens[0])
    np.testing.assert_array_equal(together.lengths[b], alone.lengths[0])
    np.testing.assert_allclose(together.scores[b], alone.scores[0], rtol=1e-6)


def test_padding_rows_give_sentinels_or_finite_scores_never_nan():
  vocab_size, buffer_len, beam = 5, 5, 2
  tables = random_tables(9, 3, vocab_size, buffer_len)
  tables[1] = np.nan                 # a padding row whose model output is NaN
  # A padding row with finite output: a source of length 0 gives a limit of 0 with a=1, b=0.
  max_lens = decoding.max_output_lengths(np.array([3, 0, 0]), a=1.0, b=0, cap=4)
  max_lens[0] = 4
  result = run_beam(tables, max_lens, beam_size=beam, max_len=buffer_len)
  greedy = run_greedy(tables, max_lens, max_len=buffer_len)
  for out in (result, greedy):
    assert not np.isnan(np.asarray(out.scores)).any()
  np.testing.assert_array_equal(result.scores[1], -np.inf)
  np.testing.assert_array_equal(result.lengths[1], 0)
  np.testing.assert_array_equal(result.tokens[1], PAD)
  assert float(greedy.scores[1]) == -np.inf and int(greedy.lengths[1]) == 0
  np.testing.assert_array_equal(greedy.tokens[1], PAD)
  assert hypotheses_of(result.tokens[2], result.scores[2], result.lengths[2])[0][0] == (EOS,)
  assert np.isfinite(float(greedy.scores[2]))
  # The other sentence is untouched by its neighbours.
  alone = run_beam(tables[:1], max_lens[:1], beam_size=beam, max_len=buffer_len)
  np.testing.assert_array_equal(result.tokens[0], alone.tokens[0])
  np.testing.assert_allclose(result.scores[0], alone.scores[0], rtol=1e-6)


def test_eager_call_equals_jit_with_traced_max_lens():
  vocab_size, buffer_len, beam = 5, 5, 2
  max_lens = np.array([4, 3])
  tables = random_tables(10, 2, vocab_size, buffer_len)
  sentence_of_row = decoding.expand_for_beam(jnp.arange(2), beam)
  eager = decoding.beam_search(
      recompute_step_fn(jnp.asarray(tables, jnp.float32), sentence_of_row, buffer_len), None,
      batch_size=2, beam_size=beam, max_len=buffer_len, max_lens=max_lens, bos_id=BOS,
      eos_id=EOS, pad_id=PAD, length_penalty=LengthPenalty('gnmt', 0.6))
  jitted = run_beam(tables, jnp.asarray(max_lens), beam_size=beam, max_len=buffer_len,
                    penalty=LengthPenalty('gnmt', 0.6))
  for a, b in zip(eager, jitted):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_expand_for_beam_repeats_each_sentence_in_a_row():
  tree = {'memory': jnp.arange(6).reshape(2, 3), 'index': jnp.int32(4), 'none': None}
  out = decoding.expand_for_beam(tree, 3)
  np.testing.assert_array_equal(out['memory'][:, 0], [0, 0, 0, 3, 3, 3])
  assert out['index'].shape == () and out['none'] is None


def test_max_output_lengths_is_fairseqs_formula():
  source = np.arange(0, 400)
  for a, b, cap in ((1.2, 10, 1023), (0.0, 200, 1023), (1.0, 50, 255), (1.1, 3, 100)):
    expected = [min(int(a * s + b), cap) for s in source]   # fairseq's Python arithmetic
    np.testing.assert_array_equal(decoding.max_output_lengths(source, a=a, b=b, cap=cap),
                                  expected)


def test_bad_arguments_are_explained():
  step = recompute_step_fn(jnp.zeros((1, 85, 4)), jnp.zeros((2,), jnp.int32), 4)
  common = dict(batch_size=1, beam_size=2, max_len=4, bos_id=BOS, eos_id=EOS, pad_id=PAD,
                length_penalty=LengthPenalty())
  with pytest.raises(ValueError, match='unknown length penalty kind'):
    LengthPenalty('gnmt2')
  with pytest.raises(ValueError, match=r'max_lens must lie in \[0, max_len - 1\]'):
    decoding.beam_search(step, None, max_lens=np.array([4]), **common)
  with pytest.raises(ValueError, match='shape'):
    decoding.beam_search(step, None, max_lens=np.array([2, 2]), **common)
  with pytest.raises(ValueError, match='leading dim 1, expected 2'):
    decoding.beam_search(step, {'k': jnp.zeros((1, 3))}, max_lens=np.array([2]), **common)
  with pytest.raises(ValueError, match='min_len'):
    decoding.beam_search(step, None, max_lens=np.array([2]), min_len=4, **common)
  with pytest.raises(ValueError, match='on the host'):
    jax.jit(lambda s: decoding.max_output_lengths(s, a=1.0, b=5, cap=10))(jnp.arange(3))
