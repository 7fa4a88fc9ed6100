"""NON, NAP (attention/non_nap.py) and CoDA (attention/coda.py), the alternatives the daGPAM paper
compares in its Table 1, against float64 NumPy references written from the papers' equations.

Properties: outputs, sown maps and gradients (central differences of the reference) match in
float64 with causal, padding and prior masks and an additive bias; padded keys get no weight
and cannot change anything; causal attention never reads the future; a query that sees no key
outputs zeros with finite gradients; a one-query call over a key-padding mask equals the causal
call at that position (the decode cache); bad options and shapes are refused in one line.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention
from attention import biases, masks
from attention.coda import l1_distances
from configs import common
from models import seq2seq
from tests.attention_doubles import DenseBias, DenseMask

B, T, N, H = 2, 6, 2, 4
TOL = 1e-12      # float64 core vs float64 reference
FD_RTOL = 1e-7   # jax.grad vs central differences of the reference (h = 1e-6)

# kind label → (registered kind, options). The second of each pair moves every option off its
# default, so the reference checks each switch.
CONFIGS = {
    'non': ('non', {}),
    'non-length': ('non', dict(output_scale='length')),
    'nap': ('nap', {}),
    'nap-scaled': ('nap', dict(scale_scores=True, eps=0.05)),
    'coda': ('coda', dict(alpha=1.3, beta=0.6)),
    'coda-plain': ('coda', dict(centering='none', scale_distance=False, alpha=0.7, beta=0.3)),
}


# --------------------------------------------------------------------------------------------
# Float64 references, one row at a time, from the equations in the module docstrings.

def _scores(q, k, bias):
  """s = q·kᵀ/√H (+ bias) `[B, N, T, S]`, float64."""
  s = np.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(q.shape[-1])
  return s if bias is None else s + bias


def reference(kind, options, q, k, v, allowed, bias=None, gain=None, head_bias=None):
  """(P, out) in float64 for `q: [B, T, N, H]`, `k, v: [B, S, N, H]`, `allowed: [B|1, N|1, T, S]`.

  NON: P_ij = s_ij/√n_i (or /√S) on seen keys. NAP: P_ij = g_h (z_ij − μ_i)/(σ_i + ε) + b_h on
  seen keys, z = √H·s unless scale_scores, σ the population std. CoDA: M_ij = tanh(α s_ij) ·
  sigmoid(Ñ_ij), N_ij = −β‖q_i − k_j‖₁ (/√H), Ñ centred over the seen keys ('row').
  """
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  s = _scores(q, k, bias)
  b, n, t, s_len = s.shape
  allowed = np.broadcast_to(allowed, s.shape)
  p = np.zeros(s.shape)
  for bi, h, i in np.ndindex(b, n, t):
    keep = allowed[bi, h, i]
    if not keep.any():
      continue
    row = s[bi, h, i, keep]
    if kind == 'non':
      count = s_len if options.get('output_scale') == 'length' else keep.sum()
      p[bi, h, i, keep] = row / np.sqrt(count)
    elif kind == 'nap':
      z = row if options.get('scale_scores') else row * np.sqrt(q.shape[-1])
      sigma = np.sqrt(np.mean((z - z.mean()) ** 2))
      p[bi, h, i, keep] = (gain[h] * (z - z.mean()) / (sigma + options.get('eps', 1e-3))
                           + head_bias[h])
    else:
      distance = np.abs(q[bi, i, h][None, :] - k[bi, :, h][keep]).sum(-1)
      if options.get('scale_distance', True):
        distance = distance / np.sqrt(q.shape[-1])
      gate = -options.get('beta', 1.0) * distance
      if options.get('centering', 'row') == 'row':
        gate = gate - gate.mean()
      p[bi, h, i, keep] = np.tanh(options.get('alpha', 1.0) * row) / (1 + np.exp(-gate))
  return p, np.einsum('bnts,bsnh->btnh', p, v)


# --------------------------------------------------------------------------------------------
# Helpers.

def randomize_nap(core, seed):
  """Moves NAP's gain and bias off their initial 1 and 0, per head."""
  rng = np.random.default_rng(seed)
  core.gain[...] = jnp.asarray(rng.uniform(0.5, 1.5, core.gain[...].shape), jnp.float32)
  core.bias[...] = jnp.asarray(rng.normal(0, 0.3, core.bias[...].shape), jnp.float32)
  return core


def make_core(label, seed=0, **extra):
  kind, options = CONFIGS[label]
  core = attention.make_core(kind, num_heads=N, head_dim=H, seed=seed, **options, **extra)
  return randomize_nap(core, seed + 1) if kind == 'nap' else core


def reference_for(label, core, q, k, v, allowed, bias=None):
  kind, options = CONFIGS[label]
  params = {}
  if kind == 'nap':
    params = dict(gain=np.asarray(core.gain[...], np.float64),
                  head_bias=np.asarray(core.bias[...], np.float64))
  return reference(kind, options, q, k, v, allowed, bias, **params)


def random_qkv(seed, dtype=jnp.float64, q_len=T, kv_len=T):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=(B, length, N, H)), dtype)
               for length in (q_len, kv_len, kv_len))


def padding_arrays(q_len=T, kv_len=T):
  valid_q, valid_k = np.ones((B, q_len), bool), np.ones((B, kv_len), bool)
  valid_q[0, -2:] = False                 # padded queries output zeros
  valid_k[0, [1, kv_len - 1]] = False     # padded keys, one in the middle
  valid_k[1, :2] = False                  # with causal(), queries 0, 1 of example 1 see nothing
  return valid_q, valid_k


def mask_case(name):
  """(Mask or None, allowed [B|1, 1, T, S] bool)."""
  valid_q, valid_k = padding_arrays()
  padding = masks.padding(jnp.asarray(valid_q), jnp.asarray(valid_k))
  mask = {'none': None, 'causal': masks.causal(), 'padding': padding,
          'causal_padding': masks.causal() & padding,
          'window': masks.causal() & masks.local_window(2)}[name]
  allowed = np.ones((1, 1, T, T), bool) if mask is None else np.asarray(mask.dense(T, T))
  return mask, allowed


def call(core, q, k, v, mask, score_mod=None):
  """(out, sown 'attention_weights'), one jitted call."""
  run = nnx.jit(lambda c, q, k, v: c(q, k, v, mask, score_mod=score_mod, sow_weights=True))
  out = run(core, q, k, v)
  (weights,) = nnx.pop(core, nnx.Intermediate)['attention_weights'].get_value()
  return out, weights


def max_error(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


LABELS = list(CONFIGS)


# --------------------------------------------------------------------------------------------
# The cores against the references.

@pytest.mark.parametrize('mask_name', ['none', 'causal', 'causal_padding', 'window'])
@pytest.mark.parametrize('label', LABELS)
def test_matches_the_float64_reference(label, mask_name):
  with jax.enable_x64(True):
    core = make_core(label)
    q, k, v = random_qkv(0)
    mask, allowed = mask_case(mask_name)
    out, weights = call(core, q, k, v, mask)
    expected_weights, expected = reference_for(label, core, q, k, v, allowed)
    assert out.dtype == jnp.float64 and weights.dtype == jnp.float64
    assert max_error(weights, expected_weights) <= TOL
    assert max_error(out, expected) <= TOL
    # Signed weights that do not sum to 1: these are not probability maps.
    assert (np.asarray(weights) < -1e-3).any()


@pytest.mark.parametrize('label', ['non', 'nap', 'coda'])
def test_cross_attention_with_an_arbitrary_mask_and_bias_matches_the_reference(label):
  """T ≠ S, a per-head mask with an empty row, and an additive bias on the scores."""
  with jax.enable_x64(True):
    core = make_core(label)
    q, k, v = random_qkv(1, q_len=4, kv_len=7)
    rng = np.random.default_rng(2)
    allowed = rng.random((B, N, 4, 7)) < 0.6
    allowed[0, 0, 1] = False
    allowed[0, 1, 1, :2] = True
    bias = rng.normal(size=(N, 4, 7))
    out, weights = call(core, q, k, v, DenseMask(jnp.asarray(allowed)),
                        DenseBias(jnp.asarray(bias)))
    expected_weights, expected = reference_for(label, core, q, k, v, allowed, bias[None])
    assert max_error(weights, expected_weights) <= TOL
    assert max_error(out, expected) <= TOL
    assert (np.asarray(out)[0, 1, 0] == 0).all()      # head 0 of query 1 sees nothing


@pytest.mark.parametrize('label', ['non', 'nap', 'coda'])
def test_alibi_prior_is_applied_to_the_scores(label):
  with jax.enable_x64(True):
    core = make_core(label)
    q, k, v = random_qkv(3)
    mask, allowed = mask_case('causal')
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    slopes = np.asarray(biases.alibi_slopes(N))[:, None, None]
    out, _ = call(core, q, k, v, mask, biases.alibi(N))
    _, expected = reference_for(label, core, q, k, v, allowed, -slopes * (i - j))
    assert max_error(out, expected) <= TOL


@pytest.mark.parametrize('label', LABELS)
def test_gradients_match_central_differences_of_the_reference(label):
  """⟨∇L, u⟩ by jax.grad of the core against (L(x + hu) − L(x − hu))/2h of the float64
  reference, for x = q, k, v (and NAP's gain and bias), with causal and padding masks (so
  some queries see one key or none)."""
  with jax.enable_x64(True):
    core = make_core(label)
    kind = CONFIGS[label][0]
    q, k, v = random_qkv(4)
    mask, allowed = mask_case('causal_padding')
    rng = np.random.default_rng(5)
    cotangent = rng.normal(size=q.shape)
    graphdef, params, rest = nnx.split(core, nnx.Param, ...)

    def loss(params, q, k, v):
      return jnp.sum(nnx.merge(graphdef, params, rest)(q, k, v, mask) * cotangent)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(params, q, k, v)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    base = {'q': np.asarray(q), 'k': np.asarray(k), 'v': np.asarray(v)}
    if kind == 'nap':
      base.update(gain=np.asarray(core.gain[...], np.float64),
                  head_bias=np.asarray(core.bias[...], np.float64))
    analytic = {'q': grads[1], 'k': grads[2], 'v': grads[3]}
    if kind == 'nap':
      analytic.update(gain=grads[0]['gain'][...], head_bias=grads[0]['bias'][...])

    def reference_loss(x):
      extra = {name: x[name] for name in ('gain', 'head_bias') if name in x}
      _, out = reference(kind, CONFIGS[label][1], x['q'], x['k'], x['v'], allowed, **extra)
      return float(np.sum(out * cotangent))

    h = 1e-6
    for name, g in analytic.items():
      u = rng.normal(size=base[name].shape)
      numeric = (reference_loss({**base, name: base[name] + h * u})
                 - reference_loss({**base, name: base[name] - h * u})) / (2 * h)
      exact = float(jnp.vdot(g, u))
      assert abs(numeric - exact) <= FD_RTOL * abs(exact) + 1e-9, (label, name, numeric, exact)


def test_l1_distance_gradient_equals_autodiff_of_the_plain_form():
  with jax.enable_x64(True):
    q, k, _ = random_qkv(6, q_len=5, kv_len=7)
    plain = lambda q, k: jnp.sum(jnp.abs(jnp.transpose(q, (0, 2, 1, 3))[:, :, :, None]
                                         - jnp.transpose(k, (0, 2, 1, 3))[:, :, None]), -1)
    c = jnp.asarray(np.random.default_rng(7).normal(size=(B, N, 5, 7)))
    grad = lambda f: jax.grad(lambda q, k: jnp.sum(f(q, k) * c), argnums=(0, 1))(q, k)
    np.testing.assert_array_equal(l1_distances(q, k), plain(q, k))
    for ours, theirs in zip(grad(l1_distances), grad(plain)):
      np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Masks: padding, causality, empty rows, and the decode cache.

@pytest.mark.parametrize('label', LABELS)
def test_padded_keys_get_no_weight_and_change_nothing(label):
  core = make_core(label)
  q, k, v = random_qkv(8, jnp.float32)
  mask, allowed = mask_case('causal_padding')
  out, weights = call(core, q, k, v, mask)
  assert (np.asarray(weights)[~np.broadcast_to(allowed, weights.shape)] == 0).all()
  _, valid_k = padding_arrays()
  hidden = jnp.asarray(~valid_k)[:, :, None, None]
  k2, v2 = (jnp.where(hidden, x + 5.0, x) for x in (k, v))
  out2, _ = call(core, q, k2, v2, mask)
  np.testing.assert_array_equal(out2, out)
  # Queries that see no key (padded ones, and the first two of example 1) output zeros.
  assert (np.asarray(out)[0, -2:] == 0).all() and (np.asarray(out)[1, :2] == 0).all()


@pytest.mark.parametrize('label', LABELS)
def test_causal_attention_never_reads_the_future(label):
  core = make_core(label)
  q, k, v = random_qkv(9, jnp.float32)
  out, _ = call(core, q, k, v, masks.causal())
  for p in (1, T - 2):
    later = jnp.arange(T)[None, :, None, None] >= p
    q2, k2, v2 = (jnp.where(later, x * 3.0 + 1.0, x) for x in (q, k, v))
    out2, _ = call(core, q2, k2, v2, masks.causal())
    np.testing.assert_array_equal(out2[:, :p], out[:, :p])
    assert not np.allclose(out2[:, p:], out[:, p:])


@pytest.mark.parametrize('label', LABELS)
def test_a_query_that_sees_nothing_has_zero_output_and_finite_gradients(label):
  core = make_core(label)
  q, k, v = random_qkv(10, jnp.float32)
  nothing = masks.padding(None, jnp.zeros((B, T), bool))
  out, weights = call(core, q, k, v, nothing)
  assert (np.asarray(out) == 0).all() and (np.asarray(weights) == 0).all()
  grads = jax.grad(lambda q, k, v: jnp.sum(core(q, k, v, nothing) ** 2 + core(q, k, v, nothing)),
                   argnums=(0, 1, 2))(q, k, v)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)


@pytest.mark.parametrize('label', ['non', 'nap', 'coda'])
def test_one_query_over_a_key_padding_mask_equals_the_causal_call(label):
  """What `supports_decode_cache = True` promises: query t over keys ≤ t (padding mask, as a
  decoder with a key/value cache calls it) gives the causal call's output at t."""
  core = make_core(label)
  assert core.supports_decode_cache
  q, k, v = random_qkv(11, jnp.float32)
  full, _ = call(core, q, k, v, masks.causal())
  for t in (0, 3, T - 1):
    seen = jnp.broadcast_to(jnp.arange(T) <= t, (B, T))
    step, _ = call(core, q[:, t:t + 1], k, v, masks.padding(None, seen))
    np.testing.assert_allclose(step[:, 0], full[:, t], rtol=1e-5, atol=1e-6)


def test_non_length_scale_turns_the_decode_cache_off():
  assert not make_core('non-length').supports_decode_cache
  c = common.translation_base_config()
  m = c.model
  m.encoder_layers, m.decoder_layers, m.d_model, m.num_heads, m.d_ff = 1, 1, 8, 2, 16
  m.src_vocab_size, m.tgt_vocab_size, m.max_len = 11, 11, 16
  m.decoder_attention = 'non'
  c.attention.non.output_scale = 'length'
  model = seq2seq.EncoderDecoder(m, c.attention, rngs=nnx.Rngs(0))
  assert model.resolve_decode_mode('auto') == 'recompute'
  c.attention.non.output_scale = 'keys_seen'
  model = seq2seq.EncoderDecoder(m, c.attention, rngs=nnx.Rngs(0))
  assert model.resolve_decode_mode('auto') == 'incremental'


# --------------------------------------------------------------------------------------------
# Other properties.

def test_nap_rows_are_standardised_before_gain_and_bias():
  """With g = 1, b = 0 every row over its seen keys has mean 0 and std σ/(σ + ε) < 1."""
  core = attention.make_core('nap', num_heads=N, head_dim=H)
  q, k, v = random_qkv(12, jnp.float32)
  mask, allowed = mask_case('causal')
  _, weights = call(core, q, k, v, mask)
  w = np.asarray(weights, np.float64)
  allowed = np.broadcast_to(allowed, w.shape)
  for idx in np.ndindex(*w.shape[:-1]):
    row = w[idx][allowed[idx]]
    assert abs(row.mean()) < 1e-6
    if row.size > 1:
      assert 0.99 < row.std() < 1.0


def test_coda_weights_lie_in_the_open_interval():
  core = make_core('coda')
  q, k, v = random_qkv(13, jnp.float32)
  _, weights = call(core, q, k, v, None)
  w = np.asarray(weights)
  assert (np.abs(w) < 1).all() and (w > 0).any() and (w < 0).any()


def test_attention_dropout_acts_only_when_not_deterministic():
  for label in ('non', 'nap', 'coda'):
    core = make_core(label, dropout=0.5)
    q, k, v = random_qkv(14, jnp.float32)
    a = core(q, k, v, None, deterministic=True)
    np.testing.assert_array_equal(a, core(q, k, v, None, deterministic=True))
    assert not np.allclose(core(q, k, v, None, deterministic=False), a)


# --------------------------------------------------------------------------------------------
# What is refused, in one line that names the option and what is expected.

@pytest.mark.parametrize('kind, options, expected', [
    ('non', dict(output_scale='sequence'),
     r"attention\.non\.output_scale='sequence'.*keys_seen, length"),
    ('nap', dict(eps=0.0), r'attention\.nap\.eps=0\.0 .*number > 0'),
    ('nap', dict(eps=float('nan')), r'attention\.nap\.eps=nan .*number > 0'),
    ('coda', dict(alpha=0.0), r'attention\.coda\.alpha=0\.0 .*number > 0'),
    ('coda', dict(beta=-1.0), r'attention\.coda\.beta=-1\.0 .*number ≥ 0'),
    ('coda', dict(alpha=float('inf')), r'attention\.coda\.alpha=inf'),
    ('coda', dict(centering='matrix'), r"attention\.coda\.centering='matrix'.*row, none"),
    ('coda', dict(beta=float('nan')), r'attention\.coda\.beta=nan .*number ≥ 0'),
])
def test_bad_options_are_refused(kind, options, expected):
  # (Options of the wrong type are refused by the ConfigDict itself before the core sees them.)
  with pytest.raises(ValueError, match=expected) as info:
    attention.make_core(kind, num_heads=N, head_dim=H, **options)
  assert '\n' not in str(info.value)


@pytest.mark.parametrize('kind', ['non', 'nap', 'coda'])
def test_only_the_xla_implementation(kind):
  for impl in ('pallas', 'cudnn'):
    with pytest.raises(ValueError, match=f"attention.impl='{impl}' is not available for "
                                         f'attention.kind={kind}; choose one of: xla'):
      attention.make_core(kind, num_heads=N, head_dim=H, impl=impl)
  attention.make_core(kind, num_heads=N, head_dim=H, impl='auto')   # auto = xla


@pytest.mark.parametrize('kind', ['non', 'nap', 'coda'])
def test_wrong_shapes_are_refused(kind):
  core = attention.make_core(kind, num_heads=N, head_dim=H)
  q = jnp.zeros((1, 3, N, H))
  for bad in (jnp.zeros((1, 3, N + 1, H)), jnp.zeros((1, 3, N, H + 1)), jnp.zeros((3, N, H))):
    with pytest.raises(ValueError, match=rf'attention\.kind={kind} expects q \[B, T, {N}, {H}\]'):
      core(q, bad, bad)
  with pytest.raises(ValueError, match=rf'attention\.kind={kind} expects'):
    core(q, q, jnp.zeros((1, 4, N, H)))          # k and v of different lengths
