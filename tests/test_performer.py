"""Tests for the Performer core (attention/performer.py) against float64 NumPy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import attention.performer  # registers attention.kind=performer
from attention import biases, masks
from attention.performer import (PerformerAttention, RandomFeatures, draw_projection,
                                 gaussian_orthogonal_projection, linear_attention,
                                 relu_features, softmax_feature_parts, softmax_features)
from configs.common import attention_config

NUM_HEADS = 2
HEAD_DIM = 8


def key(seed):
  # The 'rbg' PRNG compiles several times faster than threefry on CPU (as in test_models.py);
  # the projections do not depend on the key implementation.
  return jax.random.key(seed, impl='rbg')


def make_config(**options):
  config = attention_config()
  config.kind = 'performer'
  performer = PerformerAttention.default_config().to_dict()
  for key, value in options.items():
    if key in ('dropout', 'impl'):
      config[key] = value
    else:
      performer[key] = value
  # A fresh ConfigDict, so that options of the wrong type reach the core's own validation.
  config.performer = ml_collections.ConfigDict(performer)
  return config


def make_core(layer_index=0, seed=0, **options):
  return PerformerAttention(num_heads=NUM_HEADS, head_dim=HEAD_DIM, config=make_config(**options),
                            layer_index=layer_index,
                            rngs=nnx.Rngs(params=key(seed), dropout=key(seed + 1)))


def random_qkv(seed, batch=2, q_len=11, kv_len=11, scale=1.0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(scale * rng.normal(size=(batch, n, NUM_HEADS, HEAD_DIM)), jnp.float32)
               for n in (q_len, kv_len, kv_len))


def reference_linear_attention(q_feat, k_feat, v, *, causal, valid_k=None, k_log_scale=None):
  """out_i = Σ_j w_ij v_j / Σ_j w_ij, w_ij = exp(l_j)·q′_i·k′_j on allowed keys; 0 if none."""
  q, k, v = (np.asarray(x, np.float64) for x in (q_feat, k_feat, v))
  batch, q_len, heads, _ = q.shape
  kv_len = k.shape[1]
  log_scale = (np.zeros((batch, kv_len, heads)) if k_log_scale is None
               else np.asarray(k_log_scale, np.float64))
  allowed = np.ones((batch, q_len, kv_len), bool)
  if valid_k is not None:
    allowed &= np.asarray(valid_k)[:, None, :]
  if causal:
    allowed &= np.arange(q_len)[:, None] >= np.arange(kv_len)[None, :]
  out = np.zeros((batch, q_len, heads, v.shape[-1]))
  for b in range(batch):
    for n in range(heads):
      for i in range(q_len):
        keep = allowed[b, i]
        if not keep.any():
          continue
        l = log_scale[b, keep, n]
        w = np.exp(l - l.max()) * (k[b, keep, n] @ q[b, i, n])
        out[b, i, n] = w @ v[b, keep, n] / w.sum()
  return out


def reference_softmax_features(x, w, eps=1e-4):
  """(features, log_scale) in float64, φ(x) = exp(log_scale)·features = m^(−1/2)(eᵉ + ε·e^max e)."""
  x = np.asarray(x, np.float64) * x.shape[-1] ** -0.25
  w = np.asarray(w, np.float64)
  e = np.einsum('btnd,md->btnm', x, w) - 0.5 * np.sum(x * x, -1, keepdims=True)
  s = e.max(-1)
  return w.shape[0] ** -0.5 * (np.exp(e - s[..., None]) + eps), s


def exact_softmax_attention(q, k, v, causal=False):
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  s = np.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(q.shape[-1])
  if causal:
    s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum('bnts,bsnh->btnh', p, v)


def jitted(core, mask=None):
  """`core(q, k, v, mask)` compiled once (the core is not mutated by these calls)."""
  return jax.jit(lambda q, k, v: core(q, k, v, mask))


def sown_weights(core):
  (w,) = nnx.pop(core, nnx.Intermediate)['attention_weights'].get_value()
  return w


# ------------------------------------------------------------------------------------------
# Projections and features.

@pytest.mark.parametrize('scaling', ['chi', 'sqrt_d'])
def test_orthogonal_projection_has_orthogonal_blocks(scaling):
  d, m = 6, 15                                  # two full blocks and a remainder of 3 rows
  w = np.asarray(gaussian_orthogonal_projection(key(0), m, d, scaling=scaling))
  assert w.shape == (m, d) and w.dtype == np.float32
  norms = np.linalg.norm(w, axis=1)
  for block in (w[:6], w[6:12], w[12:]):
    gram = block @ block.T
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-5)
  # Rows of different blocks are independent, hence not orthogonal.
  assert np.abs(w[:6] @ w[6:12].T).max() > 0.1
  if scaling == 'sqrt_d':
    np.testing.assert_allclose(norms, np.sqrt(d), rtol=1e-5)
  else:
    assert norms.std() > 0.1                   # χ_d-distributed lengths, not all equal
  iid = np.asarray(draw_projection(key(0), m, d, orthogonal=False))
  gram = iid[:6] @ iid[:6].T
  assert np.abs(gram - np.diag(np.diag(gram))).max() > 0.1


@pytest.mark.parametrize('orthogonal', [True, False])
def test_softmax_features_are_unbiased(orthogonal):
  """E[φ(x)·φ(y)] = exp(x·y/√d): the mean over 4000 projections lies within 4 standard errors."""
  d = 4
  rng = np.random.default_rng(1)
  x, y = (jnp.asarray(0.6 * rng.normal(size=(1, 1, 1, d)), jnp.float32) for _ in range(2))
  keys = jax.random.split(key(2), 4000)

  def estimate(key):
    w = draw_projection(key, d, d, orthogonal=orthogonal)
    (fx, sx), (fy, sy) = (softmax_feature_parts(z, w, eps=0.0) for z in (x, y))
    return jnp.sum(fx * fy) * jnp.exp(sx + sy).squeeze()

  samples = np.asarray(jax.jit(jax.vmap(estimate))(keys), np.float64)
  target = np.exp(float(np.sum(np.asarray(x) * np.asarray(y))) / np.sqrt(d))
  stderr = samples.std() / np.sqrt(len(samples))
  assert abs(samples.mean() - target) < 4 * stderr, (samples.mean(), target, stderr)


def test_softmax_features_match_float64_reference():
  q, k, _ = random_qkv(0, q_len=5, kv_len=7, scale=2.0)
  w = draw_projection(key(3), 12, HEAD_DIM)
  valid = np.array([[1, 1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0, 0]], bool)
  got_q, got_k, (parts, log_scale) = jax.jit(lambda q, k, w: (
      softmax_features(q, w, is_query=True),
      softmax_features(k, w, is_query=False, valid=jnp.asarray(valid)),
      softmax_feature_parts(k, w)))(q, k, w)
  ref_q, _ = reference_softmax_features(q, w)
  np.testing.assert_allclose(got_q, ref_q, rtol=1e-5, atol=1e-7)
  ref_k, s = reference_softmax_features(k, w)
  # Keys share one scale per (batch, head): the max over the valid positions; padded keys 0.
  s = np.where(valid[:, :, None], s, -np.inf)
  c = s.max(axis=1, keepdims=True)
  scale = np.where(valid[:, :, None], np.exp(s - np.where(np.isfinite(c), c, 0)), 0.0)
  np.testing.assert_allclose(got_k, ref_k * scale[..., None], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(parts, ref_k, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(log_scale, reference_softmax_features(k, w)[1], rtol=1e-5, atol=1e-5)


def test_relu_features_match_reference():
  q, _, _ = random_qkv(0, q_len=5)
  w = draw_projection(key(3), 12, HEAD_DIM)
  x = np.asarray(q, np.float64) * HEAD_DIM ** -0.25
  ref = np.maximum(np.einsum('btnd,md->btnm', x, np.asarray(w, np.float64)), 0) + 1e-3
  np.testing.assert_allclose(relu_features(q, w), ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(relu_features(q, None, normalize=False),
                             np.maximum(np.asarray(q), 0) + 1e-3, rtol=1e-6)


def test_approximation_error_shrinks_as_features_grow():
  """The FAVOR+ estimate converges to softmax attention: mean error over 8 seeds drops with m."""
  d = 16
  rng = np.random.default_rng(0)
  q, k, v = (0.5 * rng.normal(size=(1, 24, 1, d)) for _ in range(3))
  exact = exact_softmax_attention(q, k, v)
  qj, kj, vj = (jnp.asarray(x, jnp.float32) for x in (q, k, v))

  sizes = (16, 64, 256, 1024)

  def estimates(key):
    # The first m rows of an ORF projection are an ORF projection with m rows.
    w_all = gaussian_orthogonal_projection(key, sizes[-1], d)
    outs = []
    for m in sizes:
      k_feat, k_log_scale = softmax_feature_parts(kj, w_all[:m])
      outs.append(linear_attention(softmax_features(qj, w_all[:m], is_query=True), k_feat, vj,
                                   causal=False, k_log_scale=k_log_scale))
    return jnp.stack(outs)

  outs = jax.jit(jax.vmap(estimates))(jax.random.split(key(0), 8))  # [seed, m, ...]
  errors = np.abs(np.asarray(outs, np.float64) - exact).mean(axis=(0, 2, 3, 4, 5))
  # The error is O(m^(−1/2)): a ratio of about 0.5 per 4× features; 0.8 leaves a margin.
  for smaller, larger in zip(errors, errors[1:]):
    assert larger < 0.8 * smaller, errors
  assert errors[-1] < 0.3 * errors[0], errors


# ------------------------------------------------------------------------------------------
# Linear attention given features.

def random_features(seed, batch=2, q_len=11, kv_len=11, m=5, h=3):
  rng = np.random.default_rng(seed)
  q = rng.uniform(0.05, 1.0, size=(batch, q_len, NUM_HEADS, m))
  k = rng.uniform(0.05, 1.0, size=(batch, kv_len, NUM_HEADS, m))
  v = rng.normal(size=(batch, kv_len, NUM_HEADS, h))
  return tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v))


@pytest.mark.parametrize('causal, chunk_size, log_scale_range, q_len', [
    (False, 64, None, 11), (False, 64, 80.0, 7), (True, 3, None, 11), (True, 3, 80.0, 11),
    (True, 4, 80.0, 7), (True, 64, 80.0, 11)])
def test_linear_attention_matches_float64_reference(causal, chunk_size, log_scale_range, q_len):
  """Padding (one example fully padded), chunks that do not divide T, T ≠ S, and key
  log-scales that overflow float32 if exponentiated directly (exp(80) > 3e38 once multiplied)."""
  q, k, v = random_features(0, q_len=q_len)
  valid_k = np.ones((2, 11), bool)
  valid_k[0, [0, 3, 4, 9]] = False
  valid_k[1] = False
  log_scale = None
  if log_scale_range is not None:
    log_scale = np.random.default_rng(1).uniform(-log_scale_range, log_scale_range, (2, 11, 2))
  out = linear_attention(q, k, v, causal=causal, valid_k=jnp.asarray(valid_k),
                         chunk_size=chunk_size,
                         k_log_scale=None if log_scale is None else jnp.asarray(log_scale))
  ref = reference_linear_attention(q, k, v, causal=causal, valid_k=valid_k,
                                   k_log_scale=log_scale)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-6)
  assert np.all(np.asarray(out)[1] == 0)        # no valid key: exact zeros


def test_causal_linear_attention_leaks_nothing_from_the_future():
  """Future keys with a huge log-scale (a sequence-wide max would underflow every earlier key
  to zero) and changed features/values leave earlier outputs bit-for-bit unchanged."""
  q, k, v = random_features(13, q_len=10, kv_len=10)
  log_scale = jnp.zeros((2, 10, NUM_HEADS))
  t0 = 5                                           # inside the second chunk of 4
  later = (jnp.arange(10) >= t0)[None, :, None]
  run = jax.jit(lambda q, k, v, l: linear_attention(q, k, v, causal=True, chunk_size=4,
                                                    k_log_scale=l))
  out = run(q, k, v, log_scale)
  out2 = run(jnp.where(later[..., None], 2 * q, q), jnp.where(later[..., None], 3 * k, k),
             jnp.where(later[..., None], v + 1, v), jnp.where(later, 200.0, log_scale))
  np.testing.assert_array_equal(out2[:, :t0], out[:, :t0])
  assert not np.allclose(out2[:, t0:], out[:, t0:])


def naive_causal_linear_attention(q, k, v, valid_k):
  """The textbook prefix sum: stores G_i = Σ_{j≤i} K′_j V_jᵀ for every i ([T, m, H])."""
  mask = valid_k[:, :, None, None]
  k, v = jnp.where(mask, k, 0.0), jnp.where(mask, v, 0.0)
  g = jnp.cumsum(jnp.einsum('btnm,btnh->btnmh', k, v), axis=1)
  z = jnp.cumsum(k, axis=1)
  num = jnp.einsum('btnm,btnmh->btnh', q, g)
  den = jnp.einsum('btnm,btnm->btn', q, z)
  sees = (jnp.cumsum(valid_k, axis=1) > 0)[:, :, None]
  return jnp.where(sees[..., None], num / jnp.where(sees, den, 1.0)[..., None], 0.0)


def test_causal_backward_matches_naive_cumsum():
  q, k, v = random_features(3)
  valid_k = np.ones((2, 11), bool)
  valid_k[0, :3] = False                          # the first queries of example 0 see nothing
  valid_k[1, 6] = False
  valid_k = jnp.asarray(valid_k)
  cotangent = jnp.asarray(np.random.default_rng(4).normal(size=(2, 11, NUM_HEADS, 3)),
                          jnp.float32)

  def value_and_grads(fn):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)

  value, got = value_and_grads(
      lambda q, k, v: linear_attention(q, k, v, causal=True, valid_k=valid_k, chunk_size=4))
  want_value, want = value_and_grads(
      lambda q, k, v: naive_causal_linear_attention(q, k, v, valid_k))
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for g, w in zip(got, want):
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_causal_memory_is_linear_in_length():
  """Compiled temporary memory of the causal backward: ~4× for 4× the length (16× would be
  quadratic), and far below the [T, m, H] prefix tensor a naive cumsum keeps."""
  m, h, chunk = 64, 32, 32

  def temp_bytes(length):
    shapes = [(1, length, 1, m), (1, length, 1, m), (1, length, 1, h)]
    args = [jnp.ones(s, jnp.float32) for s in shapes]
    grad_fn = jax.grad(lambda q, k, v: jnp.sum(linear_attention(q, k, v, causal=True,
                                                                chunk_size=chunk)),
                       argnums=(0, 1, 2))
    stats = jax.jit(grad_fn).lower(*args).compile().memory_analysis()
    if stats is None or not hasattr(stats, 'temp_size_in_bytes'):
      pytest.skip('compiled memory_analysis is unavailable on this backend')
    return stats.temp_size_in_bytes

  short, long = temp_bytes(256), temp_bytes(1024)
  assert long < 6 * short, (short, long)
  assert long < 0.5 * 1024 * m * h * 4, long


# ------------------------------------------------------------------------------------------
# The core.

def causal_padding_mask(valid):
  return masks.causal() & masks.padding(jnp.asarray(valid), jnp.asarray(valid))


@pytest.mark.parametrize('kernel', ['softmax', 'relu'])
@pytest.mark.parametrize('causal', [False, True])
def test_core_matches_float64_reference(kernel, causal):
  core = make_core(kernel=kernel, chunk_size=4, num_features=12)
  q, k, v = random_qkv(5, scale=1.5)
  valid = np.ones((2, 11), bool)
  valid[0, 7:] = False
  mask = (masks.causal() if causal else None) & masks.padding(jnp.asarray(valid),
                                                              jnp.asarray(valid))
  out = jitted(core, mask)(q, k, v)
  w = np.asarray(core.projection[...], np.float64)
  assert w.shape == (12, HEAD_DIM)
  if kernel == 'softmax':
    q_feat = reference_softmax_features(q, w)[0]
    k_feat, log_scale = reference_softmax_features(k, w)
  else:
    scale = HEAD_DIM ** -0.25
    q_feat, k_feat = (np.maximum(np.einsum('btnd,md->btnm', np.asarray(x, np.float64) * scale, w),
                                 0) + 1e-3 for x in (q, k))
    log_scale = None
  ref = reference_linear_attention(q_feat, k_feat, v, causal=causal, valid_k=valid,
                                   k_log_scale=log_scale)
  ref = np.where(valid[:, :, None, None], ref, 0.0)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('kernel', ['softmax', 'relu'])
def test_causal_core_leaks_nothing_from_the_future(kernel):
  core = make_core(kernel=kernel, chunk_size=4)
  q, k, v = random_qkv(6, q_len=13, kv_len=13)
  t0 = 6
  later = (jnp.arange(13) >= t0)[None, :, None, None]
  # Large future keys move any sequence-wide max; the output before t0 must not notice.
  q2, k2, v2 = (jnp.where(later, 5.0 * x + 1.0, x) for x in (q, k, v))
  run = jitted(core, masks.causal())
  out, out2 = run(q, k, v), run(q2, k2, v2)
  np.testing.assert_allclose(out2[:, :t0], out[:, :t0], rtol=1e-6, atol=1e-7)
  assert not np.allclose(out2[:, t0:], out[:, t0:])


def test_padding_fully_masked_rows_are_zero_with_finite_grads():
  core = make_core(chunk_size=4)
  q, k, v = random_qkv(7)
  valid = np.ones((2, 11), bool)
  valid[0, 8:] = False
  valid[1] = False                                # an example with no valid token
  run = jitted(core, causal_padding_mask(valid))
  out = run(q, k, v)
  assert np.all(np.asarray(out)[0, 8:] == 0) and np.all(np.asarray(out)[1] == 0)
  # Padded keys and values, however large, do not reach the valid queries.
  pad = jnp.asarray(~valid)[:, :, None, None]
  k2, v2 = jnp.where(pad, 1e4, k), jnp.where(pad, 1e6, v)
  np.testing.assert_allclose(run(q, k2, v2), out, rtol=1e-6, atol=1e-7)
  grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(run(q, k, v) ** 2), argnums=(0, 1, 2)))(q, k, v)
  for g in grads:
    assert np.all(np.isfinite(g))
  assert np.all(np.asarray(grads[0])[1] == 0)


def test_sown_weights_are_the_implied_attention_matrix():
  core = make_core(chunk_size=4)
  q, k, v = random_qkv(8)
  valid = np.ones((2, 11), bool)
  valid[1, 5:] = False
  mask = causal_padding_mask(valid)
  out = nnx.jit(lambda core, q, k, v: core(q, k, v, mask, sow_weights=True))(core, q, k, v)
  w = np.asarray(sown_weights(core), np.float64)
  assert w.shape == (2, NUM_HEADS, 11, 11)
  assert np.all(w[..., np.triu_indices(11, 1)[0], np.triu_indices(11, 1)[1]] == 0)
  assert np.all(w[1, :, :, 5:] == 0) and np.all(w[1, :, 5:, :] == 0)
  sums = w.sum(-1)
  np.testing.assert_allclose(sums[0], 1, rtol=1e-5)
  np.testing.assert_allclose(sums[1, :, :5], 1, rtol=1e-5)
  np.testing.assert_allclose(np.einsum('bnts,bsnh->btnh', w, np.asarray(v, np.float64)), out,
                             rtol=1e-4, atol=1e-5)


def test_bfloat16_inputs():
  core = make_core(chunk_size=4)
  q, k, v = (x.astype(jnp.bfloat16) for x in random_qkv(9))
  out = jitted(core, masks.causal())(q, k, v)
  assert out.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(out, np.float32)))


# ------------------------------------------------------------------------------------------
# Projection state and redrawing.

def test_projection_is_state_not_a_parameter():
  core = make_core(num_features=10)
  assert isinstance(core.projection, RandomFeatures)
  assert not isinstance(core.projection, nnx.Param)
  assert jax.tree.leaves(nnx.state(core, nnx.Param)) == []
  assert core.projection[...].shape == (10, HEAD_DIM)
  # Drawn from the params stream: the same seed gives the same ω, another seed another.
  np.testing.assert_array_equal(make_core(num_features=10).projection[...], core.projection[...])
  assert not np.allclose(make_core(num_features=10, seed=5).projection[...],
                         core.projection[...])
  # The default m is int(d·ln d).
  assert make_core().projection[...].shape == (int(HEAD_DIM * np.log(HEAD_DIM)), HEAD_DIM)


def test_redraw_never_keeps_the_projection_in_training():
  core = make_core(redraw='never')
  q, k, v = random_qkv(10)
  evaluation = core(q, k, v)
  np.testing.assert_array_equal(core(q, k, v, deterministic=False), evaluation)


def test_redraw_every_step_follows_the_dropout_stream():
  q, k, v = random_qkv(11)
  core = make_core(redraw='every_step', num_features=6)
  evaluation = core(q, k, v)
  np.testing.assert_array_equal(core(q, k, v), evaluation)        # the stored ω at evaluation
  nnx.reseed(core, dropout=3)
  first = core(q, k, v, deterministic=False)
  second = core(q, k, v, deterministic=False)
  assert not np.allclose(first, evaluation) and not np.allclose(first, second)
  nnx.reseed(core, dropout=3)                     # what the trainer does each step
  np.testing.assert_array_equal(core(q, k, v, deterministic=False), first)
  # Layers reseeded with the same key still draw different features.
  other = make_core(redraw='every_step', num_features=6, layer_index=1)
  nnx.reseed(other, dropout=3)
  assert not np.allclose(other(q, k, v, deterministic=False), first)


# ------------------------------------------------------------------------------------------
# Errors.

@pytest.mark.parametrize('options, match', [
    ({'dropout': 0.1}, 'attention.dropout'),
    ({'impl': 'cudnn'}, 'attention.impl'),
    ({'num_features': -1}, 'attention.performer.num_features'),
    ({'num_features': 2.5}, 'attention.performer.num_features'),
    ({'kernel': 'cosine'}, 'attention.performer.kernel'),
    ({'scaling': 'unit'}, 'attention.performer.scaling'),
    ({'redraw': 'sometimes'}, 'attention.performer.redraw'),
    ({'orthogonal': 'yes'}, 'attention.performer.orthogonal'),
    ({'chunk_size': 0}, 'attention.performer.chunk_size'),
])
def test_config_errors(options, match):
  with pytest.raises(ValueError, match=match):
    make_core(**options)


def test_unsupported_masks_and_score_mods_are_refused():
  core = make_core()
  q, k, v = random_qkv(12)
  with pytest.raises(ValueError, match='attention.bias'):
    core(q, k, v, masks.causal(), score_mod=biases.alibi(NUM_HEADS))
  with pytest.raises(ValueError, match='attention.kind=performer'):
    core(q, k, v, masks.causal() & masks.local_window(3))
