"""Tests for attention/masks.py: each mask against its definition, the algebra, the block
summary a kernel relies on, array masks from files, and the config-expression parser."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attention import masks

SETTINGS = settings(max_examples=40, deadline=None)


def brute_force(definition, q_len: int, kv_len: int) -> np.ndarray:
  """The mask written as the loop a paper would write, one (i, j) pair at a time."""
  return np.array([[bool(definition(i, j)) for j in range(kv_len)] for i in range(q_len)],
                  dtype=bool).reshape(q_len, kv_len)


def numpy_eval(mask: masks.Mask, q_len: int, kv_len: int) -> np.ndarray:
  return mask.mask_fn(np.arange(q_len)[:, None], np.arange(kv_len)[None, :])


DEFINITIONS = [
    (masks.causal(), lambda i, j: j <= i),
    (masks.causal(2), lambda i, j: j <= i + 2),
    (masks.causal(-1), lambda i, j: j <= i - 1),
    (masks.local_window(2), lambda i, j: i - 2 <= j <= i),
    (masks.local_window(1, 3), lambda i, j: i - 1 <= j <= i + 3),
    (masks.local_window(None, 1), lambda i, j: j <= i + 1),
    (masks.local_window(0, None), lambda i, j: j >= i),
    (masks.dilated(2, 3), lambda i, j: abs(i - j) <= 6 and (i - j) % 3 == 0),
    (masks.dilated(1, 1), lambda i, j: abs(i - j) <= 1),
    (masks.global_tokens([0, 5]), lambda i, j: i in (0, 5) or j in (0, 5)),
    (masks.global_tokens([]), lambda i, j: False),
    (masks.chunked(3), lambda i, j: i // 3 == j // 3),
    (masks.prefix_lm(3), lambda i, j: j <= i or j < 3),
    (masks.prefix_lm(0), lambda i, j: j <= i),
]


@pytest.mark.parametrize('mask, definition', DEFINITIONS, ids=[repr(m) for m, _ in DEFINITIONS])
@pytest.mark.parametrize('q_len, kv_len', [(7, 7), (5, 9), (9, 4), (1, 1)])
def test_static_mask_matches_its_definition(mask, definition, q_len, kv_len):
  expected = brute_force(definition, q_len, kv_len)
  from_numpy = numpy_eval(mask, q_len, kv_len)
  assert isinstance(from_numpy, np.ndarray), 'static masks must evaluate in NumPy at trace time'
  np.testing.assert_array_equal(np.broadcast_to(from_numpy, expected.shape), expected)
  dense = mask.dense(q_len, kv_len)
  assert dense.shape == (1, 1, q_len, kv_len) and dense.dtype == jnp.bool_
  np.testing.assert_array_equal(dense[0, 0], expected)


def test_padding_and_segments_match_their_definitions():
  valid_q = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
  valid_k = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
  seg_q = np.array([[1, 1, 2, 2], [1, 2, 2, 3]])
  seg_k = np.array([[1, 2, 2, 2, 0], [3, 3, 2, 1, 1]])
  for b in range(2):
    pad = brute_force(lambda i, j: valid_q[b, i] and valid_k[b, j], 4, 5)
    pad_k = brute_force(lambda i, j: valid_k[b, j], 4, 5)
    seg = brute_force(lambda i, j: seg_q[b, i] == seg_k[b, j], 4, 5)
    for make in (np.asarray, jnp.asarray):
      dense = masks.padding(make(valid_q), make(valid_k)).dense(4, 5)
      assert dense.shape == (2, 1, 4, 5)
      np.testing.assert_array_equal(dense[b, 0], pad)
      np.testing.assert_array_equal(masks.padding(None, make(valid_k)).dense(4, 5)[b, 0], pad_k)
      np.testing.assert_array_equal(masks.segments(make(seg_q), make(seg_k)).dense(4, 5)[b, 0],
                                    seg)


def test_dynamic_masks_work_under_jit():
  @jax.jit
  def dense(valid_k, seg):
    return (masks.causal() & masks.padding(None, valid_k) & masks.segments(seg, seg)).dense(4, 4)

  valid_k = jnp.array([[True, True, True, False]])
  seg = jnp.array([[0, 0, 1, 1]])
  expected = brute_force(lambda i, j: j <= i and j < 3 and (i < 2) == (j < 2), 4, 4)
  np.testing.assert_array_equal(dense(valid_k, seg)[0, 0], expected)


def test_array_mask_is_false_outside_the_array_and_per_head():
  rng = np.random.default_rng(0)
  a = rng.random((3, 4)) < 0.5
  dense = np.asarray(masks.from_array(a).dense(5, 6))[0, 0]
  np.testing.assert_array_equal(dense[:3, :4], a)
  assert not dense[3:].any() and not dense[:, 4:].any()
  heads = rng.random((2, 3, 3)) < 0.5
  dense = masks.from_array(heads).dense(3, 3)
  assert dense.shape == (1, 2, 3, 3)
  np.testing.assert_array_equal(dense[0], heads)
  np.testing.assert_array_equal(masks.from_array(heads.astype(np.int32)).dense(3, 3)[0], heads)


@pytest.mark.parametrize('bad, match', [
    (np.ones(3, bool), 'shape'),
    (np.ones((1, 2, 2, 2), bool), 'shape'),
    (np.full((2, 2), 0.5), '0 and 1'),
    (np.array([['a', 'b']]), '0 and 1'),
])
def test_from_array_rejects_what_is_not_a_mask(bad, match):
  with pytest.raises(ValueError, match=match):
    masks.from_array(bad)


def test_load_reads_npy_and_explains_bad_files(tmp_path):
  good = np.tril(np.ones((4, 4), bool))
  np.save(tmp_path / 'tree.npy', good)
  m = masks.load(str(tmp_path / 'tree.npy'))
  np.testing.assert_array_equal(m.dense(4, 4)[0, 0], good)
  assert repr(m) == f"load({str(tmp_path / 'tree.npy')!r})"
  with pytest.raises(FileNotFoundError, match='missing.npy'):
    masks.load(str(tmp_path / 'missing.npy'))
  np.save(tmp_path / 'soft.npy', np.full((2, 2), 0.3))
  with pytest.raises(ValueError, match='0 and 1'):
    masks.load(str(tmp_path / 'soft.npy'))
  np.save(tmp_path / 'vector.npy', np.ones(4, bool))
  with pytest.raises(ValueError, match=r'\[T, S\] or \[N, T, S\]'):
    masks.load(str(tmp_path / 'vector.npy'))
  np.save(tmp_path / 'objects.npy', np.array([{'a': 1}], dtype=object), allow_pickle=True)
  with pytest.raises(ValueError, match='not a plain .npy'):
    masks.load(str(tmp_path / 'objects.npy'))


@pytest.mark.parametrize('make, match', [
    (lambda: masks.local_window(-1), 'left'),
    (lambda: masks.dilated(2, 0), 'dilation'),
    (lambda: masks.chunked(0), 'size'),
    (lambda: masks.global_tokens([-1]), 'position'),
    (lambda: masks.prefix_lm(1.5), 'prefix_len'),
    (lambda: masks.causal('1'), 'offset'),
])
def test_constructors_reject_bad_arguments(make, match):
  with pytest.raises(ValueError, match=match):
    make()


# --------------------------------------------------------------------------------------------
# Algebra.

def bool_arrays(q_len, kv_len):
  return st.lists(st.booleans(), min_size=q_len * kv_len, max_size=q_len * kv_len).map(
      lambda xs: np.array(xs, bool).reshape(q_len, kv_len))


@SETTINGS
@given(st.data())
def test_operators_are_elementwise_logic(data):
  q_len, kv_len = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
  a, b = data.draw(bool_arrays(q_len, kv_len)), data.draw(bool_arrays(q_len, kv_len))
  ma, mb = masks.from_array(a), masks.from_array(b)
  dense = lambda m: numpy_eval(m, q_len, kv_len)  # the jnp path is checked below
  np.testing.assert_array_equal(dense(ma & mb), a & b)
  np.testing.assert_array_equal(dense(ma | mb), a | b)
  np.testing.assert_array_equal(dense(~ma), ~a)
  np.testing.assert_array_equal(dense(~(ma & mb)), dense(~ma | ~mb))  # De Morgan
  np.testing.assert_array_equal(dense(ma & (ma | mb)), a)  # absorption


def test_operators_in_jnp_and_under_jit():
  a = masks.causal() & ~masks.chunked(2) | masks.global_tokens([3])
  expected = brute_force(lambda i, j: (j <= i and i // 2 != j // 2) or 3 in (i, j), 6, 5)
  np.testing.assert_array_equal(a.dense(6, 5)[0, 0], expected)
  np.testing.assert_array_equal(jax.jit(a.dense, static_argnums=(0, 1))(6, 5)[0, 0], expected)


def test_and_with_none_is_the_mask_itself():
  m = masks.causal()
  assert (m & None) is m and (None & m) is m
  with pytest.raises(TypeError):
    m & np.ones((2, 2), bool)  # pylint: disable=pointless-statement


# --------------------------------------------------------------------------------------------
# Block summaries.

def structured_masks():
  leaves = st.one_of(
      st.builds(masks.causal, st.integers(-3, 3)),
      st.builds(masks.local_window, st.integers(0, 6), st.integers(0, 6)),
      st.builds(masks.dilated, st.integers(0, 4), st.integers(1, 3)),
      st.builds(masks.global_tokens, st.lists(st.integers(0, 30), max_size=3)),
      st.builds(masks.chunked, st.integers(1, 9)),
      st.builds(masks.prefix_lm, st.integers(0, 10)),
      st.builds(lambda a: masks.from_array(a),
                st.integers(0, 2 ** 30).map(
                    lambda s: np.random.default_rng(s).random((2, 20, 20)) < 0.7)),
  )
  return st.recursive(leaves, lambda sub: st.one_of(
      st.builds(lambda a, b: a & b, sub, sub), st.builds(lambda a, b: a | b, sub, sub),
      st.builds(lambda a: ~a, sub)), max_leaves=4)


def tiles(dense: np.ndarray, block_q: int, block_k: int) -> np.ndarray:
  """[..., T, S] → [nq, nk, L·bq·bk], padding the end with False (padding is never attended)."""
  dense = dense.reshape((-1,) + dense.shape[-2:])
  lead, q_len, kv_len = dense.shape
  nq, nk = -(-q_len // block_q), -(-kv_len // block_k)
  padded = np.zeros((lead, nq * block_q, nk * block_k), bool)
  padded[:, :q_len, :kv_len] = dense
  t = padded.reshape(lead, nq, block_q, nk, block_k).transpose(1, 3, 0, 2, 4)
  return t.reshape(nq, nk, -1)


@SETTINGS
@given(structured_masks(), st.integers(1, 24), st.integers(1, 24), st.integers(1, 8),
       st.integers(1, 8))
def test_block_summary_is_exact_for_static_masks(mask, q_len, kv_len, block_q, block_k):
  summary = mask.block_summary(q_len, kv_len, block_q, block_k)
  assert summary.dtype == np.int8
  m = numpy_eval(mask, q_len, kv_len)
  dense = np.broadcast_to(m, m.shape[:-2] + (q_len, kv_len))
  t = tiles(dense, block_q, block_k)
  assert summary.shape == t.shape[:2]
  np.testing.assert_array_equal(summary == masks.EMPTY, ~t.any(-1))
  np.testing.assert_array_equal(summary == masks.FULL, t.all(-1))


@SETTINGS
@given(structured_masks(), st.lists(st.booleans(), min_size=2 * 17, max_size=2 * 17),
       st.sampled_from(['and', 'or', 'not_and']), st.integers(1, 8), st.integers(1, 8))
def test_block_summary_is_conservative_for_dynamic_masks(static, valid, op, block_q, block_k):
  valid_k = jnp.asarray(np.array(valid).reshape(2, 17))
  dynamic = masks.padding(None, valid_k)
  mask = {'and': static & dynamic, 'or': static | dynamic, 'not_and': ~(static & dynamic)}[op]
  assert not mask.is_static
  summary = mask.block_summary(15, 17, block_q, block_k)
  t = tiles(np.asarray(mask.dense(15, 17)), block_q, block_k)
  # Never skip a tile that attends, never drop the mask on a tile that masks.
  assert not (t.any(-1) & (summary == masks.EMPTY)).any()
  assert not (~t.all(-1) & (summary == masks.FULL)).any()
  if op == 'and':  # whatever the static part rules out stays skippable
    static_summary = static.block_summary(15, 17, block_q, block_k)
    np.testing.assert_array_equal(summary == masks.EMPTY, static_summary == masks.EMPTY)


def test_block_summary_examples():
  np.testing.assert_array_equal(masks.causal().block_summary(8, 8, 4, 4), [[1, 0], [2, 1]])
  everything = masks.causal() | ~masks.causal()
  # 10 = 4 + 4 + 2: the ragged last tiles hold padding, so they are partial, never full.
  np.testing.assert_array_equal(everything.block_summary(10, 10, 4, 4),
                                [[2, 2, 1], [2, 2, 1], [1, 1, 1]])
  padded = masks.causal() & masks.padding(None, jnp.ones((1, 8), bool))
  np.testing.assert_array_equal(padded.block_summary(8, 8, 4, 4), [[1, 0], [1, 1]])
  with pytest.raises(ValueError, match='block_q'):
    masks.causal().block_summary(8, 8, 0, 4)


# --------------------------------------------------------------------------------------------
# Config expressions.

@pytest.mark.parametrize('spec', [
    'causal()',
    'local_window(64) | global_tokens([0, 1])',
    'dilated(4, 2) & ~chunked(16)',
    '~(causal() | chunked(2)) & (local_window(3, 1) | prefix_lm(2))',
    'causal(3) & local_window(8)',
    '(causal() | prefix_lm(4)) & ~global_tokens([2])',
])
def test_parse_round_trips(spec):
  mask = masks.parse(spec)
  assert repr(mask) == spec
  np.testing.assert_array_equal(masks.parse(repr(mask)).dense(20, 24), mask.dense(20, 24))


def test_parse_builds_what_the_constructors_build(tmp_path):
  expected = masks.local_window(64) | masks.global_tokens([0, 1])
  parsed = masks.parse('  local_window(left=64)|global_tokens((0, 1))  ')
  np.testing.assert_array_equal(parsed.dense(100, 100), expected.dense(100, 100))
  np.save(tmp_path / 'prior.npy', np.eye(3, dtype=bool))
  loaded = masks.parse(f"load({str(tmp_path / 'prior.npy')!r}) | causal()")
  np.testing.assert_array_equal(loaded.dense(3, 3)[0, 0], np.tril(np.ones((3, 3), bool)))
  np.testing.assert_array_equal(masks.parse('from_array([[1, 0], [1, 1]])').dense(2, 2)[0, 0],
                                [[True, False], [True, True]])


@pytest.mark.parametrize('spec', ['', '   ', None])
def test_parse_empty_is_no_mask(spec):
  assert masks.parse(spec) is None


@pytest.mark.parametrize('spec, token', [
    ("__import__('os')", "'__import__'"),
    ('foo(3)', "'foo'"),
    ("np.ones((3, 3))", "'np.ones'"),
    ("causal().__class__", 'causal().__class__'),
    ('causal(x)', "'x'"),
    ("causal(len('ab'))", "len('ab')"),
    ('causal', "'causal'"),
    ('causal() + chunked(2)', "'+'"),
    ('lambda: causal()', 'lambda'),
    ('[causal()][0]', '[causal()][0]'),
    ('3', "'3'"),
    ('causal(*[1])', '*[1]'),
])
def test_parse_rejects_everything_but_whitelisted_calls(spec, token):
  with pytest.raises(ValueError) as e:
    masks.parse(spec)
  message = str(e.value)
  assert token in message
  assert 'local_window' in message and 'global_tokens' in message  # lists what is allowed


def test_parse_reports_bad_arguments_and_syntax():
  with pytest.raises(ValueError, match="in 'chunked\\(0\\)'.*size"):
    masks.parse('chunked(0)')
  with pytest.raises(ValueError, match='unexpected keyword'):
    masks.parse('chunked(width=3)')
  with pytest.raises(ValueError, match='not a valid expression'):
    masks.parse('causal(')
  with pytest.raises(FileNotFoundError, match='nope.npy'):
    masks.parse("load('nope.npy')")
