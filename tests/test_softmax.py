"""Tests for the softmax core (attention/softmax.py) and the score mods it applies
(attention/biases.py), against a float64 NumPy reference written here."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from attention import biases, masks
from attention.softmax import (SoftmaxAttention, attention_weights, query_block_spans,
                               weighted_values)
from tests import attention_doubles
from tests.attention_doubles import DenseBias, DenseMask

NUM_HEADS = 2
HEAD_DIM = 4


def reference_attention(q, k, v, mask=None, bias=None, factor=None):
  """Masked softmax attention in float64 NumPy: the definition the cores must match.

  weights[b, n, i, j] ∝ exp(q_i·k_j/√H · factor + bias) over the keys the mask allows, and a
  row that allows no key is all zeros (so is its output).
  """
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  s = np.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(q.shape[-1])
  if factor is not None:
    s = s * np.asarray(factor, np.float64)
  if bias is not None:
    s = s + np.asarray(bias, np.float64)
  allowed = np.ones(s.shape, bool) if mask is None else np.broadcast_to(mask, s.shape)
  weights = np.zeros(s.shape)
  for idx in np.ndindex(*s.shape[:-1]):
    row, keep = s[idx], allowed[idx]
    if keep.any():
      e = np.exp(row[keep] - row[keep].max())
      weights[idx][keep] = e / e.sum()
  return weights, np.einsum('bnts,bsnh->btnh', weights, np.asarray(v, np.float64))


def make_core(impl='xla', dropout=0.0, seed=0):
  config = ml_collections.ConfigDict({'impl': impl, 'dropout': dropout})
  return SoftmaxAttention(num_heads=NUM_HEADS, head_dim=HEAD_DIM, config=config,
                          rngs=nnx.Rngs(seed))


random_qkv = functools.partial(attention_doubles.random_qkv, heads=NUM_HEADS, head_dim=HEAD_DIM)


def sown_weights(core):
  (w,) = nnx.pop(core, nnx.Intermediate)['attention_weights'].value
  return w


# Tests call the core under jit: one compilation per shape is much faster than running its ops
# one by one. Masks are static (hashed by identity); state the core sows comes back out.
@functools.partial(nnx.jit, static_argnames=('mask', 'sow', 'deterministic'))
def run(core, q, k, v, score_mod=None, *, mask=None, sow=False, deterministic=True):
  return core(q, k, v, mask, score_mod=score_mod, sow_weights=sow, deterministic=deterministic)


@nnx.jit
def run_dense(core, q, k, v, mask, bias):
  return core(q, k, v, DenseMask(mask), score_mod=DenseBias(bias), sow_weights=True)


# --------------------------------------------------------------------------------------------
# The core against the reference.

@settings(max_examples=30, deadline=None)
@given(st.data())
def test_matches_float64_reference_with_random_masks_and_bias(data):
  batch, q_len, kv_len = data.draw(st.sampled_from([(1, 1, 1), (2, 5, 6), (1, 6, 3)]), 'shape')
  shape = (batch, NUM_HEADS, q_len, kv_len)
  mask = np.array(data.draw(st.lists(st.booleans(), min_size=int(np.prod(shape)),
                                     max_size=int(np.prod(shape))), 'mask')).reshape(shape)
  # Make fully masked rows common rather than lucky.
  empty_row = data.draw(st.integers(-1, q_len - 1), 'empty_row')
  if empty_row >= 0:
    mask[0, 0, empty_row] = False
  bias = np.random.default_rng(data.draw(st.integers(0, 1000), 'seed')).normal(
      size=(NUM_HEADS, q_len, kv_len)).astype(np.float32)
  q, k, v = random_qkv(data.draw(st.integers(0, 1000), 'qkv_seed'), batch, q_len, kv_len)
  core = make_core()
  out = run_dense(core, q, k, v, jnp.asarray(mask), jnp.asarray(bias))
  weights, expected = reference_attention(q, k, v, mask, bias[None])
  np.testing.assert_allclose(sown_weights(core), weights, atol=2e-6, rtol=1e-5)
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


def test_matches_reference_without_mask_and_with_structured_masks():
  q, k, v = random_qkv(0, 2, 7, 7)
  _, expected = reference_attention(q, k, v)
  np.testing.assert_allclose(run(make_core(), q, k, v), expected, atol=1e-5, rtol=1e-5)
  valid = np.array([[1] * 7, [1] * 4 + [0] * 3], bool)
  mask = masks.causal() & masks.local_window(2) & masks.padding(jnp.asarray(valid),
                                                                 jnp.asarray(valid))
  alibi = biases.alibi(NUM_HEADS)
  i, j = np.arange(7)[:, None], np.arange(7)[None, :]
  allowed = (j <= i) & (j >= i - 2) & valid[:, None, :, None] & valid[:, None, None, :]
  slopes = np.array([0.5 ** 4, 0.5 ** 8])[:, None, None]  # 2^(−8h/H) for H = 2
  _, expected = reference_attention(q, k, v, allowed, -slopes * (i - j))
  np.testing.assert_allclose(run(make_core(), q, k, v, alibi, mask=mask), expected,
                             atol=1e-5, rtol=1e-5)


def test_query_block_spans_skip_only_key_tiles_the_mask_forbids():
  assert query_block_spans(masks.causal(), 200, 200, 64) == [
      (0, 64, 0, 64), (64, 128, 0, 128), (128, 192, 0, 192), (192, 200, 0, 200)]
  assert query_block_spans(masks.local_window(10), 256, 256, 64)[2] == (128, 192, 64, 192)
  # Nothing to skip: no mask, one block, or a mask known only at run time.
  padding = masks.padding(None, jnp.ones((1, 200), bool))
  for mask, q_len in ((None, 200), (masks.causal(), 64), (padding, 200)):
    assert query_block_spans(mask, q_len, q_len, 64) is None


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the query-block path is CPU-only')
def test_cpu_query_blocks_match_the_reference_and_the_full_computation():
  # 150 queries: two blocks of 64 and a ragged one; the padded row 149 of example 1 sees nothing.
  length = 150
  q, k, v = random_qkv(9, 2, length, length)
  valid = np.ones((2, length), bool)
  valid[1, 140:] = False
  mask = masks.causal() & masks.padding(jnp.asarray(valid), jnp.asarray(valid))
  assert query_block_spans(mask, length, length, 64) is not None
  score_mod = biases.learnable(biases.alibi(NUM_HEADS), max_len=length)
  core = make_core()
  allowed = np.asarray(mask.dense(length, length))
  bias = np.asarray(biases.alibi(NUM_HEADS).dense(length, length, NUM_HEADS))
  _, expected = reference_attention(q, k, v, allowed, bias)
  np.testing.assert_allclose(run(core, q, k, v, score_mod, mask=mask), expected,
                             atol=1e-5, rtol=1e-5)

  def blocked(score_mod, q, k, v):
    return jnp.sum(jnp.sin(core(q, k, v, mask, score_mod=score_mod)))

  def full(score_mod, q, k, v):
    w = attention_weights(q, k, mask, score_mod)
    return jnp.sum(jnp.sin(weighted_values(w, v, jnp.float32)))

  grads = [nnx.jit(nnx.grad(f, argnums=(0, 1, 2, 3)))(score_mod, q, k, v) for f in (blocked, full)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    assert jnp.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_fully_masked_row_is_zero_with_finite_gradients():
  q, k, v = random_qkv(1, 1, 4, 4)
  allowed = np.tril(np.ones((4, 4), bool))
  allowed[2] = False  # query 2 sees nothing
  mask = masks.from_array(allowed)
  score_mod = biases.learnable(biases.alibi(NUM_HEADS), max_len=8)
  core = make_core()

  out = run(core, q, k, v, score_mod, mask=mask)
  assert (out[:, 2] == 0).all()

  def loss(score_mod, q, k, v):
    return jnp.sum(core(q, k, v, mask, score_mod=score_mod) ** 2)

  grads = nnx.jit(nnx.grad(loss, argnums=(0, 1, 2, 3)))(score_mod, q, k, v)
  for g in grads[1:]:
    assert jnp.isfinite(g).all()
  assert (grads[1][:, 2] == 0).all()  # the empty row does not pull on its query
  g = grads[0]['table'].value
  assert jnp.isfinite(g).all() and jnp.abs(g).sum() > 0
  assert (g[:, 2, :4] == 0).all()


def test_bfloat16_inputs_get_float32_weights():
  q, k, v = random_qkv(2, 2, 6, 6, jnp.bfloat16)
  mask = masks.causal()
  core = make_core()
  out = run(core, q, k, v, biases.alibi(NUM_HEADS), mask=mask, sow=True)
  w = sown_weights(core)
  assert w.dtype == jnp.float32 and out.dtype == jnp.bfloat16
  # On the bf16-rounded inputs the weights are float32-accurate, not bf16-accurate.
  weights, expected = reference_attention(q.astype(jnp.float32), k.astype(jnp.float32),
                                          v.astype(jnp.float32), np.asarray(mask.dense(6, 6)),
                                          np.asarray(biases.alibi(NUM_HEADS).dense(6, 6, 2)))
  np.testing.assert_allclose(w, weights, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out.astype(jnp.float32), expected, atol=2e-2, rtol=2e-2)


def test_sown_weights_are_the_probabilities():
  q, k, v = random_qkv(3, 1, 5, 5)
  core = make_core()
  allowed = np.tril(np.ones((5, 5), bool))
  allowed[0] = False
  run(core, q, k, v, mask=masks.from_array(allowed), sow=True)
  w = sown_weights(core)
  assert w.shape == (1, NUM_HEADS, 5, 5)
  np.testing.assert_allclose(w.sum(-1), np.broadcast_to(allowed.any(-1), (1, NUM_HEADS, 5)),
                             atol=1e-6)
  assert (np.asarray(w)[..., ~allowed] == 0).all()
  core(q, k, v)
  assert not nnx.pop(core, nnx.Intermediate)  # nothing sown unless asked


def test_attention_dropout_only_when_not_deterministic():
  q, k, v = random_qkv(4, 1, 6, 6)
  plain = run(make_core(), q, k, v)
  core = make_core(dropout=0.5)
  np.testing.assert_allclose(run(core, q, k, v), plain, rtol=1e-6)
  dropped = run(core, q, k, v, deterministic=False)
  assert jnp.isfinite(dropped).all() and not np.allclose(dropped, plain)


def test_attention_weights_function_is_the_xla_path():
  q, k, _ = random_qkv(5, 1, 3, 3)
  weights, _ = reference_attention(q, k, k, np.asarray(masks.causal().dense(3, 3)))
  np.testing.assert_allclose(attention_weights(q, k, masks.causal()), weights, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Implementations and their errors.

@pytest.mark.skipif(jax.default_backend() == 'gpu', reason='checks the error off GPU')
def test_cudnn_without_gpu_is_a_clear_error():
  with pytest.raises(ValueError, match='attention.impl=cudnn needs an NVIDIA GPU; this backend '
                     'is cpu; use attention.impl=xla'):
    make_core('cudnn')


def test_unsupported_impl_options_are_clear_errors():
  with pytest.raises(ValueError, match=r"attention.impl='triton'.*xla, cudnn, pallas, tokamax, auto"):
    make_core('triton')
  with pytest.raises(ValueError, match='attention.dropout=0.1.*cudnn'):
    make_core('cudnn', dropout=0.1)
  with pytest.raises(ValueError, match='attention.dropout=0.1.*pallas'):
    make_core('pallas', dropout=0.1)


@pytest.fixture
def cudnn_core_on_xla(monkeypatch):
  """The cudnn core with cuDNN replaced by the XLA kernel, to test its wrapping on any host."""
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  real = jax.nn.dot_product_attention

  def xla_instead(*args, implementation=None, **kwargs):
    assert implementation == 'cudnn'
    return real(*args, implementation='xla', **kwargs)

  monkeypatch.setattr(jax.nn, 'dot_product_attention', xla_instead)
  return make_core('cudnn')


def test_cudnn_wrapper_keeps_conventions(cudnn_core_on_xla):
  q, k, v = random_qkv(6, 2, 5, 5, jnp.bfloat16)
  allowed = np.tril(np.ones((5, 5), bool))
  allowed[3] = False
  mask = masks.from_array(allowed) & masks.padding(None, jnp.array([[1] * 5, [1] * 4 + [0]],
                                                                   bool))
  alibi = biases.alibi(NUM_HEADS)
  out = run(cudnn_core_on_xla, q, k, v, alibi, mask=mask, sow=True)
  assert (out[:, 3] == 0).all()  # not the mean of v, as cuDNN alone would give
  expected = run(make_core(), q, k, v, alibi, mask=mask)
  np.testing.assert_allclose(out.astype(jnp.float32), expected.astype(jnp.float32), atol=3e-2)
  assert sown_weights(cudnn_core_on_xla).shape == (2, NUM_HEADS, 5, 5)


def test_cudnn_refuses_what_it_cannot_run(cudnn_core_on_xla):
  q, k, v = random_qkv(7, 1, 3, 3, jnp.bfloat16)
  with pytest.raises(ValueError, match='attention.bias: multiplicative'):
    cudnn_core_on_xla(q, k, v, score_mod=biases.multiplicative(np.ones((3, 3))))
  with pytest.raises(ValueError, match='bfloat16 or float16'):
    cudnn_core_on_xla(*random_qkv(7, 1, 3, 3))


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs an NVIDIA GPU')
def test_cudnn_matches_xla_on_gpu():
  q, k, v = random_qkv(8, 2, 128, 128, jnp.bfloat16)
  q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
  allowed = np.tril(np.ones((128, 128), bool))
  allowed[5] = False
  mask = masks.from_array(allowed)
  for score_mod in (None, biases.alibi(NUM_HEADS), biases.learnable(biases.alibi(NUM_HEADS),
                                                                    max_len=128)):
    out = make_core('cudnn')(q, k, v, mask, score_mod=score_mod)
    expected = make_core('xla')(q, k, v, mask, score_mod=score_mod)
    assert (out[:, 5] == 0).all()
    np.testing.assert_allclose(out.astype(jnp.float32), expected.astype(jnp.float32),
                               atol=3e-2)
    grads = jax.grad(lambda q: jnp.sum(make_core('cudnn')(q, k, v, mask, score_mod=score_mod)
                                       .astype(jnp.float32) ** 2))(q)
    assert jnp.isfinite(grads.astype(jnp.float32)).all()


# --------------------------------------------------------------------------------------------
# Score mods.

def brute_force_bias(definition, num_heads, q_len, kv_len, q_offset=0, kv_offset=0):
  return np.array([[[definition(h, q_offset + i, kv_offset + j) for j in range(kv_len)]
                    for i in range(q_len)] for h in range(num_heads)])[None]


def test_alibi_slopes_follow_the_paper():
  assert biases.alibi_slopes(8) == tuple(2.0 ** -h for h in range(1, 9))  # 1/2 … 1/256
  # 12 heads: the 8-head slopes, then the odd-indexed slopes of the 16-head sequence.
  assert biases.alibi_slopes(12) == pytest.approx(
      [2.0 ** -h for h in range(1, 9)] + [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5, 2.0 ** -3.5])
  assert biases.alibi_slopes(1) == (2.0 ** -8,)
  with pytest.raises(ValueError, match='num_heads'):
    biases.alibi_slopes(0)


@pytest.mark.parametrize('mod, definition', [
    (biases.alibi(3), lambda h, i, j: -biases.alibi_slopes(3)[h] * (i - j)),
    (biases.alibi(3, bidirectional=True),
     lambda h, i, j: -biases.alibi_slopes(3)[h] * abs(i - j)),
    (biases.distance_decay(0.5), lambda h, i, j: -0.5 * np.log1p(abs(i - j))),
    (biases.distance_decay(0.25, 'linear'), lambda h, i, j: -0.25 * abs(i - j)),
    (biases.gaussian_window(2.0), lambda h, i, j: -((i - j) ** 2) / 8.0),
], ids=['alibi', 'alibi_bidirectional', 'decay_log', 'decay_linear', 'gaussian'])
def test_parametric_biases_match_their_definitions(mod, definition):
  expected = brute_force_bias(definition, 3, 4, 6)
  dense = mod.dense(4, 6, 3)
  assert dense.shape == (1, 3, 4, 6) and dense.dtype == jnp.float32
  np.testing.assert_allclose(dense, expected, rtol=1e-6, atol=1e-6)
  # Offsets place the block in absolute positions, also when traced (KV-cache decoding).
  shifted = brute_force_bias(definition, 3, 2, 6, q_offset=4)
  scores = jnp.zeros((1, 3, 2, 6))
  np.testing.assert_allclose(mod(scores, q_offset=4), shifted, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.jit(lambda o: mod(scores, q_offset=o))(4), shifted,
                             rtol=1e-6, atol=1e-6)


def test_array_prior_of_probabilities_is_finite_log():
  p = np.array([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
  b = biases.from_array(p, probabilities=True, eps=1e-6).dense(2, 3, 1)[0, 0]
  assert jnp.isfinite(b).all()
  np.testing.assert_allclose(b, np.log(p + 1e-6), rtol=1e-6)
  with pytest.raises(ValueError, match='≥ 0'):
    biases.from_array(-p, probabilities=True)
  with pytest.raises(ValueError, match='eps'):
    biases.from_array(p, probabilities=True, eps=0.0)
  with pytest.raises(ValueError, match='NaN'):
    biases.from_array(np.array([[np.nan]]))
  with pytest.raises(ValueError, match='covers 2 query'):
    biases.from_array(p).dense(3, 3, 1)


def test_load_prior_from_npy(tmp_path):
  prior = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
  np.save(tmp_path / 'p.npy', prior)
  np.testing.assert_allclose(biases.load(str(tmp_path / 'p.npy')).dense(3, 4, 2)[0],
                             prior[:, :3], rtol=1e-6)
  with pytest.raises(FileNotFoundError, match='q.npy'):
    biases.load(str(tmp_path / 'q.npy'))
  with pytest.raises(ValueError, match='heads'):
    biases.load(str(tmp_path / 'p.npy')).dense(3, 4, 3)


def test_fixed_priors_are_not_model_state():
  for mod in (biases.alibi(4), biases.from_array(np.ones((3, 3))), biases.gaussian_window(2.0)):
    assert not jax.tree.leaves(nnx.state(mod))


def test_multiplicative_zero_does_not_block_attention():
  """The documented caveat, as a property: M = 0 makes a score 0, which still gets weight."""
  q, k, v = random_qkv(9, 1, 4, 4)
  zeros = biases.multiplicative(np.zeros((4, 4)))
  core = make_core()
  run(core, q, k, v, zeros, sow=True)
  w = sown_weights(core)
  np.testing.assert_allclose(w, 0.25, rtol=1e-6)  # all scores 0 → uniform, nothing blocked
  factor = np.random.default_rng(1).normal(size=(4, 4))
  run(core, q, k, v, biases.multiplicative(factor), sow=True)
  np.testing.assert_allclose(sown_weights(core), reference_attention(q, k, v, factor=factor)[0],
                             atol=2e-6, rtol=1e-5)
  assert not zeros.additive


def test_learnable_starts_at_its_prior_and_learns():
  prior = biases.gaussian_window(3.0)
  mod = biases.learnable(prior, max_len=8, num_heads=NUM_HEADS)
  table = nnx.state(mod, nnx.Param)['table'].value
  assert table.shape == (NUM_HEADS, 8, 8) and table.dtype == jnp.float32
  np.testing.assert_allclose(mod.dense(5, 6, NUM_HEADS), prior.dense(5, 6, NUM_HEADS))
  q, k, v = random_qkv(10, 1, 5, 5)
  core = make_core()
  grads = nnx.jit(nnx.grad(
      lambda m: jnp.sum(core(q, k, v, masks.causal(), score_mod=m)[..., 0])))(mod)
  assert jnp.abs(grads['table'].value).sum() > 0
  with pytest.raises(ValueError, match='max_len=8'):
    mod.dense(9, 9, NUM_HEADS)
  with pytest.raises(ValueError, match='num_heads'):
    biases.learnable(prior, max_len=8)


def test_learnable_alibi_trains_its_slopes():
  mod = biases.learnable_alibi(NUM_HEADS)
  np.testing.assert_allclose(nnx.state(mod, nnx.Param)['learned_slopes'].value,
                             biases.alibi_slopes(NUM_HEADS))
  np.testing.assert_allclose(mod.dense(4, 4, NUM_HEADS),
                             biases.alibi(NUM_HEADS).dense(4, 4, NUM_HEADS))
  q, k, v = random_qkv(11, 1, 4, 4)
  core = make_core()
  grads = nnx.jit(nnx.grad(
      lambda m: jnp.sum(core(q, k, v, masks.causal(), score_mod=m)[..., 0])))(mod)
  assert jnp.abs(grads['learned_slopes'].value).sum() > 0


def test_learnable_params_live_in_the_owning_module():
  class Layer(nnx.Module):

    def __init__(self):
      self.score_mod = biases.parse('alibi() + learnable(gaussian_window(4))',
                                    num_heads=NUM_HEADS, max_len=6, rngs=nnx.Rngs(0))

  params = jax.tree.leaves(nnx.state(Layer(), nnx.Param))
  assert [p.shape for p in params] == [(NUM_HEADS, 6, 6)]


def test_sum_of_mods_applies_them_in_order():
  scores = jax.random.normal(jax.random.key(0), (1, NUM_HEADS, 3, 5))
  alibi, decay = biases.alibi(NUM_HEADS), biases.distance_decay(0.5)
  both = alibi + decay
  np.testing.assert_allclose(both(scores), scores + alibi.dense(3, 5, 2) + decay.dense(3, 5, 2),
                             rtol=1e-6)
  np.testing.assert_allclose(both.dense(3, 5, 2), alibi.dense(3, 5, 2) + decay.dense(3, 5, 2))
  assert sum([alibi, decay]).additive
  factor = np.full((3, 5), 2.0)
  scaled_then_shifted = biases.multiplicative(factor) + alibi
  np.testing.assert_allclose(scaled_then_shifted(scores), 2.0 * scores + alibi.dense(3, 5, 2),
                             rtol=1e-6)
  assert not scaled_then_shifted.additive


# --------------------------------------------------------------------------------------------
# Config expressions.

def parse(spec, max_len=16):
  return biases.parse(spec, num_heads=NUM_HEADS, max_len=max_len, rngs=nnx.Rngs(0))


@pytest.mark.parametrize('spec, built', [
    ('alibi()', lambda: biases.alibi(NUM_HEADS)),
    ('alibi(bidirectional=True)', lambda: biases.alibi(NUM_HEADS, bidirectional=True)),
    ('learnable(gaussian_window(8))',
     lambda: biases.learnable(biases.gaussian_window(8), 16, num_heads=NUM_HEADS)),
    ('alibi() + distance_decay(0.5)',
     lambda: biases.alibi(NUM_HEADS) + biases.distance_decay(0.5)),
    ("distance_decay(0.5, form='linear')", lambda: biases.distance_decay(0.5, 'linear')),
    ('learnable_alibi()', lambda: biases.learnable_alibi(NUM_HEADS)),
    ('from_array([[0.0, 1.0], [2.0, 3.0]])', lambda: biases.from_array([[0.0, 1.0], [2, 3]])),
])
def test_parse_builds_what_the_constructors_build(spec, built):
  np.testing.assert_allclose(parse(spec).dense(2, 2, NUM_HEADS),
                             built().dense(2, 2, NUM_HEADS), rtol=1e-6)


def test_parse_multiplicative_and_files(tmp_path):
  np.save(tmp_path / 'm.npy', np.full((3, 3), 2.0))
  mod = parse(f"multiplicative(load({str(tmp_path / 'm.npy')!r}))")
  assert not mod.additive
  scores = jnp.ones((1, NUM_HEADS, 3, 3))
  np.testing.assert_allclose(mod(scores), 2.0 * scores)
  prob = parse(f"load({str(tmp_path / 'm.npy')!r}, probabilities=True)")
  np.testing.assert_allclose(prob.dense(3, 3, 1), np.log(2.0 + 1e-6), rtol=1e-6)


@pytest.mark.parametrize('spec', ['', '  ', None])
def test_parse_empty_is_no_bias(spec):
  assert parse(spec) is None


@pytest.mark.parametrize('spec, token', [
    ("__import__('os')", "'__import__'"),
    ("np.ones((2, 2))", "'np.ones'"),
    ('alibi() & alibi()', "'&'"),
    ('alibi(x)', "'x'"),
    ('1.5', "'1.5'"),
    ('learnable(open("f"))', "'open'"),
])
def test_parse_rejects_everything_but_whitelisted_calls(spec, token):
  with pytest.raises(ValueError) as e:
    parse(spec)
  assert token in str(e.value) and 'gaussian_window' in str(e.value)


def test_parse_explains_injected_arguments_and_bad_values():
  with pytest.raises(ValueError, match='num_heads and max_len come from the model'):
    parse('alibi(8)')
  with pytest.raises(ValueError, match='sigma'):
    parse('gaussian_window(0)')
  with pytest.raises(ValueError, match="'log' or 'linear'"):
    parse("distance_decay(1.0, form='cubic')")


def test_tokamax_arguments_map_the_mask_library():
  from attention.softmax import tokamax_arguments
  valid = jnp.array([[1, 1, 1, 0]], bool)
  args = tokamax_arguments(masks.causal() & masks.local_window(2) & masks.padding(None, valid),
                           4, 4)
  assert args['is_causal'] and args['local_window_size'] == (2, 0)
  np.testing.assert_array_equal(args['mask'], masks.padding(None, valid).dense(4, 4))
  assert tokamax_arguments(None, 4, 4) == {'is_causal': False}
  other = tokamax_arguments(masks.local_window(1, 1) | masks.global_tokens([0]), 4, 4)
  assert not other['is_causal'] and other['mask'].shape == (1, 1, 4, 4)


def test_impl_tokamax_is_refused_on_cpu():
  with pytest.raises(ValueError, match='attention.impl=tokamax needs a GPU or a TPU.*cpu'):
    make_core('tokamax')


def test_tokamax_path_equals_xla(monkeypatch):
  """tokamax's own dispatch (its xla implementation on this CPU) with our mask mapping, bias
  and empty-row convention; skipped where the optional package is not installed."""
  pytest.importorskip('tokamax', reason='tokamax is optional (GPU install line)')
  from attention.softmax import tokamax_attention
  q, k, v = random_qkv(6, 2, 9, 9)
  allowed = np.tril(np.ones((9, 9), bool))
  allowed[4] = False
  mask = masks.causal() & masks.local_window(4) & masks.from_array(allowed)
  want = make_core('xla')(q, k, v, mask, score_mod=biases.alibi(NUM_HEADS))
  got = tokamax_attention(q, k, v, mask, biases.alibi(NUM_HEADS))
  np.testing.assert_allclose(got, want, atol=1e-6)
