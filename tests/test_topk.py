"""Tests for the top-k attention core (attention/topk.py): float64 NumPy reference, gradients
against a dense autodiff reference, masks, score mods, memory and config errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import attention.topk  # registers attention.kind=topk
from attention import biases, masks
from attention.softmax import attention_weights
from attention.topk import TopKAttention, topk_attention
from configs.common import attention_config

NUM_HEADS = 2
HEAD_DIM = 4


def make_core(k=3, query_chunk_size=4, **options):
  config = attention_config()
  config.kind = 'topk'
  for key in ('dropout', 'impl'):
    if key in options:
      config[key] = options.pop(key)
  # A fresh ConfigDict, so that options of the wrong type reach the core's own validation.
  config.topk = ml_collections.ConfigDict(dict(k=k, query_chunk_size=query_chunk_size, **options))
  return TopKAttention(num_heads=NUM_HEADS, head_dim=HEAD_DIM, config=config, rngs=nnx.Rngs(0))


def random_qkv(seed, batch=2, q_len=10, kv_len=10, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=(batch, n, NUM_HEADS, HEAD_DIM)), dtype)
               for n in (q_len, kv_len, kv_len))


def padding_arrays(batch=2, q_len=10, kv_len=10):
  valid_q = np.ones((batch, q_len), bool)
  valid_k = np.ones((batch, kv_len), bool)
  valid_q[0, -2:] = False
  valid_k[0, [1, kv_len - 2, kv_len - 1]] = False
  valid_k[1, :3] = False                  # with causal(), the first three queries see nothing
  return valid_q, valid_k


def reference_topk(q, k, v, top_k, allowed, scores_fn=None):
  """Top-k attention in float64 NumPy: softmax over the k best allowed scores of each row."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  s = np.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(q.shape[-1])
  if scores_fn is not None:
    s = scores_fn(s)
  allowed = np.broadcast_to(allowed, s.shape)
  weights = np.zeros(s.shape)
  for idx in np.ndindex(*s.shape[:-1]):
    candidates = np.flatnonzero(allowed[idx])
    if not candidates.size:
      continue
    best = candidates[np.argsort(-s[idx][candidates])][:top_k]
    e = np.exp(s[idx][best] - s[idx][best].max())
    weights[idx][best] = e / e.sum()
  return weights, np.einsum('bnts,bsnh->btnh', weights, v)


def dense_topk(q, k, v, top_k, allowed, score_mod=None):
  """Top-k attention on the full score matrix with plain jnp ops, differentiated by autodiff."""
  s = jnp.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(q.shape[-1])
  if score_mod is not None:
    s = score_mod(s)
  s = jnp.where(allowed, s, -jnp.inf)
  top, idx = jax.lax.top_k(s, min(top_k, s.shape[-1]))
  kept = top > -jnp.inf
  p = jax.nn.softmax(jnp.where(kept, top, 0.0), axis=-1, where=kept)
  p = jnp.where(kept, p, 0.0)
  v_t = jnp.swapaxes(v, 1, 2)[:, :, None]                            # [B, N, 1, S, H]
  picked = jnp.take_along_axis(v_t, idx[..., None], axis=3)          # [B, N, T, k, H]
  return jnp.swapaxes(jnp.sum(p[..., None] * picked, axis=3), 1, 2)


def allowed_array(mask, q_len, kv_len):
  return np.asarray(mask.dense(q_len, kv_len))


def value_and_grads(fn, q, k, v, mod, cotangent):
  """Loss Σ fn(...)·cotangent and its gradients for q, k, v and the score mod's state."""
  graphdef, state = nnx.split(mod) if mod is not None else (None, {})

  def loss(q, k, v, state):
    m = nnx.merge(graphdef, state) if mod is not None else None
    return jnp.sum(fn(q, k, v, m) * cotangent)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(q, k, v, state)


def sown_weights(core):
  (w,) = nnx.pop(core, nnx.Intermediate)['attention_weights'].get_value()
  return w


def learnable_multiplicative(seed, size=12):
  factor = np.random.default_rng(seed).uniform(0.5, 1.5, (NUM_HEADS, size, size))
  return biases.multiplicative(biases.learnable(biases.from_array(factor), size))


# ------------------------------------------------------------------------------------------
# Against references.

@pytest.mark.parametrize('query_chunk_size', [1, 4, 64])
def test_matches_float64_reference(query_chunk_size):
  """Causal + padding, k = 3 < S, T = 10 not a multiple of the chunk (except 1)."""
  core = make_core(k=3, query_chunk_size=query_chunk_size)
  q, k, v = random_qkv(0)
  valid_q, valid_k = padding_arrays()
  mask = masks.causal() & masks.padding(jnp.asarray(valid_q), jnp.asarray(valid_k))
  out = nnx.jit(lambda core, q, k, v: core(q, k, v, mask, sow_weights=True))(core, q, k, v)
  weights, ref = reference_topk(q, k, v, 3, allowed_array(mask, 10, 10))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sown_weights(core), weights, rtol=1e-5, atol=1e-6)


def test_static_prior_mask_and_score_mod_with_cross_attention_lengths():
  """A static `attention.mask` term, an additive prior and T ≠ S."""
  core = make_core(k=4, query_chunk_size=3)
  q, k, v = random_qkv(1, q_len=7, kv_len=12)
  valid_k = np.ones((2, 12), bool)
  valid_k[1, 5:] = False
  mask = (masks.local_window(4, 6) | masks.global_tokens([0])) & masks.padding(
      None, jnp.asarray(valid_k))
  mod = biases.gaussian_window(3.0)
  out = jax.jit(lambda q, k, v: core(q, k, v, mask, score_mod=mod))(q, k, v)
  bias = np.asarray(mod.dense(7, 12, NUM_HEADS), np.float64)
  _, ref = reference_topk(q, k, v, 4, allowed_array(mask, 7, 12), lambda s: s + bias)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_equals_softmax_attention_when_k_covers_every_key():
  """k ≥ S: forward and gradients (q, k, v and a learnable score mod) of softmax attention."""
  q, k, v = random_qkv(2)
  valid_q, valid_k = padding_arrays()
  mask = masks.causal() & masks.padding(jnp.asarray(valid_q), jnp.asarray(valid_k))
  mod = biases.learnable_alibi(NUM_HEADS)
  cotangent = jnp.asarray(np.random.default_rng(3).normal(size=q.shape), jnp.float32)
  core = make_core(k=64, query_chunk_size=4)

  def softmax(q, k, v, m):
    w = attention_weights(q, k, mask, m)
    return jnp.einsum('bnts,bsnh->btnh', w, v)

  value, grads = value_and_grads(lambda q, k, v, m: core(q, k, v, mask, score_mod=m),
                                 q, k, v, mod, cotangent)
  want_value, want = value_and_grads(softmax, q, k, v, mod, cotangent)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('mod_kind', ['none', 'learnable_alibi', 'learnable_multiplicative'])
def test_gradients_match_dense_autodiff_reference(mod_kind):
  """k = 3: the recomputing backward equals autodiff through the dense top-k, for q, k, v and
  the parameters of a learnable (additive or multiplicative) score mod."""
  q, k, v = random_qkv(4)
  valid_q, valid_k = padding_arrays()
  mask = masks.causal() & masks.padding(jnp.asarray(valid_q), jnp.asarray(valid_k))
  mod = {'none': None, 'learnable_alibi': biases.learnable_alibi(NUM_HEADS),
         'learnable_multiplicative': learnable_multiplicative(5)}[mod_kind]
  cotangent = jnp.asarray(np.random.default_rng(6).normal(size=q.shape), jnp.float32)
  allowed = mask.dense(10, 10)
  value, grads = value_and_grads(
      lambda q, k, v, m: topk_attention(q, k, v, mask, m, top_k=3, query_chunk_size=4),
      q, k, v, mod, cotangent)
  want_value, want = value_and_grads(lambda q, k, v, m: dense_topk(q, k, v, 3, allowed, m),
                                     q, k, v, mod, cotangent)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  leaves, want_leaves = jax.tree.leaves(grads), jax.tree.leaves(want)
  assert len(leaves) == len(want_leaves) == 3 + (mod is not None)
  for g, w in zip(leaves, want_leaves):
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
  if mod is not None:
    assert np.abs(leaves[-1]).max() > 0          # the mod's parameters do get a gradient


# ------------------------------------------------------------------------------------------
# Masks.

def test_causal_core_leaks_nothing_from_the_future():
  core = make_core(k=3, query_chunk_size=4)
  q, k, v = random_qkv(7, q_len=11, kv_len=11)
  t0 = 5
  later = (jnp.arange(11) >= t0)[None, :, None, None]
  q2, k2, v2 = (jnp.where(later, 4.0 * x + 1.0, x) for x in (q, k, v))
  run = jax.jit(lambda q, k, v: core(q, k, v, masks.causal()))
  out, out2 = run(q, k, v), run(q2, k2, v2)
  np.testing.assert_array_equal(out2[:, :t0], out[:, :t0])
  assert not np.allclose(out2[:, t0:], out[:, t0:])


def test_padded_and_fully_masked_rows_are_zero_with_finite_grads():
  core = make_core(k=3, query_chunk_size=4)
  q, k, v = random_qkv(8)
  valid_q, valid_k = padding_arrays()
  valid_k[0] = False                             # example 0 has no key at all
  mask = masks.causal() & masks.padding(jnp.asarray(valid_q), jnp.asarray(valid_k))
  run = jax.jit(lambda q, k, v: core(q, k, v, mask))
  out = np.asarray(run(q, k, v))
  assert np.all(out[0] == 0) and np.all(out[1, :3] == 0)
  assert np.all(np.abs(out[1, 3:]) > 0)
  grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(run(q, k, v) ** 2), argnums=(0, 1, 2)))(
      q, k, v)
  for g in grads:
    assert np.all(np.isfinite(g))
  assert np.all(np.asarray(grads[0])[0] == 0) and np.all(np.asarray(grads[2])[0] == 0)


def test_fewer_allowed_keys_than_k_gives_zero_weight_to_the_rest():
  core = make_core(k=6, query_chunk_size=4)
  q, k, _ = random_qkv(9)
  _, valid_k = padding_arrays()
  mask = masks.causal() & masks.padding(None, jnp.asarray(valid_k))
  nnx.jit(lambda core, q, k: core(q, k, k, mask, sow_weights=True))(core, q, k)
  w = np.asarray(sown_weights(core))
  allowed = np.broadcast_to(allowed_array(mask, 10, 10), w.shape)
  assert np.all(w[~allowed] == 0)
  counts = (w > 0).sum(-1)
  np.testing.assert_array_equal(counts, np.minimum(allowed.sum(-1), 6))
  sees = allowed.any(-1)
  np.testing.assert_allclose(w.sum(-1)[sees], 1, rtol=1e-6)


# ------------------------------------------------------------------------------------------
# Memory, dtypes, errors.

def test_memory_is_linear_in_length():
  """Compiled temporary memory of forward + backward: ~4× for 4× the length, not 16×."""

  def temp_bytes(length):
    args = [jnp.ones((1, length, 1, 16), jnp.float32) for _ in range(3)]
    loss = lambda q, k, v: jnp.sum(topk_attention(q, k, v, masks.causal(), top_k=8,
                                                  query_chunk_size=32))
    stats = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).compile().memory_analysis()
    if stats is None or not hasattr(stats, 'temp_size_in_bytes'):
      pytest.skip('compiled memory_analysis is unavailable on this backend')
    return stats.temp_size_in_bytes

  short, long = temp_bytes(256), temp_bytes(1024)
  assert long < 6 * short, (short, long)
  assert long < 1024 * 1024 * 4, long           # less than one T×S float32 matrix


def test_bfloat16_inputs():
  core = make_core(k=3, query_chunk_size=4)
  q, k, v = random_qkv(10, dtype=jnp.bfloat16)
  out = jax.jit(lambda q, k, v: core(q, k, v, masks.causal()))(q, k, v)
  assert out.dtype == jnp.bfloat16
  _, ref = reference_topk(np.asarray(q, np.float32), np.asarray(k, np.float32),
                          np.asarray(v, np.float32), 3, allowed_array(masks.causal(), 10, 10))
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.05)


@pytest.mark.parametrize('options, match', [
    ({'k': 0}, 'attention.topk.k'),
    ({'k': -1}, 'attention.topk.k'),
    ({'k': 2.5}, 'attention.topk.k'),
    ({'query_chunk_size': 0}, 'attention.topk.query_chunk_size'),
    ({'dropout': 0.1}, 'attention.dropout'),
    ({'impl': 'cudnn'}, 'attention.impl'),
])
def test_config_errors(options, match):
  with pytest.raises(ValueError, match=match):
    make_core(**options)


@pytest.mark.parametrize('which', ['segments', 'or_of_padding'])
def test_other_per_example_masks_match_reference(which):
  """Per-example masks that are neither static nor padding (segments; an OR of padding masks,
  as a beam-search history is) are materialised and passed explicitly: forward against the
  float64 reference, gradients against autodiff of the dense formulation."""
  core = make_core(k=3, query_chunk_size=4)
  q, k, v = random_qkv(11)
  if which == 'segments':
    segments = jnp.asarray([[0] * 5 + [1] * 5, [0] * 3 + [1] * 7])
    mask = masks.causal() & masks.segments(segments, segments)
  else:
    rng = np.random.default_rng(5)
    parts = [masks.padding(jnp.asarray(rng.random((2, 10)) < 0.5),
                           jnp.asarray(rng.random((2, 10)) < 0.6)) for _ in range(3)]
    mask = parts[0] | parts[1] | parts[2]
  allowed = allowed_array(mask, 10, 10)
  out = jax.jit(lambda q, k, v: core(q, k, v, mask))(q, k, v)
  _, ref = reference_topk(q, k, v, 3, allowed)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
  cotangent = jnp.asarray(np.random.default_rng(6).normal(size=out.shape), jnp.float32)
  _, grads = value_and_grads(lambda q, k, v, m: core(q, k, v, mask), q, k, v, None, cotangent)
  _, ref_grads = value_and_grads(lambda q, k, v, m: dense_topk(q, k, v, 3, allowed), q, k, v,
                                 None, cotangent)
  for g, r in zip(grads[:3], ref_grads[:3]):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


def test_too_small_position_tables_are_refused():
  core = make_core()
  q, k, v = random_qkv(11)
  with pytest.raises(ValueError, match='max_len=8'):
    core(q, k, v, masks.causal(),
         score_mod=biases.learnable(biases.gaussian_window(2.0), 8, num_heads=NUM_HEADS))
