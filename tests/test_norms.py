"""Norm-based analysis (analysis/norms.py) against float64 NumPy references, in every core and
in both models; capturing sown values (attention/capture.py) and building cores by name."""

import numpy as np
import pytest
from flax import nnx
import jax
import jax.numpy as jnp

import attention
from analysis import layers as layers_lib
from analysis import norms
from attention import capture
from attention import masks
from configs import common
from models.lm import TransformerLM
from models.seq2seq import EncoderDecoder

KINDS = ('softmax', 'dagpam', 'diff', 'topk', 'performer', 'sea', 'non', 'nap', 'coda')
EXACT = ('softmax', 'dagpam', 'diff', 'topk', 'performer', 'non', 'nap', 'coda')
OPTIONS = {'sea': {'predictor_length': 8, 'k': 4}, 'topk': {'k': 4}}


def _direct(alpha, values, w_out, query_scale=None, value_scale=None):
  """Float64 reference: the [B, N, T, S, D] contributions, then their norms."""
  alpha = np.asarray(alpha, np.float64)
  b, s, n, h = values.shape
  v = np.asarray(values, np.float64) * (1.0 if value_scale is None else value_scale)
  f = np.einsum('bsnh,nhd->bnsd', v, np.asarray(w_out, np.float64).reshape(n, h, -1))
  c = alpha if query_scale is None else alpha * np.asarray(query_scale)[..., None]
  vectors = c[..., None] * f[:, :, None, :, :]                    # [B, N, T, S, D]
  return (np.linalg.norm(f, axis=-1), np.linalg.norm(vectors, axis=-1),
          np.linalg.norm(vectors.sum(axis=1), axis=-1))


@pytest.mark.parametrize('signed', [False, True])
def test_decompose_matches_float64_direct_sum(signed):
  rng = np.random.default_rng(0)
  b, t, s, n, h, d = 2, 5, 7, 3, 4, 6
  alpha = rng.dirichlet(np.ones(s), size=(b, n, t))
  if signed:  # daGPAM-like affine map with negative entries
    alpha = 1.5 * alpha - 0.5 * rng.dirichlet(np.ones(s), size=(b, n, t))
  values = rng.normal(size=(b, s, n, h))
  w_out = rng.normal(size=(n * h, d))
  context = np.einsum('bnts,bsnh->btnh', alpha, values)
  parts = norms.decompose({'attention_weights': alpha, 'values': values, 'context': context},
                          jnp.asarray(w_out))
  f_norm, per_head, summed = _direct(alpha, values, w_out)
  np.testing.assert_allclose(parts['transformed_norm'], f_norm, rtol=1e-5)
  np.testing.assert_allclose(parts['weighted_norm'], per_head, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(parts['summed_norm'], summed, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(parts['mean_weights'], alpha.mean(axis=1), rtol=1e-6)
  assert float(parts['reconstruction_error']) < 1e-6


def test_gram_form_equals_direct_sum_with_query_scale():
  rng = np.random.default_rng(1)
  b, t, s, n, h, d = 1, 4, 4, 2, 3, 5
  alpha = rng.normal(size=(b, n, t, s))
  values = rng.normal(size=(b, s, n, h))
  w_out = rng.normal(size=(n * h, d))
  qs, vs = rng.uniform(0.5, 2, size=(b, n, t)), rng.uniform(0.5, 2, size=(h,))
  parts = norms.decompose({'attention_weights': alpha, 'values': values, 'query_scale': qs,
                           'value_scale': vs}, jnp.asarray(w_out))
  _, per_head, summed = _direct(alpha, values, w_out, qs, vs)
  np.testing.assert_allclose(parts['weighted_norm'], per_head, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(parts['summed_norm'], summed, rtol=1e-4, atol=1e-5)


def test_mixing_ratios_hand_case():
  # One head, two tokens, d = 2, identity projections: f(x_j) = v_j, context_i = Σ_j α_ij v_j.
  alpha = np.array([[[[0.75, 0.25], [0.5, 0.5]]]])              # [1, 1, 2, 2]
  values = np.array([[[[3.0, 0.0]], [[0.0, 4.0]]]])             # v_0 = (3, 0), v_1 = (0, 4)
  residual = np.array([[[1.0, 0.0], [0.0, 1.0]]])
  parts = norms.decompose({'attention_weights': alpha, 'values': values}, jnp.eye(2))
  r = norms.mixing_ratios(parts, jnp.asarray(residual), jnp.zeros(2), None)
  # Query 0: own α_00 v_0 = (2.25, 0) → 2.25; mixed α_01 v_1 = (0, 1) → 1.
  # Query 1: own α_11 v_1 = (0, 2) → 2; mixed α_10 v_0 = (1.5, 0) → 1.5.
  np.testing.assert_allclose(r['ATTN-N'][0], [1 / 3.25, 1.5 / 3.5], rtol=1e-6)
  np.testing.assert_allclose(r['ATTN-W'][0], [0.25, 0.5], rtol=1e-6)
  # ATTNRES-W: 0.5α + 0.5I → query 0: 0.125 / (0.125 + 0.875) = 0.125; query 1: 0.25.
  np.testing.assert_allclose(r['ATTNRES-W'][0], [0.125, 0.25], rtol=1e-6)
  # ATTNRES-N: own + x_i: (3.25, 0) → 3.25 and (0, 3) → 3.
  np.testing.assert_allclose(r['ATTNRES-N'][0], [1 / 4.25, 1.5 / 4.5], rtol=1e-6)


def test_mixing_ratio_layer_norm_part_matches_numpy():
  rng = np.random.default_rng(2)
  b, t, n, h, d = 1, 3, 2, 2, 4
  alpha = rng.dirichlet(np.ones(t), size=(b, n, t))
  values = rng.normal(size=(b, t, n, h))
  w_out, b_out = rng.normal(size=(n * h, d)), rng.normal(size=d)
  x, gamma = rng.normal(size=(b, t, d)), rng.uniform(0.5, 1.5, size=d)
  parts = norms.decompose({'attention_weights': alpha, 'values': values}, jnp.asarray(w_out))
  r = norms.mixing_ratios(parts, jnp.asarray(x), jnp.asarray(b_out), jnp.asarray(gamma))
  f = np.einsum('bsnh,nhd->bnsd', values, w_out.reshape(n, h, d))
  for i in range(t):
    terms = [np.einsum('n,nd->d', alpha[0, :, i, j], f[0, :, j]) for j in range(t)]
    y = sum(terms) + x[0, i] + b_out
    s = np.sqrt(np.var(y) + 1e-5)
    g = lambda z: gamma * (z - z.mean()) / s
    mixed = g(sum(terms[j] for j in range(t) if j != i))
    own = g(terms[i] + x[0, i])
    expect = np.linalg.norm(mixed) / (np.linalg.norm(mixed) + np.linalg.norm(own))
    np.testing.assert_allclose(float(r['ATTNRESLN-N'][0, i]), expect, rtol=1e-5)


def test_spearman_matches_pearson_of_ranks():
  rng = np.random.default_rng(3)
  a = rng.normal(size=50)
  b = a ** 3 + 0.1 * rng.normal(size=50)
  assert norms.spearman(a, a ** 3) == pytest.approx(1.0)
  assert norms.spearman(a, -a) == pytest.approx(-1.0)
  ranks = lambda x: np.argsort(np.argsort(x)).astype(float)
  assert norms.spearman(a, b) == pytest.approx(np.corrcoef(ranks(a), ranks(b))[0, 1])
  assert norms.spearman([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(np.corrcoef(
      [1.5, 1.5, 3.5, 3.5], [1, 2, 3, 4])[0, 1])
  assert norms.spearman([1, 1, 1], [1, 2, 3]) is None


# ------------------------------------------------------------------------- cores and models


def test_make_core_applies_overrides_and_refuses_unknown_options():
  core = attention.make_core('topk', num_heads=2, head_dim=4, k=3)
  assert core.k == 3
  core = attention.make_core('dagpam', num_heads=2, head_dim=4, lambda_pos=0.25)
  assert float(core.lambdas()[0]) == 0.25
  with pytest.raises(ValueError, match="unknown option 'kk'.*known: impl, dropout"):
    attention.make_core('topk', num_heads=2, head_dim=4, kk=3)
  with pytest.raises(ValueError, match='unknown attention.kind'):
    attention.make_core('softmx', num_heads=2, head_dim=4)


def test_captured_values_do_not_pile_up():
  core = attention.make_core('softmax', num_heads=2, head_dim=4)
  q = jax.random.normal(jax.random.key(0), (1, 3, 2, 4))
  first = capture.attention_maps(core, q, q, q, masks.causal())['']
  second = capture.attention_maps(core, q, q, q, masks.causal())['']
  assert first.shape == second.shape == (1, 2, 3, 3)          # one map each, not a tuple
  assert not nnx.state(core, nnx.Intermediate)                # nothing left on the module
  np.testing.assert_allclose(np.asarray(first).sum(-1), 1.0, rtol=1e-6)


def _lm(kind, **model):
  a = common.attention_config()
  a.kind = kind
  for key, value in OPTIONS.get(kind, {}).items():
    a[kind][key] = value
  a.dagpam.sow_branches = True
  m = common.model_config()
  m.update(vocab_size=40, d_model=16, num_heads=4, d_ff=32, num_layers=2, **model)
  return TransformerLM(m, a, rngs=nnx.Rngs(0))


def _seq2seq(kind, **model):
  a = common.attention_config()
  a.kind = kind
  for key, value in OPTIONS.get(kind, {}).items():
    a[kind][key] = value
  a.dagpam.sow_branches = True
  m = common.seq2seq_model_config()
  m.update(src_vocab_size=40, tgt_vocab_size=40, d_model=16, num_heads=4, d_ff=32, **model)
  if kind == 'sea':  # SEA is causal self-attention only; the encoder–decoder uses it nowhere
    m.decoder_attention = m.encoder_attention = m.cross_attention = 'softmax'
  return EncoderDecoder(m, a, rngs=nnx.Rngs(0))


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('task', ['lm', 'translation'])
def test_every_kind_decomposes_inside_both_models(kind, task):
  rng = np.random.default_rng(0)
  if task == 'lm':
    model = _lm(kind)
    batch = {'inputs': rng.integers(4, 40, (2, 12))}
  else:
    model = _seq2seq(kind, pre_norm=False)
    batch = {'source': rng.integers(4, 40, (2, 9)), 'target_in': rng.integers(4, 40, (2, 7))}
  attention_layers = layers_lib.attention_layers(model)
  _, sown = layers_lib.forward(model, batch)
  per_layer = layers_lib.group(sown, attention_layers)
  for layer in attention_layers:
    mha = layers_lib.module_at(model, layer.path)
    parts = norms.decompose(per_layer[layer.path], mha.out_proj.kernel[...])
    layer_kind = type(mha.core).kind
    error = float(parts['reconstruction_error'])
    if layer_kind in EXACT:
      assert error < 1e-5, (layer.path, error)
    else:
      assert error > 1e-3  # SEA's average branch is not in its sown map
    assert np.all(np.isfinite(np.asarray(parts['summed_norm'])))
    # The norm of the head sum never exceeds the sum of head norms (triangle inequality).
    assert np.all(np.asarray(parts['summed_norm'])
                  <= np.asarray(parts['weighted_norm']).sum(axis=1) + 1e-5)
    if layer.role != 'cross':
      ratios = norms.mixing_ratios(parts, per_layer[layer.path]['residual'],
                                   mha.out_proj.bias[...], jnp.ones(16))
      for value in ratios.values():
        assert np.all((np.asarray(value) >= 0) & (np.asarray(value) <= 1))


def test_dagpam_branches_add_up_to_the_signed_map():
  model = _lm('dagpam')
  batch = {'inputs': np.random.default_rng(1).integers(4, 40, (1, 10))}
  _, sown = layers_lib.forward(model, batch)
  layer = layers_lib.attention_layers(model)[0]
  entry = layers_lib.group(sown, [layer])[layer.path]
  c_pos, c_neg = entry['branch_coefficients']
  signed = c_pos * entry['positive_weights'] - c_neg * entry['negative_weights']
  np.testing.assert_allclose(signed, entry['attention_weights'], atol=1e-6)
  parts = norms.decompose(entry, layers_lib.module_at(model, layer.path).out_proj.kernel[...])
  br = norms.branches(entry, parts['transformed'])
  # Per head: |c⁺P⁺ − c⁻P⁻|·‖f‖ ≤ c⁺P⁺‖f‖ + c⁻P⁻‖f‖, equal where one branch is zero.
  assert np.all(np.asarray(parts['weighted_norm']) <= np.asarray(
      br['positive_weighted_norm'] + br['negative_weighted_norm']) + 1e-6)


def test_diff_decomposition_is_exact_per_query():
  model = _lm('diff')
  batch = {'inputs': np.random.default_rng(2).integers(4, 40, (2, 8))}
  _, sown = layers_lib.forward(model, batch)
  for layer in layers_lib.attention_layers(model):
    entry = layers_lib.group(sown, [layer])[layer.path]
    assert entry['query_scale'].shape == (2, 2, 8)               # [B, N/2, T]
    parts = norms.decompose(entry,
                            layers_lib.module_at(model, layer.path).out_proj.kernel[...])
    assert float(parts['reconstruction_error']) < 1e-5


def test_score_gradients_match_a_finite_difference_of_the_loss():
  core = attention.make_core('softmax', num_heads=1, head_dim=2)
  q = jax.random.normal(jax.random.key(3), (1, 3, 1, 2))

  def loss(c):
    return jnp.sum(jnp.sin(c(q, q, q, None, sow_weights=True)))

  _, _, grads, _ = capture.score_gradients(loss, core)
  g = np.asarray(grads['scores'])                                 # [1, 1, 3, 3]
  # d loss / d s[0,0,1,2] by central difference through the softmax of the same scores.
  s = np.einsum('btnh,bsnh->bnts', np.asarray(q, np.float64), np.asarray(q, np.float64)) / np.sqrt(2)

  def loss_of_scores(scores):
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.sum(np.sin(np.einsum('bnts,bsnh->btnh', p, np.asarray(q, np.float64))))

  e = np.zeros_like(s)
  e[0, 0, 1, 2] = 1e-5
  numeric = (loss_of_scores(s + e) - loss_of_scores(s - e)) / 2e-5
  assert g[0, 0, 1, 2] == pytest.approx(numeric, rel=1e-3, abs=1e-6)
