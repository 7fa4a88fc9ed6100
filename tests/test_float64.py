"""Floats follow the inputs (attention/registry.py): float64 q/k/v are computed in float64.

Each dense core (softmax, dagpam, diff, topk, non, nap, coda) runs on float64 inputs against the
float64 NumPy reference of its own test file, to 1e-12, with a causal and a padding mask;
gradients are checked against float64 central differences. bfloat16 inputs still give bfloat16 outputs whose
scores were accumulated in float32.

x64 is switched on only inside each test (`jax.enable_x64`), so other tests that share the
pytest-xdist worker process are unaffected.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention
from attention import biases, masks
from configs import common
from tests import test_dagpam, test_diff, test_gpam_alternatives, test_topk
from tests.test_softmax import reference_attention

B, T = 2, 7      # batch, sequence length (self-attention, T = S)
TOL = 1e-12      # max abs error against the float64 references
FD_RTOL = 1e-7   # finite differences vs jax.grad, relative to the directional derivative


def x64(enabled: bool = True):
  return jax.enable_x64(enabled)


def build(kind: str, heads: int, head_dim: int, seed: int = 0, **options):
  """A core from the registry, as the model builds it."""
  config = common.attention_config()
  config.kind = kind
  config.dropout = 0.0
  for key, value in options.items():
    config[kind][key] = value
  return attention.create_core(config, num_heads=heads, head_dim=head_dim,
                               rngs=nnx.Rngs(seed), max_len=T)


# Per kind: (model heads, head width, projected heads, projected width, core options). DIFF
# projects N/2 heads of width 2d (its `projection_shape`).
SHAPES = {
    'softmax': (2, 4, 2, 4, {}),
    'dagpam': (2, 4, 2, 4, dict(trainable_lambdas=True, lambda_granularity='head',
                                wq_neg_bias=True)),
    'diff': (4, 3, 2, 6, {}),
    'topk': (2, 4, 2, 4, dict(k=3, query_chunk_size=4)),   # T = 7: the last chunk overlaps
    **{kind: (2, 4, 2, 4, test_gpam_alternatives.CONFIGS[kind][1])
       for kind in ('non', 'nap', 'coda')},
}
KINDS = tuple(SHAPES)


def make_core(kind: str, seed: int = 0):
  heads, head_dim, _, _, options = SHAPES[kind]
  core = build(kind, heads, head_dim, seed, **options)
  if kind == 'dagpam':
    test_dagpam.randomize(core, seed + 1)       # a general W_Q⁻, b_Q⁻ and λs
  if kind == 'nap':
    test_gpam_alternatives.randomize_nap(core, seed + 1)   # a general gain and bias per head
  if kind == 'diff':
    core.subln_scale[...] = jnp.asarray(
        np.random.default_rng(seed + 1).uniform(0.5, 1.5, core.subln_scale[...].shape),
        jnp.float32)
  return core


def random_qkv(kind: str, seed: int, dtype):
  _, _, n, width, _ = SHAPES[kind]
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=(B, T, n, width)), dtype) for _ in range(3))


def padding_arrays():
  valid_q = np.ones((B, T), bool)
  valid_k = np.ones((B, T), bool)
  valid_q[0, -2:] = False           # padded queries output zeros
  valid_k[0, [1, T - 2, T - 1]] = False
  valid_k[1, :2] = False            # with causal(), queries 0 and 1 of example 1 see no key
  return valid_q, valid_k


def mask_case(name: str):
  """(Mask or None, allowed [B|1, 1, T, S] bool) for a named case."""
  valid_q, valid_k = padding_arrays()
  padding = masks.padding(jnp.asarray(valid_q), jnp.asarray(valid_k))
  mask = {'none': None, 'causal': masks.causal(), 'padding': padding,
          'causal_padding': masks.causal() & padding}[name]
  allowed = (np.ones((1, 1, T, T), bool) if mask is None
             else np.asarray(mask.dense(T, T), bool))
  return mask, allowed


def call(core, q, k, v, mask, score_mod=None):
  """The core's output and its sown 'attention_weights' (one jitted call)."""
  run = nnx.jit(lambda core, q, k, v: core(q, k, v, mask, score_mod=score_mod, sow_weights=True))
  out = run(core, q, k, v)
  (weights,) = nnx.pop(core, nnx.Intermediate)['attention_weights'].get_value()
  return out, weights


def reference(kind: str, core, q, k, v, allowed, bias=None):
  """(weights, out) of the core's float64 NumPy reference (from the core's own test file)."""
  if kind == 'softmax':
    return reference_attention(q, k, v, allowed, bias)
  if kind == 'dagpam':
    lam_pos, lam_neg = test_dagpam.lambdas_float64(core, SHAPES[kind][4])
    p, _, _, out = test_dagpam.reference_dagpam(
        q, k, v, np.asarray(core.wq_neg[...]), np.asarray(core.bq_neg[...]), lam_pos, lam_neg,
        mask=allowed, bias=bias)
    return p, out
  if kind == 'diff':
    return test_diff.reference_diff(q, k, v, test_diff.lambda_vectors(core), core.lambda_init,
                                    core.subln_scale[...], core.norm_eps, allowed, bias)
  if kind == 'topk':
    return test_topk.reference_topk(q, k, v, core.k, allowed,
                                    None if bias is None else (lambda s: s + bias))
  if kind in ('non', 'nap', 'coda'):
    return test_gpam_alternatives.reference_for(kind, core, q, k, v, allowed, bias)
  raise ValueError(kind)


def max_error(actual, expected) -> float:
  return float(np.max(np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))))


# --------------------------------------------------------------------------------------------
# Forward: float64 in, float64 computed, float64 out.

@pytest.mark.parametrize('mask_name', ['none', 'causal', 'padding', 'causal_padding'])
@pytest.mark.parametrize('kind', KINDS)
def test_float64_inputs_match_the_float64_reference(kind, mask_name):
  with x64():
    core = make_core(kind)
    q, k, v = random_qkv(kind, 0, jnp.float64)
    mask, allowed = mask_case(mask_name)
    out, weights = call(core, q, k, v, mask)
    expected_weights, expected = reference(kind, core, q, k, v, allowed)
    assert out.dtype == jnp.float64 and weights.dtype == jnp.float64
    assert max_error(out, expected) <= TOL
    assert max_error(weights, expected_weights) <= TOL
    if mask_name == 'causal_padding':
      # Queries that see no key output exact zeros in float64 too.
      assert (np.asarray(out)[1, :2] == 0).all() and (np.asarray(out)[0, -2:] == 0).all()


@pytest.mark.parametrize('kind', KINDS)
def test_float64_score_mod_is_applied_in_float64(kind):
  """A position-based prior (log1p of the distance, not exact in float32) keeps float64."""
  with x64():
    core = make_core(kind)
    q, k, v = random_qkv(kind, 1, jnp.float64)
    mask, allowed = mask_case('causal')
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    bias = -0.7 * np.log1p(np.abs(i - j))
    out, weights = call(core, q, k, v, mask, biases.distance_decay(0.7))
    expected_weights, expected = reference(kind, core, q, k, v, allowed, bias)
    assert out.dtype == jnp.float64
    assert max_error(out, expected) <= TOL
    assert max_error(weights, expected_weights) <= TOL


def test_accumulation_dtype_rule():
  rule = attention.accumulation_dtype
  for dtype in (jnp.bfloat16, jnp.float16, jnp.float32):
    assert rule(jnp.zeros(2, dtype)) == jnp.float32
  assert rule(jnp.zeros(2, jnp.bfloat16), jnp.zeros(2, jnp.float32)) == jnp.float32
  with x64():
    assert rule(jnp.zeros(2, jnp.float64)) == jnp.float64
    assert rule(jnp.zeros(2, jnp.bfloat16)) == jnp.float32
    assert rule(jnp.zeros(2, jnp.float32), jnp.zeros(2, jnp.float64)) == jnp.float64


# --------------------------------------------------------------------------------------------
# Gradients: jax.grad against float64 central differences.

@pytest.mark.parametrize('kind', KINDS)
def test_float64_gradients_match_central_differences(kind):
  """d/dε L(x + ε·u) by central differences (h = 1e-6) against ⟨∇L, u⟩, for x = q, k, v.

  With float32 inside, the difference quotient would be off by ~1e-7/h ≈ 10 %; in float64 the
  truncation (h²) and rounding (1e-16/h) errors are both ≲ 1e-10.
  """
  with x64():
    core = make_core(kind)
    q, k, v = random_qkv(kind, 2, jnp.float64)
    mask, _ = mask_case('causal_padding')
    rng = np.random.default_rng(3)
    cotangent = jnp.asarray(rng.normal(size=q.shape))

    def loss(q, k, v):
      return jnp.sum(core(q, k, v, mask) * cotangent)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    h = 1e-6
    loss = jax.jit(loss)
    for index, (x, g) in enumerate(zip((q, k, v), grads)):
      assert g.dtype == jnp.float64
      u = jnp.asarray(rng.normal(size=x.shape))
      shifted = lambda eps: loss(*[y + eps * u if n == index else y
                                   for n, y in enumerate((q, k, v))])
      numeric = (shifted(h) - shifted(-h)) / (2 * h)
      analytic = jnp.vdot(g, u)
      assert abs(float(numeric - analytic)) <= FD_RTOL * abs(float(analytic)), (
          kind, 'qkv'[index], float(numeric), float(analytic))


# --------------------------------------------------------------------------------------------
# bfloat16: still bfloat16 out, float32 accumulation inside (with or without x64).

@pytest.mark.parametrize('enable_x64', [False, True], ids=['x32', 'x64'])
@pytest.mark.parametrize('kind', KINDS)
def test_bfloat16_inputs_accumulate_in_float32(kind, enable_x64):
  with x64(enable_x64):
    # daGPAM's default W_Q⁻ = −I keeps Q⁻ = −ReLU(Q) exact in bfloat16, so both branches see
    # the same values in both runs below.
    heads, head_dim, _, _, options = SHAPES[kind]
    core = build(kind, heads, head_dim, **({} if kind == 'dagpam' else options))
    q, k, v = random_qkv(kind, 4, jnp.bfloat16)
    mask, _ = mask_case('causal_padding')
    score_mod = biases.alibi(heads)   # DIFF: the score mod sees all N half-heads
    out, weights = call(core, q, k, v, mask, score_mod)
    assert out.dtype == jnp.bfloat16
    assert weights.dtype == jnp.float32          # scores and softmax in float32, not bf16/f64
    # The float32 computation on the same (bf16-rounded) values.
    q32, k32, v32 = (x.astype(jnp.float32) for x in (q, k, v))
    out32, weights32 = call(core, q32, k32, v32, mask, score_mod)
    assert out32.dtype == jnp.float32 and weights32.dtype == jnp.float32
    # Weights agree to float32 accuracy: bf16 accumulation would be off by ~1e-2.
    np.testing.assert_allclose(weights, weights32, atol=1e-6)
    # The output differs only by the bf16 rounding of the weights and of the result.
    np.testing.assert_allclose(np.asarray(out, np.float32), out32, atol=3e-2, rtol=2e-2)


# --------------------------------------------------------------------------------------------
# The linear-time cores follow the same rule (their random features are float32 draws, so no
# float64 reference here): float64 in, float64 out, finite values and gradients.

@pytest.mark.parametrize('kind, heads, head_dim, options', [
    ('performer', 2, 4, {}),
    ('performer', 2, 4, dict(kernel='relu')),
    ('sea', 2, 8, dict(predictor_length=8, k=2)),
])
def test_linear_time_cores_run_in_float64(kind, heads, head_dim, options):
  with x64():
    core = build(kind, heads, head_dim, **options)
    rng = np.random.default_rng(5)
    q, k, v = (jnp.asarray(rng.normal(size=(B, T, heads, head_dim))) for _ in range(3))
    mask, _ = mask_case('causal_padding')

    def loss(q, k, v):
      out = core(q, k, v, mask)
      return jnp.sum(out ** 2), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    assert out.dtype == jnp.float64 and all(g.dtype == jnp.float64 for g in grads)
    assert jnp.isfinite(out).all() and all(jnp.isfinite(g).all() for g in grads)
