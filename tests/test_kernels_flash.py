"""The Pallas flash-attention kernel (attention/kernels/flash.py) against float64 references.

Kernels run in interpret mode on CPU (and once under the TPU interpreter with race detection);
every kernel is also lowered for cuda (Triton) and tpu (Mosaic) here, so a change that breaks
the GPU or TPU build fails on CPU. Shapes are tiny: interpretation is slow, and compilation
dominates. Lengths are deliberately not block multiples.
"""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention import biases, masks
from attention.kernels import backend as kernel_backend
from attention.kernels import flash
from attention.registry import make_core

B, N, H = 2, 2, 16


def qkv(seed, t, s, dtype=jnp.float32, b=B, n=N, h=H):
  ks = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(ks[0], (b, t, n, h), jnp.float32)
  k = jax.random.normal(ks[1], (b, s, n, h), jnp.float32)
  v = jax.random.normal(ks[2], (b, s, n, h), jnp.float32)
  return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def reference(q, k, v, allowed, bias):
  """float64 attention written out: softmax over allowed keys, zeros for empty rows; and lse."""
  q, k, v = (jnp.asarray(x, jnp.float64) for x in (q, k, v))
  s = jnp.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(q.shape[-1])
  if bias is not None:
    s = s + jnp.asarray(bias, jnp.float64)
  allowed = jnp.broadcast_to(jnp.asarray(allowed, bool), s.shape)
  s = jnp.where(allowed, s, -jnp.inf)
  m = jnp.max(s, axis=-1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  e = jnp.where(allowed, jnp.exp(s - m), 0.0)
  total = e.sum(-1, keepdims=True)
  w = e / jnp.where(total == 0, 1.0, total)
  lse = jnp.where(total[..., 0] == 0, -jnp.inf, jnp.log(jnp.where(total == 0, 1.0, total))[..., 0]
                  + m[..., 0])
  return jnp.einsum('bnts,bsnh->btnh', w, v), lse


def dense_mask(mask, t, s):
  return np.ones((1, 1, t, s), bool) if mask is None else np.asarray(mask.dense(t, s))


def check(q, k, v, mask=None, score_mod=None, *, block=16, atol=2e-5, grads=True,
          platform='cpu'):
  """Forward, lse and gradients of the kernel vs the float64 reference."""
  t, s = q.shape[1], k.shape[1]
  allowed = dense_mask(mask, t, s)
  attend = jax.jit(functools.partial(flash.flash_attention, mask=mask, score_mod=score_mod,
                                     block_q=block, block_k=block, platform=platform))
  out, lse = attend(q, k, v)
  # A loss that weights every output element differently.
  weights = np.asarray(jax.random.normal(jax.random.key(7), out.shape, jnp.float32))
  if grads:
    got = jax.jit(jax.grad(lambda *a: jnp.sum(attend(*a)[0] * weights), (0, 1, 2)))(q, k, v)
  with jax.enable_x64(True):
    bias = None if score_mod is None else np.asarray(score_mod.bias(t, s), np.float64)
    want, want_lse = reference(q, k, v, allowed, bias)
    np.testing.assert_allclose(np.asarray(out, np.float64), want, atol=atol, rtol=atol)
    np.testing.assert_allclose(np.asarray(lse, np.float64), want_lse, atol=atol, rtol=atol)
    if not grads:
      return
    exp = jax.grad(lambda *a: jnp.sum(reference(*a, allowed, bias)[0] * weights),
                   (0, 1, 2))(*(jnp.asarray(x, jnp.float64) for x in (q, k, v)))
  for name, g, e in zip('qkv', got, exp):
    assert np.isfinite(np.asarray(g)).all(), f'd{name} is not finite'
    np.testing.assert_allclose(np.asarray(g, np.float64), e, atol=atol * 4, rtol=atol * 4,
                               err_msg=f'd{name}')


VALID = np.array([[1] * 37, [1] * 23 + [0] * 14], bool)
SEGMENTS = np.array([[0] * 10 + [1] * 20 + [2] * 7, [0] * 30 + [1] * 7], np.int32)

CASES = {
    'no mask': (lambda: None, lambda: None),
    'causal, padded keys and queries': (
        lambda: masks.causal() & masks.padding(jnp.asarray(VALID), jnp.asarray(VALID)),
        lambda: None),
    'packed segments, causal, ALiBi': (
        lambda: masks.causal() & masks.segments(jnp.asarray(SEGMENTS), jnp.asarray(SEGMENTS)),
        lambda: biases.alibi(N)),
    'local window | global tokens, Gaussian + decay': (
        lambda: masks.local_window(5, 5) | masks.global_tokens([0, 20]),
        lambda: biases.gaussian_window(4.0) + biases.distance_decay(0.5)),
    'array mask and array bias': (
        lambda: masks.from_array(np.random.RandomState(0).rand(N, 37, 37) > 0.6) & ~masks.chunked(8),
        lambda: biases.from_array(np.random.RandomState(1).randn(N, 37, 37))),
}


@pytest.mark.parametrize('case', list(CASES))
def test_forward_and_gradients_match_float64_reference(case):
  mask, mod = (f() for f in CASES[case])
  check(*qkv(0, 37, 37), mask, mod)


def test_cross_attention_lengths_and_rectangular_tiles():
  q, k, v = qkv(1, 9, 45)
  check(q, k, v, masks.padding(None, jnp.asarray(np.arange(45)[None] < np.array([[45], [3]]))),
        block=16)


def test_fully_masked_rows_give_zeros_and_finite_gradients():
  q, k, v = qkv(2, 20, 20, b=1)
  allowed = np.tril(np.ones((20, 20), bool))
  allowed[[3, 17]] = False            # two queries see nothing
  allowed[:, 16:] = False             # and a whole key block is empty
  mask = masks.from_array(allowed)
  out, lse = flash.flash_attention(q, k, v, mask, block_q=16, block_k=16, platform='cpu')
  assert np.all(np.asarray(out)[0, [3, 17]] == 0)
  assert np.all(np.asarray(lse)[0, :, [3, 17]] == -np.inf)
  check(q, k, v, mask)


def test_bfloat16_inputs_match_float32_reference():
  q, k, v = qkv(3, 37, 37, jnp.bfloat16)
  mask = masks.causal() & masks.padding(None, jnp.asarray(VALID))
  out, _ = flash.flash_attention(q, k, v, mask, biases.alibi(N), block_q=16, block_k=16,
                                 platform='cpu')
  assert out.dtype == jnp.bfloat16
  with jax.enable_x64(True):
    want, _ = reference(q, k, v, dense_mask(mask, 37, 37),
                        np.asarray(biases.alibi(N).bias(37, 37), np.float64))
  np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=2e-2, rtol=2e-2)


def test_learnable_table_and_slopes_get_the_score_gradient():
  """A learnable table is read as a bias array (its gradient is dS); learnable ALiBi slopes
  are computed in the kernel (their gradient is Σ dS·∂bias/∂m). Both against autodiff of
  the XLA path."""
  from flax import nnx
  q, k, v = qkv(4, 24, 24, b=1)
  mask = masks.causal()
  for mod in (biases.learnable(biases.alibi(N), 32),
              biases.learnable_alibi(N)):
    graphdef, params = nnx.split(mod, nnx.Param)

    def loss(params, attend):
      return jnp.sum(attend(q, k, v, mask, nnx.merge(graphdef, params)) ** 2)

    pallas = lambda *a: flash.flash_attention(*a, block_q=16, block_k=16, platform='cpu')[0]
    xla = lambda *a: make_core('softmax', num_heads=N, head_dim=H)(a[0], a[1], a[2], a[3],
                                                                   score_mod=a[4])
    got = jax.grad(loss)(params, pallas)
    want = jax.grad(loss)(params, xla)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert np.abs(np.asarray(w)).max() > 0
      np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-4, rtol=2e-4)


@hypothesis.settings(max_examples=4, deadline=None, derandomize=True)
@hypothesis.given(st.lists(st.booleans(), min_size=9, max_size=9))
def test_block_sparse_masks_skip_exactly_the_empty_tiles(pattern):
  """Random tile patterns: the kernel visits the non-empty tiles only, and its output equals
  the reference (keys in empty tiles get no weight, not a uniform share)."""
  tiles = np.asarray(pattern, bool).reshape(3, 3)
  allowed = np.kron(tiles, np.ones((16, 16), bool))[:40, :40]
  allowed &= np.random.RandomState(sum(pattern)).rand(40, 40) > 0.3
  mask = masks.from_array(allowed)
  summary = flash.block_summary(mask, 40, 40, 16, 16)
  lists = flash.BlockLists.from_summary(summary)
  assert lists.visited == int((summary != masks.EMPTY).sum()) <= int(tiles.sum())
  check(*qkv(5, 40, 40, b=1), mask, grads=False)


def test_full_tiles_skip_the_mask_and_lists_transpose():
  mask = masks.local_window(31)
  summary = flash.block_summary(mask, 64, 64, 16, 16)
  fwd = flash.BlockLists.from_summary(summary)
  bwd = flash.BlockLists.from_summary(summary.T)
  # Keys i − 31 … i: a band two tiles wide below the diagonal, the middle one full.
  assert fwd.visited == bwd.visited == 1 + 2 + 3 + 3 == int((summary != masks.EMPTY).sum())
  assert fwd.blocks[0, 0, 3].tolist() == [1, 2, 3, -1]   # padded to a power-of-two count
  assert fwd.full[0, 0, 3].tolist() == [0, 1, 0, 0]
  assert bwd.blocks[0, 0, 0].tolist() == [0, 1, 2, -1] and bwd.full[0, 0, 0].tolist() == [0, 1, 0, 0]


def test_tpu_program_under_the_tpu_interpreter_with_race_detection():
  q, k, v = qkv(6, 130, 130, b=1, n=1, h=32)
  valid = jnp.asarray(np.arange(130)[None] < 100)
  check(q, k, v, masks.causal() & masks.padding(None, valid), biases.alibi(1), block=128,
        platform='tpu_interpret')


def test_two_map_kernel_in_bfloat16_and_under_the_tpu_interpreter():
  """The fused kernel's TPU program (SMEM lists, per-head coefficients) under the TPU
  interpreter with race detection, in bfloat16, against the float64 reference (bf16
  tolerance)."""
  t = 130
  ks_ = jax.random.split(jax.random.key(18), 4)
  q1, q2, k1, v = (jax.random.normal(x, (1, t, 1, 32)).astype(jnp.bfloat16) for x in ks_)
  mask = masks.causal()
  out, _ = flash.two_map_attention(q1, k1, q2, None, v, 1.5, 0.5, mask, biases.alibi(1),
                                   platform='tpu_interpret')
  assert out.dtype == jnp.bfloat16
  bias = np.asarray(biases.alibi(1).bias(t, t), np.float64)
  with jax.enable_x64(True):
    want = two_map_reference(q1, k1, q2, k1, v, 1.5, 0.5, dense_mask(mask, t, t), bias, bias)
  np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=3e-2, rtol=3e-2)


def two_map_reference(q1, k1, q2, k2, v, c1, c2, allowed, bias1, bias2):
  """float64 c1·P1·V − c2·P2·V, each P_m a softmax over the allowed keys."""
  per_head = lambda c: jnp.reshape(jnp.asarray(c, jnp.float64), (1, -1, 1, 1))
  p = (per_head(c1) * reference_weights(q1, k1, allowed, bias1)
       - per_head(c2) * reference_weights(q2, k2, allowed, bias2))
  return jnp.einsum('bnts,bsnh->btnh', p, jnp.asarray(v, jnp.float64))


def reference_weights(q, k, allowed, bias):
  q, k = jnp.asarray(q, jnp.float64), jnp.asarray(k, jnp.float64)
  s = jnp.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(q.shape[-1])
  if bias is not None:
    s = s + bias
  allowed = jnp.broadcast_to(jnp.asarray(allowed, bool), s.shape)
  s = jnp.where(allowed, s, -jnp.inf)
  m = jnp.max(s, axis=-1, keepdims=True)
  e = jnp.where(allowed, jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0)), 0.0)
  total = e.sum(-1, keepdims=True)
  return e / jnp.where(total == 0, 1.0, total)


@pytest.mark.parametrize('shared_k', [True, False], ids=['daGPAM_shared_K', 'DIFF_two_pairs'])
def test_two_map_kernel_matches_float64_reference(shared_k):
  """The fused body of daGPAM (one K, per-head coefficients) and DIFF (two query/key pairs,
  values twice as wide, ALiBi over interleaved half-heads): output, and the gradients of every
  input including the coefficients (trainable λs), against float64 autodiff."""
  t = 29
  ks_ = jax.random.split(jax.random.key(10), 5)
  q1, q2, k1, k2 = (jax.random.normal(x, (B, t, N, H)) for x in ks_[:4])
  v = jax.random.normal(ks_[4], (B, t, N, 2 * H))
  valid = jnp.asarray(np.arange(t)[None] < np.array([[t], [17]]))
  mask = masks.causal() & masks.padding(None, valid)
  c1, c2 = jnp.array([1.5, 1.2]), jnp.array([0.5, 0.3])
  if shared_k:
    k2, mod = k1, biases.alibi(N)
    bias = np.asarray(mod.bias(t, t), np.float64)
    bias1 = bias2 = bias
  else:
    mod = biases.alibi(2 * N)
    bias = np.asarray(mod.bias(t, t), np.float64)
    bias1, bias2 = bias[:, 0::2], bias[:, 1::2]     # map m of head n is half-head 2n + m

  def kernel(q1, k1, q2, k2, v, c1, c2):
    return flash.two_map_attention(q1, k1, q2, None if shared_k else k2, v, c1, c2, mask, mod,
                                   interleaved_priors=not shared_k, block_q=16, block_k=16,
                                   platform='cpu')[0]

  args = (q1, k1, q2, k2, v, c1, c2)
  weights = np.asarray(jax.random.normal(jax.random.key(11), (B, t, N, 2 * H)))
  out = jax.jit(kernel)(*args)
  got = jax.jit(jax.grad(lambda *a: jnp.sum(kernel(*a) * weights), range(7)))(*args)
  allowed = dense_mask(mask, t, t)
  with jax.enable_x64(True):
    ref = lambda *a: two_map_reference(*a, allowed, bias1, bias2)
    a64 = [jnp.asarray(x, jnp.float64) for x in args]
    np.testing.assert_allclose(np.asarray(out, np.float64), ref(*a64), atol=2e-5)
    want = list(jax.grad(lambda *a: jnp.sum(ref(*a) * weights), range(7))(*a64))
  if shared_k:   # one K for both maps: its gradient is the sum of the two
    want[1], want[3] = want[1] + want[3], jnp.zeros_like(want[3])
  for name, g, w in zip(['q1', 'k1', 'q2', 'k2', 'v', 'c1', 'c2'], got, want):
    np.testing.assert_allclose(np.asarray(g, np.float64), w, atol=1e-4, rtol=1e-4,
                               err_msg=f'd{name}')


def test_topk_selection_visits_only_tiles_of_kept_keys():
  """(Top-k through the kernel equals the xla top-k in training: the LM test below.)"""
  from attention.topk import topk_selection
  t = 45
  q, k, _ = qkv(14, t, t)
  # A narrow Gaussian prior and k = 2 keep keys near the diagonal: far tiles are never
  # visited although the causal mask allows them.
  floor, visit = topk_selection(q, k, masks.causal(), biases.gaussian_window(2.0), top_k=2,
                                query_chunk_size=16)(16, 16)
  assert visit.shape == (B, N, 3, 3) and not bool(visit[:, :, 2, 0].any())
  # The floor lies between each query's 2nd and 3rd best allowed score (the first two rows
  # have at most 2 keys: no floor).
  scores = np.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(H) + np.asarray(
      biases.gaussian_window(2.0).bias(t, t))
  scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
  ordered = -np.sort(-scores, axis=-1)
  floor = np.asarray(floor)
  assert np.all(floor[:, :, :2] == -np.inf)
  assert np.all((ordered[..., 2:, 2] < floor[:, :, 2:]) & (floor[:, :, 2:] < ordered[..., 2:, 1]))
  visited_keys = np.repeat(np.repeat(np.asarray(visit), 16, 2), 16, 3)[:, :, :t, :t]
  kept = (scores >= floor[..., None]) & (scores > -np.inf)
  assert np.all(visited_keys | ~kept)          # every kept key's tile is visited


def _integer_qk(seed, t, n=1, h=32):
  """bf16-exact queries and keys: entries in {-1, 0, 1}, so every score is an integer / √h and
  distinct score levels are ≥ 1/√h apart, far beyond bf16 rounding."""
  rng = np.random.default_rng(seed)
  q, k, v = (rng.integers(-1, 2, size=(1, t, n, h)).astype(np.float32) for _ in range(3))
  v = v + rng.normal(size=v.shape).astype(np.float32)
  return q, k, v


def test_selected_attention_in_bfloat16_and_under_the_tpu_interpreter():
  """The block-sparse top-k program on TPU (SMEM lists per example and head, the per-query
  floor read by the kernel) under the TPU interpreter with race detection, in bf16: a floor
  half a score level below each query's 3rd best integer score keeps exactly the keys at or
  above that level, and only the tiles holding a kept key are listed."""
  t, h = 200, 32
  q, k, v = _integer_qk(19, t, h=h)
  levels = np.einsum('btnh,bsnh->bnts', q, k)                       # integer scores
  causal = np.tril(np.ones((t, t), bool))
  levels = np.where(causal, levels, -np.inf)
  third = -np.sort(-levels, axis=-1)[..., 2]                        # [1, 1, T]
  floor = (third - 0.5) / np.sqrt(h)
  kept = causal & (levels >= third[..., None])        # rows 0 and 1 have under 3 keys: all kept
  padded = np.pad(kept, ((0, 0), (0, 0), (0, 56), (0, 56)))
  visit = padded.reshape(1, 1, 2, 128, 2, 128).any(axis=(3, 5))
  selection = lambda bq, bk: (jnp.asarray(floor, jnp.float32), jnp.asarray(visit))
  as_bf16 = lambda x: jnp.asarray(x, jnp.bfloat16)
  out, _ = flash.selected_attention(as_bf16(q), as_bf16(k), as_bf16(v), masks.causal(), None,
                                    selection, platform='tpu_interpret')
  assert out.dtype == jnp.bfloat16
  with jax.enable_x64(True):
    want, _ = reference(q, k, v, kept, None)
  np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=3e-2, rtol=3e-2)


def test_sea_compressed_mask_under_the_tpu_interpreter():
  """SEA's kernel path on TPU: M̂ read tile by tile from the [B, N, T, K] table (a row operand
  in VMEM) under the TPU interpreter with race detection, against a float64 softmax over the
  dense M̂ ∧ causal ∧ padding."""
  from attention import sea
  t, width = 130, 8
  q, k, v = qkv(20, t, t, b=1, n=1, h=32)
  rng = np.random.default_rng(1)
  keep = rng.random((1, 1, t, width)) < 0.3
  keep[..., -1] = True
  valid = jnp.asarray(np.arange(t)[None] < 110)
  mask = masks.causal() & masks.padding(None, valid)
  layout = sea.key_layout(masks.causal_padding_parts(mask, kind='sea'), 1, t)
  sparse = mask & masks.compressed_rows(jnp.asarray(keep), layout.lengths, layout.positions)
  selection = lambda bq, bk: (None, sea.compressed_visit(jnp.asarray(keep), layout, bq, bk))
  out, lse = flash.selected_attention(q, k, v, sparse, None, selection, platform='tpu_interpret')
  with jax.enable_x64(True):
    want, want_lse = reference(q, k, v, np.asarray(sparse.dense(t, t)), None)
  np.testing.assert_allclose(np.asarray(out, np.float64), want, atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(np.asarray(lse, np.float64), want_lse, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize('variant', ['bidirectional'])   # causal: the LM test below
def test_sea_core_with_pallas_equals_xla(variant):
  """SEA's sparse branch through the kernel (M̂ read tile by tile, only tiles that may hold a
  kept key visited) against its dense xla path: output and every parameter's gradient."""
  from flax import nnx
  t = 45
  q, k, v = qkv(16, t, t)
  valid = jnp.asarray(np.arange(t)[None] < np.array([[t], [30]]))
  mask = (masks.causal() & masks.padding(None, valid) if variant == 'causal'
          else masks.padding(valid, valid))
  weights = jax.random.normal(jax.random.key(17), q.shape)
  results = []
  for impl in ('pallas', 'xla'):
    core = make_core('sea', num_heads=N, head_dim=H, impl=impl, block_q=16, block_k=16,
                     predictor_length=8, k=4, distill=False, variant=variant, max_len=64)
    graphdef, params, rest = nnx.split(core, nnx.Param, ...)
    loss = lambda p, q, k, v: jnp.sum(nnx.merge(graphdef, p, rest)(q, k, v, mask) * weights)
    results.append(jax.jit(jax.value_and_grad(loss, (0, 1, 2, 3)))(params, q, k, v))
  (l_got, g_got), (l_want, g_want) = results
  np.testing.assert_allclose(float(l_got), float(l_want), rtol=1e-5)
  for g, w in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)


def test_sea_visited_tiles_cover_the_estimated_mask_and_skip_the_rest():
  from attention import sea
  t, width, block = 128, 8, 16
  rng = np.random.default_rng(0)
  # Each query keeps its last quarter of keys (the two last columns), plus random others in
  # the first query rows.
  keep = np.zeros((1, 2, t, width), bool)
  keep[..., -2:] = True
  keep[:, :, :16] |= rng.random((1, 2, 16, width)) < 0.3
  keep = jnp.asarray(keep)
  valid = jnp.asarray(np.arange(t)[None] < 120)
  layout = sea.key_layout(masks.causal_padding_parts(masks.causal() & masks.padding(None, valid),
                                                     kind='sea'), 1, t)
  dense = np.asarray(masks.compressed_rows(keep, layout.lengths, layout.positions).dense(t, t)
                     & masks.causal().dense(t, t) & valid[:, None, None, :])
  needed = dense.reshape(1, 2, t // block, block, t // block, block).any(axis=(3, 5))
  visit = np.asarray(sea.compressed_visit(keep, layout, block, block))
  assert (visit | ~needed).all()                  # every tile holding a kept key is visited
  causal_tiles = np.tril(np.ones((t // block,) * 2, bool))
  # Far-behind tiles of late query blocks are skipped although the causal mask allows them.
  assert (visit & causal_tiles).sum() < 0.7 * causal_tiles.sum() * 2
  assert not visit[:, :, -1, 0].any()


@pytest.mark.parametrize('platform', ['cuda', 'tpu'], ids=['triton_cuda', 'mosaic_tpu'])
def test_kernels_lower_for_gpu_and_tpu(platform):
  """Forward and backward build for Triton and Mosaic TPU (lowering only; no device here)."""
  t = 256
  spec = jax.ShapeDtypeStruct((2, t, 2, 64), jnp.bfloat16)
  ids = jax.ShapeDtypeStruct((2, t), jnp.int32)
  array_bias = biases.from_array(np.zeros((2, t, t), np.float32))

  def loss(q, k, v, seg, mask_fn, mod):
    out, _ = flash.flash_attention(q, k, v, mask_fn(seg), mod, platform=platform)
    return out.astype(jnp.float32).sum()

  for mask_fn, mod in [
      (lambda seg: masks.causal() & masks.segments(seg, seg) & masks.padding(None, seg >= 0),
       biases.alibi(2)),
      (lambda seg: masks.local_window(64) | masks.global_tokens([0]), array_bias)]:
    f = jax.grad(functools.partial(loss, mask_fn=mask_fn, mod=mod), (0, 1, 2))
    text = jax.jit(f).trace(spec, spec, spec, ids).lower(
        lowering_platforms=(platform,)).as_text()
    assert ('tpu_custom_call' if platform == 'tpu' else 'triton') in text.lower()

  # The fused two-map kernel: daGPAM (shared K) and DIFF (two pairs, values twice as wide).
  wide = jax.ShapeDtypeStruct((2, t, 2, 128), jnp.bfloat16)
  lam = jax.ShapeDtypeStruct((2,), jnp.float32)

  def two_map_loss(q1, k1, q2, k2, v, c1, c2, seg):
    out, _ = flash.two_map_attention(q1, k1, q2, k2, v, c1, c2,
                                     masks.causal() & masks.segments(seg, seg),
                                     biases.alibi(2 if k2 is None else 4),
                                     interleaved_priors=k2 is not None, platform=platform)
    return out.astype(jnp.float32).sum()

  # Top-k: data-dependent lists (per example and head) and a per-query score floor.
  from attention.topk import topk_selection

  def topk_loss(q, k, v):
    mask = masks.causal()
    out, _ = flash.selected_attention(q, k, v, mask, None,
                                      topk_selection(q, k, mask, None, top_k=8,
                                                     query_chunk_size=128), platform=platform)
    return out.astype(jnp.float32).sum()

  text = jax.jit(jax.grad(topk_loss, (0, 1, 2))).trace(spec, spec, spec).lower(
      lowering_platforms=(platform,)).as_text()
  assert ('tpu_custom_call' if platform == 'tpu' else 'triton') in text.lower()

  # SEA: the compressed mask read tile by tile, with data-dependent lists.
  from attention import sea

  def sea_loss(q, k, v, keep):
    layout = sea.key_layout(masks.CausalPadding(True, None, None), 2, t)
    sparse = masks.causal() & masks.compressed_rows(keep, layout.lengths, layout.positions)
    out, _ = flash.selected_attention(
        q, k, v, sparse, None, lambda bq, bk: (None, sea.compressed_visit(keep, layout, bq, bk)),
        platform=platform)
    return out.astype(jnp.float32).sum()

  table = jax.ShapeDtypeStruct((2, 2, t, 32), jnp.bool_)
  text = jax.jit(jax.grad(sea_loss, (0, 1, 2))).trace(spec, spec, spec, table).lower(
      lowering_platforms=(platform,)).as_text()
  assert ('tpu_custom_call' if platform == 'tpu' else 'triton') in text.lower()

  for k2, v in ((None, spec), (spec, wide)):
    f = jax.grad(lambda q1, k1, q2, k2, v, c1, c2, seg: two_map_loss(
        q1, k1, q2, k2, v, c1, c2, seg), (0, 1, 2, 4, 5, 6))
    text = jax.jit(f).trace(spec, spec, spec, k2, v, lam, lam, ids).lower(
        lowering_platforms=(platform,)).as_text()
    assert ('tpu_custom_call' if platform == 'tpu' else 'triton') in text.lower()


def test_softmax_core_impl_pallas_equals_xla_and_sows_weights():
  q, k, v = qkv(8, 21, 21)
  mask = masks.causal() & masks.padding(None, jnp.asarray(VALID[:, :21]))
  xla = make_core('softmax', num_heads=N, head_dim=H)
  pallas = make_core('softmax', num_heads=N, head_dim=H, impl='pallas', block_q=16, block_k=16)
  np.testing.assert_allclose(pallas(q, k, v, mask), xla(q, k, v, mask), atol=2e-6)
  from attention.capture import attention_maps
  np.testing.assert_allclose(attention_maps(pallas, q, k, v, mask)[''],
                             attention_maps(xla, q, k, v, mask)[''], atol=1e-6)


def test_bad_kernel_options_name_the_supported_values():
  with pytest.raises(ValueError, match=r'attention.block_q=24.*power of two'):
    make_core('softmax', num_heads=N, head_dim=H, impl='pallas', block_q=24)
  with pytest.raises(ValueError, match=r'head dim 48.*16, 32, 64, 128, 256'):
    kernel_backend.resolve('gpu').check(head_dim=48, block_q=64, block_k=64)
  with pytest.raises(ValueError, match=r'block_k=64.*multiple of 128'):
    kernel_backend.resolve('tpu').check(head_dim=64, block_q=128, block_k=64)
  with pytest.raises(ValueError, match=r'dtype float64.*bfloat16, float16, float32'):
    kernel_backend.resolve('gpu').check(head_dim=64, block_q=64, block_k=64, dtype='float64')
  with pytest.raises(ValueError, match=r"attention.impl='pallas'.*kind=performer.*xla"):
    make_core('performer', num_heads=N, head_dim=H, impl='pallas')
  with pytest.raises(ValueError, match=r'attention.sea.jitter=0.1.*impl=pallas'):
    make_core('sea', num_heads=N, head_dim=H, impl='pallas', jitter=0.1)
  with pytest.raises(ValueError, match=r'attention.dropout=0.1.*pallas'):
    make_core('dagpam', num_heads=N, head_dim=H, impl='pallas', dropout=0.1)
  with pytest.raises(ValueError, match=r'multiplicative'):
    q, k, v = qkv(0, 8, 8)
    flash.flash_attention(q, k, v, None, biases.multiplicative(np.ones((8, 8))), platform='cpu')


def test_auto_picks_per_backend():
  auto = kernel_backend.auto_implementation
  assert auto('softmax', jnp.bfloat16, dropout=0.0, additive=True, cudnn=True,
              platform='cpu') == 'xla'
  assert auto('softmax', jnp.bfloat16, dropout=0.0, additive=True, cudnn=True,
              platform='gpu') == 'cudnn'
  assert auto('softmax', jnp.float32, dropout=0.0, additive=True, cudnn=True,
              platform='gpu') == 'pallas'
  assert auto('dagpam', jnp.bfloat16, dropout=0.0, additive=True, platform='gpu') == 'pallas'
  assert auto('diff', jnp.float32, dropout=0.1, additive=True, platform='tpu') == 'xla'
  assert auto('softmax', jnp.float32, dropout=0.0, additive=False, platform='tpu') == 'xla'
  q, k, v = qkv(9, 5, 5)
  for kind in ('softmax', 'dagpam', 'topk'):   # on CPU, auto is xla for every kind
    np.testing.assert_allclose(make_core(kind, num_heads=N, head_dim=H, impl='auto')(q, k, v),
                               make_core(kind, num_heads=N, head_dim=H)(q, k, v))


def _train_losses(model, batches, loss_fn, steps=3):
  """Losses of `steps` SGD updates and the final params. (Not Adam: it turns the rounding noise
  of gradients that are exactly zero in theory, such as the key bias's, into full steps.)"""
  import optax
  from flax import nnx
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  opt = optax.sgd(0.5)
  state = opt.init(params)

  @jax.jit
  def step(params, state, batch):
    loss, grads = jax.value_and_grad(
        lambda p: loss_fn(nnx.merge(graphdef, p, rest), batch))(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  for i in range(steps):
    params, state, loss = step(params, state, batches[i % len(batches)])
    losses.append(float(loss))
  return losses, params


LM_KINDS = {
    'softmax': {'mask': 'local_window(9) | global_tokens([0])', 'bias': 'learnable(alibi())'},
    'dagpam': {'bias': 'alibi()', 'dagpam.trainable_lambdas': True},
    'diff': {'diff.lambda_init': 0.5},
    'topk': {'topk.k': 5, 'topk.query_chunk_size': 16},
    'sea': {'sea.predictor_length': 8, 'sea.k': 4, 'sea.distill': False},
}


@pytest.mark.parametrize('kind', list(LM_KINDS))
def test_lm_training_steps_with_pallas_equal_xla(kind):
  """A few updates of a small LM: impl=pallas (interpreted) follows impl=xla step for step,
  for softmax with a prior mask and a learnable bias, and for every kind with a kernel."""
  from flax import nnx
  from configs import common
  from models import lm as lm_lib
  x = jax.random.randint(jax.random.key(0), (2, 24), 0, 41)

  def build(impl):
    m = common.model_config()
    m.num_layers, m.d_model, m.num_heads, m.d_ff, m.max_len, m.vocab_size = 2, 32, 2, 64, 32, 41
    a = common.attention_config()
    a.kind, a.impl, a.block_q, a.block_k = kind, impl, 16, 16
    for key, value in LM_KINDS[kind].items():
      node = a
      *path, last = key.split('.')
      for part in path:
        node = node[part]
      node[last] = value
    return lm_lib.TransformerLM(m, a, rngs=nnx.Rngs(params=0, dropout=1))

  def loss_fn(model, batch):
    logits = model.logits(model(batch[:, :-1], deterministic=True))
    return optax_xent(logits, batch[:, 1:])

  got, p_got = _train_losses(build('pallas'), [x], loss_fn)
  want, p_want = _train_losses(build('xla'), [x], loss_fn)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert want[-1] < want[0]
  for g, w in zip(jax.tree.leaves(p_got), jax.tree.leaves(p_want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-4)


def optax_xent(logits, labels):
  import optax
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@pytest.mark.parametrize('kind', ['softmax', 'dagpam', 'diff', 'topk', 'sea'])
def test_encoder_decoder_gradients_with_pallas_equal_xla(kind):
  """Encoder self-, decoder self- and cross-attention (padded source) through the kernels, for
  every kind that has one: loss and every parameter's gradient equal impl=xla. SEA is the
  decoder's causal self-attention (its estimator needs the key positions of a self-attention),
  with softmax in the encoder and cross-attention."""
  from flax import nnx
  from configs import common
  from models import seq2seq
  rng = np.random.default_rng(0)
  source = rng.integers(4, 23, size=(2, 19)).astype(np.int32)
  source[0, 12:] = 1                                                # padding
  target_in = np.concatenate([np.full((2, 1), 2), rng.integers(4, 19, (2, 16))], 1)[:, :17]

  def build(impl):
    c = common.translation_base_config()
    c.attention.kind = 'softmax' if kind == 'sea' else kind
    c.attention.impl, c.attention.block_q, c.attention.block_k = impl, 16, 16
    c.attention.topk.k, c.attention.topk.query_chunk_size = 5, 16
    c.attention.sea.predictor_length, c.attention.sea.k, c.attention.sea.distill = 8, 4, False
    c.attention.sea.variant = 'causal'
    m = c.model
    m.decoder_attention = 'sea' if kind == 'sea' else ''
    m.encoder_layers, m.decoder_layers, m.d_model, m.num_heads, m.d_ff = 1, 1, 32, 2, 64
    m.src_vocab_size, m.tgt_vocab_size, m.max_len = 23, 19, 64
    return seq2seq.EncoderDecoder(m, c.attention, rngs=nnx.Rngs(params=0, dropout=1))

  def loss(model):
    h = model(jnp.asarray(source), jnp.asarray(target_in, jnp.int32))
    return jnp.mean(model.logits(h) ** 2)

  results = []
  for impl in ('pallas', 'xla'):
    model = build(impl)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    results.append(jax.jit(jax.value_and_grad(
        lambda p: loss(nnx.merge(graphdef, p, rest))))(params))
  (l_got, g_got), (l_want, g_want) = results
  np.testing.assert_allclose(float(l_got), float(l_want), rtol=1e-5)
  for g, w in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=1e-4)


def test_show_config_names_the_implementation_that_runs():
  import ml_collections
  a = ml_collections.ConfigDict({'kind': 'softmax', 'impl': 'pallas', 'dropout': 0.0, 'bias': ''})
  assert kernel_backend.describe(a, 'float32') == (
      'attention.kind=softmax impl=pallas on cpu (Pallas: the interpreter, slow: for tests)')
  a.kind, a.impl = 'performer', 'auto'
  assert kernel_backend.describe(a, 'float32') == 'attention.kind=performer impl=auto → xla on cpu'
