"""Tests for the DIFF core (attention/diff.py) against a float64 NumPy reference written here."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention.diff  # registers 'diff'
from attention import biases, masks
from attention.diff import DiffAttention, lambda_init_for_depth
from configs import common
from models import lm as lm_lib
from tests import attention_doubles
from tests.attention_doubles import DenseBias, DenseMask

NUM_HEADS = 4           # the model's heads N: the core runs N/2 = 2 differential heads
HEAD_DIM = 3            # d = d_model / N; each differential head is 2d = 6 wide
PAIRS, WIDTH = NUM_HEADS // 2, 2 * HEAD_DIM


def make_config(dropout=0.0, impl='xla', **options):
  config = common.attention_config()
  config.kind = 'diff'
  config.dropout = dropout
  config.impl = impl
  for key, value in options.items():
    config.diff[key] = value
  return config


def make_core(seed=0, layer_index=0, dropout=0.0, num_heads=NUM_HEADS, **options):
  return DiffAttention(num_heads=num_heads, head_dim=HEAD_DIM,
                       config=make_config(dropout=dropout, **options), layer_index=layer_index,
                       rngs=nnx.Rngs(seed))


def randomize_scale(core, seed):
  core.subln_scale[...] = jnp.asarray(
      np.random.default_rng(seed).uniform(0.5, 1.5, WIDTH), jnp.float32)
  return core


def masked_softmax(s, allowed):
  weights = np.zeros(s.shape)
  for idx in np.ndindex(*s.shape[:-1]):
    row, keep = s[idx], allowed[idx]
    if keep.any():
      e = np.exp(row[keep] - row[keep].max())
      weights[idx][keep] = e / e.sum()
  return weights


def reference_diff(q, k, v, lambda_vectors, lambda_init, scale, eps=1e-5, mask=None, bias=None):
  """DIFF attention in float64 NumPy, from the paper's equations; returns (P1 − λP2, out).

  q, k: [B, T|S, N/2, 2d], v: [B, S, N/2, 2d]. `mask` / `bias` broadcast to `[B, N, T, S]` with
  half-head 2h = branch 1 of pair h and 2h + 1 = branch 2 (the official code's layout).
  """
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  d = q.shape[-1] // 2
  q1, q2, k1, k2 = q[..., :d], q[..., d:], k[..., :d], k[..., d:]
  b, t, pairs, _ = q.shape
  s = k.shape[1]
  full_bias = np.zeros((b, 2 * pairs, t, s)) if bias is None else np.broadcast_to(
      np.asarray(bias, np.float64), (b, 2 * pairs, t, s))
  allowed = np.ones((b, 2 * pairs, t, s), bool) if mask is None else np.broadcast_to(
      mask, (b, 2 * pairs, t, s))
  p = []
  for branch, (qi, ki) in enumerate(((q1, k1), (q2, k2))):
    scores = np.einsum('btnh,bsnh->bnts', qi, ki) / math.sqrt(d) + full_bias[:, branch::2]
    p.append(masked_softmax(scores, allowed[:, branch::2]))
  lq1, lk1, lq2, lk2 = (np.asarray(x, np.float64) for x in lambda_vectors)
  lam = np.exp(lq1 @ lk1) - np.exp(lq2 @ lk2) + lambda_init
  diff = p[0] - lam * p[1]
  o = np.einsum('bnts,bsnh->btnh', diff, v)
  o = o / np.sqrt((o ** 2).mean(-1, keepdims=True) + eps) * np.asarray(scale, np.float64)
  return diff, (1.0 - lambda_init) * o


def lambda_vectors(core):
  return [getattr(core, name)[...] for name in ('lambda_q1', 'lambda_k1', 'lambda_q2',
                                                'lambda_k2')]


random_qkv = functools.partial(attention_doubles.random_qkv, heads=PAIRS, head_dim=WIDTH)


def sown_weights(core):
  (w,) = nnx.pop(core, nnx.Intermediate)['attention_weights'].get_value()
  return w


@functools.partial(nnx.jit, static_argnames=('mask', 'sow', 'deterministic'))
def run(core, q, k, v, score_mod=None, *, mask=None, sow=False, deterministic=True):
  return core(q, k, v, mask, score_mod=score_mod, sow_weights=sow, deterministic=deterministic)


@nnx.jit
def run_dense(core, q, k, v, mask, bias):
  return core(q, k, v, DenseMask(mask), score_mod=DenseBias(bias), sow_weights=True)


# --------------------------------------------------------------------------------------------
# The core against the reference.

@pytest.mark.parametrize('layer_index,options', [(0, {}), (3, {}), (1, dict(lambda_init=0.5)),
                                                 (2, dict(lambda_std=0.5, norm_eps=1e-3))])
def test_matches_float64_reference_with_mask_and_bias(layer_index, options):
  batch, q_len, kv_len = 2, 5, 6
  q, k, v = random_qkv(0, batch, q_len, kv_len)
  rng = np.random.default_rng(1)
  mask = rng.random((batch, NUM_HEADS, q_len, kv_len)) < 0.6
  mask[0, :2, 1] = False        # pair 0 of example 0: query 1 sees nothing in either branch
  mask[1, 2, 3] = False         # pair 1 of example 1: query 3 sees nothing in branch 1 only
  mask[1, 3, 3, 0] = True
  bias = rng.normal(size=(NUM_HEADS, q_len, kv_len)).astype(np.float32)
  core = randomize_scale(make_core(layer_index=layer_index, **options), seed=2)
  out = run_dense(core, q, k, v, jnp.asarray(mask), jnp.asarray(bias))
  lam_init = options.get('lambda_init', lambda_init_for_depth(layer_index))
  diff, expected = reference_diff(q, k, v, lambda_vectors(core), lam_init,
                                  core.subln_scale[...], options.get('norm_eps', 1e-5), mask,
                                  bias[None])
  w = sown_weights(core)
  assert w.shape == (batch, PAIRS, q_len, kv_len)
  np.testing.assert_allclose(w, diff, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out, expected, atol=2e-5, rtol=2e-5)
  assert (np.asarray(out)[0, 1, 0] == 0).all()  # the fully masked row outputs exact zeros


def test_matches_reference_with_causal_mask_and_alibi_per_half_head():
  q, k, v = random_qkv(3, 1, 6, 6)
  core = make_core(layer_index=2)
  out = run(core, q, k, v, biases.alibi(NUM_HEADS), mask=masks.causal())
  i, j = np.arange(6)[:, None], np.arange(6)[None, :]
  slopes = np.array([2.0 ** (-8 * h / NUM_HEADS) for h in range(1, NUM_HEADS + 1)])
  _, expected = reference_diff(q, k, v, lambda_vectors(core), lambda_init_for_depth(2),
                               np.ones(WIDTH), mask=j <= i,
                               bias=-slopes[:, None, None] * (i - j))
  np.testing.assert_allclose(out, expected, atol=2e-5, rtol=2e-5)


# --------------------------------------------------------------------------------------------
# λ.

def test_lambda_init_follows_depth_with_zero_based_layer_index():
  # 0.8 − 0.6·exp(−0.3·l): l = 0 → 0.2, l = 1 → 0.35551, l = 5 → 0.66612, → 0.8 deep down.
  for layer_index, value in ((0, 0.2), (1, 0.3555090676), (5, 0.6661219046), (40, 0.8)):
    assert make_core(layer_index=layer_index).lambda_init == pytest.approx(value, abs=1e-5)
  assert make_core(layer_index=5, lambda_init=0.25).lambda_init == 0.25
  assert make_core(layer_index=5, lambda_init=0.0).lambda_init == 0.0


def test_lambda_parameters_and_their_initialisation():
  core = make_core(seed=4, layer_index=1)
  vectors = lambda_vectors(core)
  assert all(x.shape == (HEAD_DIM,) for x in vectors)
  assert not np.allclose(vectors[0], vectors[1])
  lq1, lk1, lq2, lk2 = (np.asarray(x, np.float64) for x in vectors)
  np.testing.assert_allclose(core.lambda_full(),
                             np.exp(lq1 @ lk1) - np.exp(lq2 @ lk2) + core.lambda_init,
                             rtol=1e-6)
  assert core.subln_scale[...].shape == (WIDTH,) and (core.subln_scale[...] == 1).all()
  # lambda_std = 0: λ vectors start at zero and λ = λ_init exactly.
  np.testing.assert_allclose(make_core(layer_index=1, lambda_std=0.0).lambda_full(),
                             lambda_init_for_depth(1), rtol=1e-6)
  # std ≈ 0.1 over many draws.
  wide = DiffAttention(num_heads=2, head_dim=4096, config=make_config(), layer_index=0,
                       rngs=nnx.Rngs(5))
  assert abs(float(jnp.std(wide.lambda_q1[...])) - 0.1) < 0.01


def test_sown_rows_sum_to_one_minus_lambda():
  q, k, v = random_qkv(6, 1, 5, 5)
  core = make_core(layer_index=3)
  run(core, q, k, v, mask=masks.causal(), sow=True)
  w = np.asarray(sown_weights(core), np.float64)
  np.testing.assert_allclose(w.sum(-1), 1.0 - float(core.lambda_full()), atol=1e-5)
  assert (w[..., np.triu_indices(5, 1)[0], np.triu_indices(5, 1)[1]] == 0).all()


# --------------------------------------------------------------------------------------------
# Masks, gradients, dropout.

def test_causal_attention_does_not_leak_the_future():
  core = randomize_scale(make_core(layer_index=1), seed=7)
  q, k, v = random_qkv(8, 1, 6, 6)
  out = run(core, q, k, v, mask=masks.causal())
  noise = np.random.default_rng(9).normal(size=q.shape).astype(np.float32)
  noise[:, :4] = 0  # perturb positions 4 and 5 only
  out2 = run(core, q + noise, k + noise, v + noise, mask=masks.causal())
  np.testing.assert_allclose(out2[:, :4], out[:, :4], atol=1e-7)
  assert not np.allclose(out2[:, 4:], out[:, 4:], atol=1e-3)


def test_gradients_are_finite_with_padding_and_fully_masked_rows():
  core = make_core(layer_index=2)
  q, k, v = random_qkv(10, 2, 5, 5)
  valid = np.array([[1] * 5, [1] * 3 + [0] * 2], bool)
  allowed = np.tril(np.ones((5, 5), bool))
  allowed[2] = False  # query 2 sees nothing in every example
  mask = masks.from_array(allowed) & masks.padding(jnp.asarray(valid), jnp.asarray(valid))

  def loss(core, q, k, v):
    return jnp.sum(core(q, k, v, mask) ** 2)

  out = np.asarray(run(core, q, k, v, mask=mask))
  assert (out[:, 2] == 0).all() and (out[1, 3:] == 0).all()
  grads = nnx.jit(nnx.grad(loss, argnums=(0, 1, 2, 3)))(core, q, k, v)
  for g in jax.tree.leaves(grads):
    assert jnp.isfinite(g).all()
  g_core, g_q = grads[0], grads[1]
  assert (g_q[:, 2] == 0).all() and (g_q[1, 3:] == 0).all()  # empty rows do not pull
  for name in ('lambda_q1', 'lambda_k1', 'lambda_q2', 'lambda_k2', 'subln_scale'):
    assert jnp.abs(g_core[name][...]).sum() > 0, name


def test_attention_dropout_only_when_not_deterministic():
  q, k, v = random_qkv(11, 1, 6, 6)
  plain = run(make_core(), q, k, v)
  core = make_core(dropout=0.5)
  np.testing.assert_allclose(run(core, q, k, v), plain, rtol=1e-6)
  dropped = run(core, q, k, v, deterministic=False)
  assert jnp.isfinite(dropped).all() and not np.allclose(dropped, plain)


def test_bfloat16_inputs():
  q, k, v = random_qkv(12, 1, 5, 5, jnp.bfloat16)
  core = make_core(layer_index=1)
  out = run(core, q, k, v, mask=masks.causal(), sow=True)
  assert out.dtype == jnp.bfloat16 and sown_weights(core).dtype == jnp.float32
  _, expected = reference_diff(q.astype(jnp.float32), k.astype(jnp.float32),
                               v.astype(jnp.float32), lambda_vectors(core),
                               lambda_init_for_depth(1), np.ones(WIDTH),
                               mask=np.tril(np.ones((5, 5), bool)))
  np.testing.assert_allclose(out.astype(jnp.float32), expected, atol=5e-2, rtol=5e-2)


# --------------------------------------------------------------------------------------------
# Configuration and shapes.

def test_projection_shape_halves_the_heads_and_doubles_their_width():
  assert DiffAttention.projection_shape(8, 64) == (4, 4, 128, 128)
  assert DiffAttention.projection_shape(2, 16) == (1, 1, 32, 32)


@pytest.mark.parametrize('num_heads', [3, 1, 0])
def test_odd_or_too_few_heads_are_refused(num_heads):
  with pytest.raises(ValueError, match=f'model.num_heads={num_heads}'):
    DiffAttention.projection_shape(num_heads, HEAD_DIM)
  with pytest.raises(ValueError, match=f'model.num_heads={num_heads}'):
    make_core(num_heads=num_heads)


def test_odd_heads_in_a_model_are_refused():
  c = tiny_lm_config()
  c.num_heads, c.d_model = 3, 12
  with pytest.raises(ValueError, match='model.num_heads=3'):
    lm_lib.TransformerLM(c, make_config(), rngs=nnx.Rngs(0))


@pytest.mark.parametrize('options,option', [
    (dict(lambda_init=1.0), 'lambda_init'),
    (dict(lambda_init=-0.5), 'lambda_init'),
    (dict(lambda_std=-0.1), 'lambda_std'),
    (dict(norm_eps=0.0), 'norm_eps'),
])
def test_config_errors_name_the_option(options, option):
  with pytest.raises(ValueError, match=f'attention.diff.{option}='):
    make_core(**options)


def test_other_implementations_are_refused():
  with pytest.raises(ValueError, match='attention.impl='):
    DiffAttention(num_heads=NUM_HEADS, head_dim=HEAD_DIM, config=make_config(impl='cudnn'),
                  rngs=nnx.Rngs(0))


def test_baseline_shaped_heads_are_a_clear_error():
  q = jnp.zeros((1, 3, NUM_HEADS, HEAD_DIM))  # what a softmax core would get
  with pytest.raises(ValueError, match='projection_shape'):
    make_core()(q, q, q)


# --------------------------------------------------------------------------------------------
# In the model.

def tiny_lm_config(num_layers=2):
  c = common.model_config()
  c.num_layers, c.d_model, c.num_heads, c.d_ff, c.max_len, c.vocab_size = (
      num_layers, 16, 4, 32, 16, 11)
  return c


def count_params(model_fn):
  model = nnx.eval_shape(model_fn)
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_parameter_count_matches_softmax_up_to_lambdas_and_norm_scale():
  c = tiny_lm_config()
  head_dim = c.d_model // c.num_heads
  softmax_config = make_config()
  softmax_config.kind = 'softmax'
  base = count_params(lambda: lm_lib.TransformerLM(c, softmax_config, rngs=nnx.Rngs(0)))
  diff = count_params(lambda: lm_lib.TransformerLM(c, make_config(), rngs=nnx.Rngs(0)))
  # Per layer: four λ vectors of size d and one RMSNorm scale of size 2d.
  assert diff - base == c.num_layers * (4 * head_dim + 2 * head_dim)


def test_language_model_runs_with_depth_dependent_lambda_init():
  c = tiny_lm_config()
  model = lm_lib.TransformerLM(c, make_config(), rngs=nnx.Rngs(0))
  assert [layer.self_attention.core.lambda_init for layer in model.layers] == [
      lambda_init_for_depth(0), lambda_init_for_depth(1)]
  tokens = jnp.asarray(np.random.default_rng(13).integers(0, 11, (2, 6)), jnp.int32)
  hidden = nnx.jit(lambda m, t: m(t, sow_weights=True))(model, tokens)
  assert jnp.isfinite(hidden).all()
  inter = nnx.pop(model, nnx.Intermediate)
  (w,) = inter['layers'][1]['self_attention']['core']['attention_weights'].get_value()
  assert w.shape == (2, c.num_heads // 2, 6, 6)
