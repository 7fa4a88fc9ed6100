"""Tests for the daGPAM core (attention/dagpam.py) against a float64 NumPy reference."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention.dagpam  # registers 'dagpam'
from attention import biases, masks
from attention.dagpam import DaGPAMAttention
from configs import common
from models import lm as lm_lib
from tests import attention_doubles
from tests.attention_doubles import DenseBias, DenseMask

NUM_HEADS = 2
HEAD_DIM = 4


def make_config(dropout=0.0, impl='xla', **options):
  config = common.attention_config()
  config.kind = 'dagpam'
  config.dropout = dropout
  config.impl = impl
  for key, value in options.items():
    config.dagpam[key] = value
  return config


def make_core(seed=0, dropout=0.0, **options):
  return DaGPAMAttention(num_heads=NUM_HEADS, head_dim=HEAD_DIM,
                         config=make_config(dropout=dropout, **options), rngs=nnx.Rngs(seed))


def randomize(core, seed):
  """Moves every parameter off its initial value, so the reference sees a general W_Q⁻, b, λ."""
  rng = np.random.default_rng(seed)
  for name in ('wq_neg', 'bq_neg', 'lambda_pos', 'lambda_neg'):
    var = getattr(core, name)
    if isinstance(var, nnx.Param):
      shape = var[...].shape
      # λ params: uniform(0.05, 1.5) is a valid λ for 'raw' and a valid ρ for 'softplus'.
      value = (rng.uniform(0.05, 1.5, shape) if name.startswith('lambda')
               else rng.normal(size=shape))
      var[...] = jnp.asarray(value, jnp.float32)
  return core


def lambdas_float64(core, options):
  """(λ⁺, λ⁻) from the core's raw state, in float64 and `[N]`, without calling the core."""
  out = []
  for name in ('lambda_pos', 'lambda_neg'):
    var = getattr(core, name)
    if not isinstance(var, nnx.Param):
      value = np.float64(var)
    else:
      rho = np.asarray(var[...], np.float64)
      softplus = options.get('lambda_param', 'softplus') == 'softplus'
      value = np.log1p(np.exp(rho)) if softplus else rho
    out.append(np.broadcast_to(value, (NUM_HEADS,)))
  return out


def masked_softmax(s, allowed):
  weights = np.zeros(s.shape)
  for idx in np.ndindex(*s.shape[:-1]):
    row, keep = s[idx], allowed[idx]
    if keep.any():
      e = np.exp(row[keep] - row[keep].max())
      weights[idx][keep] = e / e.sum()
  return weights


def reference_dagpam(q, k, v, w, b, lam_pos, lam_neg, combination='affine', mask=None,
                     bias=None):
  """daGPAM in float64 NumPy: returns (P, P⁺, P⁻, out) for q: [B, T, N, H], k, v: [B, S, N, H].

  Q⁻ = ReLU(Q) W (+ b) with W: [H, H] (shared) or [N, H, H]; A± = Q± Kᵀ/√H + bias, masked;
  P = (1 + λ⁺) P⁺ − λ⁻ P⁻ (affine) or λ⁺ P⁺ − λ⁻ P⁻ (difference), λ± per head `[N]`.
  """
  q, k, v, w = (np.asarray(x, np.float64) for x in (q, k, v, w))
  relu_q = np.maximum(q, 0.0)
  q_neg = (np.einsum('btnh,hg->btng', relu_q, w) if w.ndim == 2 else
           np.einsum('btnh,nhg->btng', relu_q, w))
  if b is not None:
    q_neg = q_neg + np.asarray(b, np.float64)
  scale = 1.0 / np.sqrt(q.shape[-1])
  maps = []
  for query in (q, q_neg):
    s = np.einsum('btnh,bsnh->bnts', query, k) * scale
    if bias is not None:
      s = s + np.asarray(bias, np.float64)
    allowed = np.ones(s.shape, bool) if mask is None else np.broadcast_to(mask, s.shape)
    maps.append(masked_softmax(s, allowed))
  p_pos, p_neg = maps
  lam_pos = np.asarray(lam_pos, np.float64)[None, :, None, None]
  lam_neg = np.asarray(lam_neg, np.float64)[None, :, None, None]
  c_pos = 1.0 + lam_pos if combination == 'affine' else lam_pos
  p = c_pos * p_pos - lam_neg * p_neg
  return p, p_pos, p_neg, np.einsum('bnts,bsnh->btnh', p, v)


random_qkv = functools.partial(attention_doubles.random_qkv, heads=NUM_HEADS, head_dim=HEAD_DIM)


def sown(core):
  """{name: array} of what the core sowed (each sown once), popping it."""
  return {name: value.get_value()[0] for name, value in nnx.pop(core, nnx.Intermediate).items()}


@functools.partial(nnx.jit, static_argnames=('mask', 'sow', 'deterministic'))
def run(core, q, k, v, score_mod=None, *, mask=None, sow=False, deterministic=True):
  return core(q, k, v, mask, score_mod=score_mod, sow_weights=sow, deterministic=deterministic)


@nnx.jit
def run_dense(core, q, k, v, mask, bias):
  return core(q, k, v, DenseMask(mask), score_mod=DenseBias(bias), sow_weights=True)


def random_mask(seed, batch, q_len, kv_len, empty_row=1):
  mask = np.random.default_rng(seed).random((batch, NUM_HEADS, q_len, kv_len)) < 0.6
  mask[0, 0, empty_row] = False  # a query that sees nothing
  mask[0, 1, empty_row, 0] = True  # ... in one head only
  return mask


# --------------------------------------------------------------------------------------------
# The core against the reference.

CASES = [
    dict(),
    dict(combination='difference', lambda_pos=1.2, lambda_neg=0.3),
    dict(share_wq_neg=False, wq_neg_bias=True),
    dict(wq_neg_init='default', trainable_lambdas=True),
    dict(share_wq_neg=False, trainable_lambdas=True, lambda_granularity='head'),
    dict(trainable_lambdas=True, lambda_granularity='head', lambda_param='raw',
         combination='difference', wq_neg_bias=True),
]


@pytest.mark.parametrize('options', CASES, ids=lambda o: ','.join(f'{k}={v}' for k, v in o.items())
                         or 'defaults')
def test_matches_float64_reference_with_mask_and_bias(options):
  batch, q_len, kv_len = 2, 5, 6
  q, k, v = random_qkv(0, batch, q_len, kv_len)
  mask = random_mask(1, batch, q_len, kv_len)
  bias = np.random.default_rng(2).normal(size=(NUM_HEADS, q_len, kv_len)).astype(np.float32)
  core = randomize(make_core(sow_branches=True, **options), seed=3)
  out = run_dense(core, q, k, v, jnp.asarray(mask), jnp.asarray(bias))
  lam_pos, lam_neg = lambdas_float64(core, options)
  b = None if core.bq_neg is None else core.bq_neg[...]
  p, p_pos, p_neg, expected = reference_dagpam(
      q, k, v, core.wq_neg[...], b, lam_pos, lam_neg, options.get('combination', 'affine'),
      mask, bias[None])
  weights = sown(core)
  np.testing.assert_allclose(weights['attention_weights'], p, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(weights['positive_weights'], p_pos, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(weights['negative_weights'], p_neg, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
  # The negative branch is a different map from the positive one (else the test proves little).
  assert np.abs(p_pos - p_neg).max() > 1e-2


def test_matches_reference_with_structured_mask_and_alibi():
  q, k, v = random_qkv(4, 2, 6, 6)
  valid = np.array([[1] * 6, [1] * 4 + [0] * 2], bool)
  mask = masks.causal() & masks.padding(jnp.asarray(valid), jnp.asarray(valid))
  core = randomize(make_core(), seed=5)
  out = run(core, q, k, v, biases.alibi(NUM_HEADS), mask=mask)
  i, j = np.arange(6)[:, None], np.arange(6)[None, :]
  allowed = (j <= i) & valid[:, None, :, None] & valid[:, None, None, :]
  slopes = np.array([0.5 ** 4, 0.5 ** 8])[:, None, None]
  *_, expected = reference_dagpam(q, k, v, core.wq_neg[...], None, [0.5] * 2, [0.5] * 2,
                                  mask=allowed, bias=-slopes * (i - j))
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
  assert (np.asarray(out)[1, 4:] == 0).all()  # padded queries see nothing


# --------------------------------------------------------------------------------------------
# Properties of the combined map.

@pytest.mark.parametrize('combination', ['affine', 'difference'])
@pytest.mark.parametrize('trainable,granularity', [(False, 'layer'), (True, 'layer'),
                                                   (True, 'head')])
def test_rows_sum_to_the_fixed_total(combination, trainable, granularity):
  options = dict(combination=combination, trainable_lambdas=trainable,
                 lambda_granularity=granularity, lambda_pos=0.7, lambda_neg=0.2)
  core = make_core(**options)
  if trainable:  # per-head values that differ, to catch a head mix-up
    randomize(core, seed=6)
  q, k, v = random_qkv(7, 2, 5, 6)
  mask = random_mask(8, 2, 5, 6)
  run_dense(core, q, k, v, jnp.asarray(mask), jnp.zeros((NUM_HEADS, 5, 6)))
  p = np.asarray(sown(core)['attention_weights'], np.float64)
  lam_pos, lam_neg = lambdas_float64(core, options)
  total = (1.0 if combination == 'affine' else 0.0) + lam_pos - lam_neg     # [N]
  sees_any = mask.any(-1)                                                     # [B, N, T]
  expected = np.where(sees_any, total[None, :, None], 0.0)
  np.testing.assert_allclose(p.sum(-1), expected, atol=1e-5)
  assert (p[~np.broadcast_to(mask, p.shape)] == 0).all()  # masked keys get exactly 0
  if granularity == 'head':
    assert abs(total[0] - total[1]) > 1e-3
  # Entries lie in [−λ⁻, c⁺], and some are negative: the map leaves the simplex.
  c_pos = (1.0 if combination == 'affine' else 0.0) + lam_pos
  assert (p >= -lam_neg[None, :, None, None] - 1e-6).all()
  assert (p <= c_pos[None, :, None, None] + 1e-6).all()
  assert (p < -1e-4).any()


def test_affine_is_difference_with_lambda_pos_plus_one():
  q, k, v = random_qkv(9, 1, 4, 4)
  affine = run(make_core(lambda_pos=0.3, lambda_neg=0.4), q, k, v)
  difference = run(make_core(combination='difference', lambda_pos=1.3, lambda_neg=0.4), q, k, v)
  np.testing.assert_allclose(affine, difference, atol=1e-6)
  other = run(make_core(combination='difference', lambda_pos=0.3, lambda_neg=0.4), q, k, v)
  assert not np.allclose(affine, other, atol=1e-3)


def test_lambda_parameters_shapes_and_initial_values():
  fixed = make_core(lambda_pos=0.3, lambda_neg=0.7, lambda_granularity='head')
  assert [path for path, _ in nnx.to_flat_state(nnx.state(fixed, nnx.Param))] == [('wq_neg',)]
  for granularity, shape in (('layer', ()), ('head', (NUM_HEADS,))):
    for param in ('softplus', 'raw'):
      core = make_core(trainable_lambdas=True, lambda_granularity=granularity,
                       lambda_param=param, lambda_pos=0.3, lambda_neg=0.7)
      assert core.lambda_pos[...].shape == shape and core.lambda_neg[...].shape == shape
      lam_pos, lam_neg = core.lambdas()
      np.testing.assert_allclose(lam_pos, np.full(shape, 0.3), rtol=1e-6)
      np.testing.assert_allclose(lam_neg, np.full(shape, 0.7), rtol=1e-6)
  # softplus keeps λ ≥ 0 whatever the parameter does.
  core = make_core(trainable_lambdas=True)
  core.lambda_pos[...] = jnp.float32(-50.0)
  assert core.lambdas()[0] >= 0
  # raw may start at 0.
  assert float(make_core(trainable_lambdas=True, lambda_param='raw',
                         lambda_neg=0.0).lambdas()[1]) == 0.0


@pytest.mark.parametrize('share', [True, False])
def test_negative_identity_init_gives_minus_relu_queries(share):
  core = make_core(share_wq_neg=share)
  w = np.asarray(core.wq_neg[...])
  assert w.shape == ((HEAD_DIM, HEAD_DIM) if share else (NUM_HEADS, HEAD_DIM, HEAD_DIM))
  q, _, _ = random_qkv(10, 1, 3, 3)
  np.testing.assert_array_equal(core.negative_queries(q), -jax.nn.relu(q))


@pytest.mark.parametrize('share', [True, False])
def test_default_init_is_xavier_uniform(share):
  w = np.asarray(make_core(seed=1, share_wq_neg=share, wq_neg_init='default').wq_neg[...])
  bound = np.sqrt(3 * 0.5 / HEAD_DIM)  # variance 0.5 / fan_avg, fan_avg = H, uniform
  assert np.abs(w).max() <= bound and np.abs(w).max() > 0.5 * bound
  assert not np.allclose(w, -np.eye(HEAD_DIM))
  if not share:
    assert not np.allclose(w[0], w[1])  # heads get their own matrices


# --------------------------------------------------------------------------------------------
# Masks, gradients, dropout, dtypes.

def test_causal_attention_does_not_leak_the_future():
  core = randomize(make_core(trainable_lambdas=True, lambda_granularity='head'), seed=11)
  q, k, v = random_qkv(12, 1, 6, 6)
  mask = masks.causal()
  out = run(core, q, k, v, mask=mask)
  noise = np.random.default_rng(13).normal(size=q.shape).astype(np.float32)
  noise[:, :4] = 0  # perturb positions 4 and 5 only
  out2 = run(core, q + noise, k + noise, v + noise, mask=mask)
  np.testing.assert_allclose(out2[:, :4], out[:, :4], atol=1e-7)
  assert not np.allclose(out2[:, 4:], out[:, 4:], atol=1e-3)


def test_gradients_are_finite_with_padding_and_fully_masked_rows():
  core = randomize(make_core(trainable_lambdas=True, lambda_granularity='head',
                             wq_neg_bias=True), seed=14)
  q, k, v = random_qkv(15, 2, 5, 5)
  valid = np.array([[1] * 5, [1] * 3 + [0] * 2], bool)
  allowed = np.tril(np.ones((5, 5), bool))
  allowed[2] = False  # query 2 sees nothing in every example
  mask = masks.from_array(allowed) & masks.padding(jnp.asarray(valid), jnp.asarray(valid))

  def loss(core, q, k, v):
    return jnp.sum(core(q, k, v, mask) ** 2)

  out = run(core, q, k, v, mask=mask)
  assert (np.asarray(out)[:, 2] == 0).all() and (np.asarray(out)[1, 3:] == 0).all()
  grads = nnx.jit(nnx.grad(loss, argnums=(0, 1, 2, 3)))(core, q, k, v)
  for g in jax.tree.leaves(grads):
    assert jnp.isfinite(g).all()
  g_core, g_q = grads[0], grads[1]
  assert (g_q[:, 2] == 0).all() and (g_q[1, 3:] == 0).all()  # empty rows do not pull
  for name in ('wq_neg', 'bq_neg', 'lambda_pos', 'lambda_neg'):
    assert jnp.abs(g_core[name][...]).sum() > 0, name


def test_attention_dropout_only_when_not_deterministic():
  q, k, v = random_qkv(16, 1, 6, 6)
  plain = run(make_core(), q, k, v)
  core = make_core(dropout=0.5)
  np.testing.assert_allclose(run(core, q, k, v), plain, rtol=1e-6)
  dropped = run(core, q, k, v, deterministic=False)
  assert jnp.isfinite(dropped).all() and not np.allclose(dropped, plain)


def test_bfloat16_inputs():
  q, k, v = random_qkv(17, 1, 5, 5, jnp.bfloat16)
  core = make_core()
  out = run(core, q, k, v, mask=masks.causal(), sow=True)
  w = sown(core)
  assert out.dtype == jnp.bfloat16 and w['attention_weights'].dtype == jnp.float32
  assert set(w) == {'attention_weights'}  # branches only with sow_branches
  *_, expected = reference_dagpam(q.astype(jnp.float32), k.astype(jnp.float32),
                                  v.astype(jnp.float32), -np.eye(HEAD_DIM), None, [0.5] * 2,
                                  [0.5] * 2, mask=np.tril(np.ones((5, 5), bool)))
  np.testing.assert_allclose(out.astype(jnp.float32), expected, atol=3e-2, rtol=3e-2)


# --------------------------------------------------------------------------------------------
# Configuration.

@pytest.mark.parametrize('options,option', [
    (dict(combination='sum'), 'combination'),
    (dict(wq_neg_init='zeros'), 'wq_neg_init'),
    (dict(lambda_granularity='token'), 'lambda_granularity'),
    (dict(lambda_param='sigmoid'), 'lambda_param'),
    (dict(lambda_pos=-0.1, trainable_lambdas=True), 'lambda_pos'),
    (dict(lambda_neg=-1.0), 'lambda_neg'),
    (dict(lambda_neg=0.0, trainable_lambdas=True), 'lambda_neg'),
    (dict(lambda_pos=float('nan')), 'lambda_pos'),
])
def test_config_errors_name_the_option(options, option):
  with pytest.raises(ValueError, match=f'attention.dagpam.{option}='):
    make_core(**options)


def test_other_implementations_are_refused():
  with pytest.raises(ValueError, match='attention.impl='):
    DaGPAMAttention(num_heads=NUM_HEADS, head_dim=HEAD_DIM, config=make_config(impl='cudnn'),
                    rngs=nnx.Rngs(0))


def test_wrong_head_shape_is_a_clear_error():
  core = make_core(share_wq_neg=False)
  q = jnp.zeros((1, 3, NUM_HEADS + 1, HEAD_DIM))
  with pytest.raises(ValueError, match='dagpam was built for'):
    core(q, q, q)


# --------------------------------------------------------------------------------------------
# In the model.

def tiny_lm_config(num_layers=2):
  c = common.model_config()
  c.num_layers, c.d_model, c.num_heads, c.d_ff, c.max_len, c.vocab_size = (
      num_layers, 16, 2, 32, 16, 11)
  return c


def count_params(model_fn):
  model = nnx.eval_shape(model_fn)
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_parameter_overhead_in_a_language_model():
  c = tiny_lm_config()
  head_dim = c.d_model // c.num_heads

  def build(kind, **options):
    config = make_config(**options)
    config.kind = kind
    return lambda: lm_lib.TransformerLM(c, config, rngs=nnx.Rngs(0))

  base = count_params(build('softmax'))
  assert count_params(build('dagpam')) - base == c.num_layers * head_dim ** 2
  assert count_params(build('dagpam', share_wq_neg=False)) - base == (
      c.num_layers * c.num_heads * head_dim ** 2)
  assert count_params(build('dagpam', trainable_lambdas=True, lambda_granularity='head')) - (
      base) == c.num_layers * (head_dim ** 2 + 2 * c.num_heads)


def test_language_model_runs_and_sows_weights():
  config = make_config()
  model = lm_lib.TransformerLM(tiny_lm_config(num_layers=1), config, rngs=nnx.Rngs(0))
  tokens = jnp.asarray(np.random.default_rng(18).integers(0, 11, (2, 6)), jnp.int32)
  hidden = nnx.jit(lambda m, t: m(t, sow_weights=True))(model, tokens)
  assert jnp.isfinite(hidden).all()
  inter = nnx.pop(model, nnx.Intermediate)
  (w,) = inter['layers'][0]['self_attention']['core']['attention_weights'].get_value()
  w = np.asarray(w)
  assert w.shape == (2, 2, 6, 6)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)  # λ⁺ = λ⁻ = 0.5: rows sum to 1
  assert (w[..., np.triu_indices(6, 1)[0], np.triu_indices(6, 1)[1]] == 0).all()
