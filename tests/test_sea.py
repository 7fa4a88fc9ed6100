"""Tests for the SEA core (attention/sea.py), stage by stage against float64 NumPy references
written here, then the whole core given its own estimate (the estimator is a network, so the
reference is the attention SEA must compute from the estimate Â it produced)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention
import attention.sea  # noqa: F401  (registers attention.kind=sea)
from attention import masks
from attention import sea
from configs import common

B, N, D = 2, 2, 8
K, TOPK = 8, 2


def make_core(seed=0, max_len=64, **options):
  config = common.attention_config()
  config.kind = 'sea'
  config.sea.predictor_length = K
  config.sea.k = TOPK
  for name, value in options.items():
    config.sea[name] = value
  return attention.create_core(config, num_heads=N, head_dim=D, max_len=max_len,
                               rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def random_qkv(seed, t, batch=B):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=(batch, t, N, D)), jnp.float32)
               for _ in range(3))


def lengths_valid(t, lengths):
  return jnp.arange(t)[None, :] < jnp.asarray(lengths)[:, None]


def make_mask(causal, valid=None):
  """causal() and/or padding(valid, valid), as the models build them."""
  m = masks.causal() if causal else None
  if valid is not None:
    pad = masks.padding(valid, valid)
    m = pad if m is None else m & pad
  return m


def sown(core):
  inter = nnx.pop(core, nnx.Intermediate)
  return {name: np.asarray(value.get_value()[0]) for name, value in inter.items()}


# -------------------------------------------------------------------------------------------
# float64 NumPy references.

def ref_layout(t, causal, valid_k=None, valid_q=None):
  """pos_j, L_i, row validity and the allowed mask, by explicit loops."""
  valid_k = np.ones((B, t), bool) if valid_k is None else np.asarray(valid_k, bool)
  pos = np.zeros((B, t))
  lengths = np.zeros((B, t), np.int64)
  row_valid = np.zeros((B, t), bool)
  allowed = np.zeros((B, t, t), bool)
  for b in range(B):
    for j in range(t):
      pos[b, j] = valid_k[b, :j].sum()
    for i in range(t):
      visible = [j for j in range(t) if valid_k[b, j] and (j <= i or not causal)]
      lengths[b, i] = len(visible)
      row_valid[b, i] = len(visible) > 0 and (valid_q is None or bool(valid_q[b, i]))
      if row_valid[b, i]:
        allowed[b, i, visible] = True
  return pos, lengths, row_valid, allowed


def ref_column(pos_j, length_i, width):
  """c(i, j) = ⌊(pos_j + 0.5)/L_i·K − 1e−4⌋ (the official resize_m_to_t lookup)."""
  return int(np.clip(math.floor((pos_j + 0.5) / max(length_i, 1) * width - 1e-4), 0, width - 1))


def ref_counts(row_valid, lengths, k, width, heads, mode):
  """Per-group selection counts, written out per mode (attention/sea.py step 7, `grouped_top_k`)."""
  batch, t = row_valid.shape
  per_row = np.where(row_valid, np.round(k * width / np.maximum(lengths, 1)), 0)
  if mode == 'query':
    return np.clip(np.broadcast_to(per_row[:, None, :], (batch, heads, t)), 1, width)
  if mode == 'head':
    return np.clip(np.broadcast_to(per_row.sum(1)[:, None], (batch, heads)), 1, t * width)
  if mode == 'batch':
    return np.clip(heads * per_row.sum(1), 1, heads * t * width)
  return np.clip(heads * per_row, 1, heads * width)


def ref_top_k(probs, row_valid, lengths, k, mode):
  """M̂ by sorting each group in descending order (ties: lower flat index first)."""
  probs = np.asarray(probs, np.float64)
  batch, heads, t, width = probs.shape
  counts = ref_counts(row_valid, lengths, k, width, heads, mode)
  x = np.where(row_valid[:, None, :, None], probs, -1.0)
  keep = np.zeros(probs.shape, bool)

  def select(values, count):
    order = np.argsort(-values, kind='stable')
    chosen = np.zeros(values.shape, bool)
    chosen[order[:int(count)]] = True
    return chosen

  for b in range(batch):
    if mode == 'batch':
      keep[b] = select(x[b].ravel(), counts[b]).reshape(heads, t, width)
    for n in range(heads):
      if mode == 'head':
        keep[b, n] = select(x[b, n].ravel(), counts[b, n]).reshape(t, width)
      for i in range(t):
        if mode == 'query':
          keep[b, n, i] = select(x[b, n, i], counts[b, n, i])
    if mode == 'causal_batch':
      for i in range(t):
        keep[b, :, i] = select(x[b, :, i].ravel(), counts[b, i]).reshape(heads, width)
  return keep & row_valid[:, None, :, None], counts


def ref_masked_softmax(x, where):
  out = np.zeros(x.shape)
  for idx in np.ndindex(*x.shape[:-1]):
    if where[idx].any():
      e = np.exp(x[idx][where[idx]] - x[idx][where[idx]].max())
      out[idx][where[idx]] = e / e.sum()
  return out


def ref_masked_log_softmax(x, where):
  out = np.zeros(x.shape)
  for idx in np.ndindex(*x.shape[:-1]):
    if where[idx].any():
      row = x[idx][where[idx]]
      out[idx][where[idx]] = row - row.max() - np.log(np.exp(row - row.max()).sum())
  return out


def ref_sea(q, k, v, est, *, causal, k_top, mode, valid_k=None, valid_q=None, norm=None):
  """SEA steps 7–10 in float64 from the core's estimate; returns (weights, logprob sows, out)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  probs, logits = np.asarray(est.probs), np.asarray(est.logits, np.float64)
  s_prob, s_mix = (np.asarray(x, np.float64) for x in (est.s_prob, est.s_mix))
  t, width = q.shape[1], probs.shape[-1]
  pos, lengths, row_valid, allowed = ref_layout(t, causal, valid_k, valid_q)
  keep, _ = ref_top_k(probs, row_valid, lengths, k_top, mode)
  sparse = np.zeros((B, N, t, t), bool)
  looked_up = np.zeros((B, N, t, t))
  for b in range(B):
    for i in range(t):
      for j in range(t):
        c = ref_column(pos[b, j], lengths[b, i], width)
        sparse[b, :, i, j] = allowed[b, i, j] & keep[b, :, i, c]
        looked_up[b, :, i, j] = logits[b, :, i, c]
  scores = np.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(D)
  weights = ref_masked_softmax(scores, sparse) * np.transpose(s_prob, (0, 2, 1))[..., None]
  context = np.einsum('bnts,bsnh->btnh', weights, v)
  vk = v * (np.ones((B, t)) if valid_k is None else np.asarray(valid_k))[:, :, None, None]
  average = np.zeros_like(context)
  for b in range(B):
    if causal:
      for i in range(t):
        if lengths[b, i]:
          average[b, i] = vk[b, :i + 1].sum(0) / lengths[b, i]
    else:
      rows = row_valid[b]
      mean = probs[b][:, rows].mean(1) if rows.any() else np.zeros((N, width))   # [N, K]
      for j in range(t):
        c = ref_column(pos[b, j], lengths[b, 0], width)
        average[b, :] += mean[None, :, c, None] * vk[b, j][None]
  mix = s_mix[..., None]
  out = mix * context + (1 - mix) * average
  if norm is not None:
    scale, bias = norm
    flat = out.reshape(B, t, N * D)
    mu, var = flat.mean(-1, keepdims=True), flat.var(-1, keepdims=True)
    out = out + ((flat - mu) / np.sqrt(var + 1e-5) * scale + bias).reshape(out.shape)
  out = np.where(row_valid[:, :, None, None], out, 0.0)
  allowed4 = np.broadcast_to(allowed[:, None], (B, N, t, t))
  return (weights, ref_masked_log_softmax(looked_up, allowed4),
          ref_masked_log_softmax(scores, allowed4), out)


# -------------------------------------------------------------------------------------------
# Stage tests.

def test_interpolation_columns_match_the_lookup():
  # Hand-worked: K = 8, L = 3 → (0.5, 1.5, 2.5)/3·8 = (1.33, 4.0, 6.67): the exact boundary
  # 4.0 falls to cell 3 because of the −1e−4.
  cols = sea.interpolation_columns(jnp.arange(3.0)[None, None], jnp.array([[3]]), 8)
  np.testing.assert_array_equal(np.asarray(cols)[0, 0], [1, 3, 6])
  t = 29
  valid = np.asarray(lengths_valid(t, [t, 17]))
  for causal in (True, False):
    layout = sea.key_layout(masks.causal_padding_parts(make_mask(causal, jnp.asarray(valid)),
                                                       kind='sea'), B, t)
    cols = np.asarray(sea.interpolation_columns(layout.positions[:, None, :], layout.lengths, K))
    pos, lengths, row_valid, allowed = ref_layout(t, causal, valid, valid)
    np.testing.assert_array_equal(np.asarray(layout.lengths), lengths)
    np.testing.assert_array_equal(np.asarray(layout.row_valid), row_valid)
    np.testing.assert_array_equal(
        np.asarray(sea.allowed_keys(layout, jnp.arange(t), layout.row_valid)), allowed)
    want = np.array([[[ref_column(pos[b, j], lengths[b, i], K) for j in range(t)]
                      for i in range(t)] for b in range(B)])
    np.testing.assert_array_equal(np.where(allowed, cols, -1), np.where(allowed, want, -1))
    if causal:  # L_i = i + 1 on the unpadded example
      np.testing.assert_array_equal(lengths[0], np.arange(1, t + 1))


@pytest.mark.parametrize('mode', sea.K_FLATTEN_DIMS)
@pytest.mark.parametrize('causal', [True, False])
def test_grouped_top_k_counts_and_selection(mode, causal):
  t = 40
  valid = np.asarray(lengths_valid(t, [t, 27]))
  rng = np.random.default_rng(1)
  probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(B, N, t, K)), jnp.float32), -1)
  _, lengths, row_valid, _ = ref_layout(t, causal, valid, valid)
  keep, counts = sea.grouped_top_k(probs, jnp.asarray(row_valid), jnp.asarray(lengths),
                                   k=TOPK, mode=mode)
  want_keep, want_counts = ref_top_k(np.asarray(probs), row_valid, lengths, TOPK, mode)
  np.testing.assert_array_equal(np.asarray(counts), want_counts)
  np.testing.assert_array_equal(np.asarray(keep), want_keep)
  if causal and mode == 'query':
    # Row 0 sees one key: round(2·8/1) = 16 fills the row (clip at K); row 31 (L = 32):
    # round(0.5) = 0 → clamped to 1; row 39: round(0.4) = 0 → 1.
    assert counts[0, 0, 0] == K and counts[0, 0, 31] == 1 and counts[0, 0, 39] == 1
  if causal and mode == 'causal_batch':
    assert counts[0, 0] == N * K and counts[0, 5] == N * 3 and counts[0, 39] == 1
    # Kept cells per row across heads equal the count on valid rows, none on padding.
    kept = np.asarray(keep).sum(axis=(1, 3))
    np.testing.assert_array_equal(kept[0], np.asarray(counts)[0])
    assert kept[1, 27:].sum() == 0


def test_resampled_identity_matches_interpolating_the_identity():
  t = 11
  valid = np.asarray(lengths_valid(t, [t, 6]))
  eye = np.eye(D)
  for mode in sea.V_EYES:
    got = np.asarray(sea.resampled_identity(jnp.asarray(valid), D, mode=mode))
    for b in range(B):
      count = valid[b].sum()
      for i in range(t):
        if not valid[b, i]:
          np.testing.assert_array_equal(got[b, i], 0)
          continue
        r = valid[b, :i].sum() / max(count - 1, 1) * (D - 1)
        if mode == 'bilinear':
          want = [np.interp(r, np.arange(D), eye[:, c]) for c in range(D)]
        else:
          want = eye[int(math.floor(r + 0.5))]
        np.testing.assert_allclose(got[b, i], want, atol=1e-6)


def test_causal_average_is_the_mean_of_visible_values():
  t = 13
  valid = np.asarray(lengths_valid(t, [t, 9])) & (np.arange(t) != 4)[None]  # a hole at 4
  _, v, _ = random_qkv(3, t)
  layout = sea.key_layout(masks.causal_padding_parts(make_mask(True, jnp.asarray(valid)),
                                                     kind='sea'), B, t)
  got = np.asarray(sea.causal_mean_values(v, layout))
  vv = np.asarray(v, np.float64)
  for b in range(B):
    for i in range(t):
      seen = [j for j in range(i + 1) if valid[b, j]]
      want = vv[b, seen].mean(0) if seen else np.zeros((N, D))
      np.testing.assert_allclose(got[b, i], want, rtol=1e-5, atol=1e-6)


def test_masked_softmaxes_and_fully_masked_rows():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(3, 7)) * 3
  where = rng.random((3, 7)) < 0.5
  where[1] = False
  np.testing.assert_allclose(np.asarray(sea.masked_softmax(jnp.asarray(x), where)),
                             ref_masked_softmax(x, where), atol=1e-6)
  np.testing.assert_allclose(np.asarray(sea.masked_log_softmax(jnp.asarray(x), where)),
                             ref_masked_log_softmax(x, where), atol=1e-5)
  g = jax.grad(lambda y: jnp.sum(sea.masked_softmax(y, where) ** 2)
               + jnp.sum(sea.masked_log_softmax(y, where)))(jnp.asarray(x, jnp.float32))
  assert np.isfinite(np.asarray(g)).all() and np.all(np.asarray(g)[1] == 0)


# -------------------------------------------------------------------------------------------
# The whole core given its estimate. The calls are jitted, and the cases share sequence
# lengths and options where they can, so the file compiles few programs.

T = 21


# Tiny CPU programs: compile speed matters more than code quality here.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=('causal', 'deterministic',
                                                                 'sow'),
                   compiler_options=FAST_COMPILE)
def _run(graphdef, state, q, k, v, valid, *, causal, deterministic, sow):
  core = nnx.merge(graphdef, state)
  mask = make_mask(causal, valid)
  est = core.compute_estimate(q, k, v, mask) if sow else None
  out = core(q, k, v, mask, deterministic=deterministic, sow_weights=sow)
  return nnx.state(core), est, out


def forward(core, q, k, v, valid, *, causal, deterministic=True):
  """(estimate, output) of one call, with the sows of the dense path (read with `sown`)."""
  graphdef, state = nnx.split(core)
  state, est, out = _run(graphdef, state, q, k, v, valid, causal=causal,
                         deterministic=deterministic, sow=True)
  nnx.update(core, state)
  return est, out


def inference(core, q, k, v, valid, *, causal):
  graphdef, state = nnx.split(core)
  return _run(graphdef, state, q, k, v, valid, causal=causal, deterministic=True, sow=False)[2]


CASES = [
    # (causal, k_flatten_dim, padded lengths or None, output, v_eye); the other modes are
    # checked against NumPy in test_grouped_top_k_counts_and_selection.
    (True, 'causal_batch', None, 'mix', 'bilinear'),
    (True, 'query', [T, 12], 'norm', 'bilinear'),
    (False, 'causal_batch', [T, 14], 'mix', 'bilinear'),
    (False, 'batch', None, 'norm', 'nearest'),
]


@pytest.mark.parametrize('causal,mode,lengths,output,v_eye', CASES)
def test_core_matches_reference_given_its_estimate(causal, mode, lengths, output, v_eye):
  core = make_core(variant='causal' if causal else 'bidirectional', k_flatten_dim=mode,
                   output=output, v_eye=v_eye)
  q, k, v = random_qkv(5, T)
  valid = None if lengths is None else lengths_valid(T, lengths)
  est, out = forward(core, q, k, v, valid, causal=causal)
  got = sown(core)
  # Select from the very Â the call used (sown), so a last-ulp difference between two compiled
  # programs cannot flip a near-tie of the top-k.
  est = est._replace(probs=jnp.asarray(got['estimate']))
  norm = None
  if output == 'norm':
    norm = (np.asarray(core.output_norm.scale[...]), np.asarray(core.output_norm.bias[...]))
  np_valid = None if valid is None else np.asarray(valid)
  weights, est_lp, dense_lp, want = ref_sea(q, k, v, est, causal=causal, k_top=TOPK, mode=mode,
                                            valid_k=np_valid, valid_q=np_valid, norm=norm)
  assert out.shape == q.shape and out.dtype == v.dtype
  np.testing.assert_allclose(got['attention_weights'], weights, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out), want, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(got['estimate_log_probs'], est_lp, atol=2e-5)
  np.testing.assert_allclose(got['dense_log_probs'], dense_lp, atol=2e-5)
  # The sparse weights keep about k keys per row and head, far fewer than the row allows.
  kept = (got['attention_weights'] > 0).sum(-1)
  assert 0 < kept.mean() < T / 2


def test_causal_core_leaks_nothing():
  """Future q/k/v leave earlier outputs and estimates (Performer, CNN, LayerNorms, top-k)."""
  p = 9
  core = make_core()
  q, k, v = random_qkv(6, T)
  q2, k2, v2 = (x.at[:, p:].set(x[:, p:] * -2.0 + 1.0) for x in (q, k, v))
  est, out = forward(core, q, k, v, None, causal=True)
  nnx.pop(core, nnx.Intermediate)
  est2, out2 = forward(core, q2, k2, v2, None, causal=True)
  nnx.pop(core, nnx.Intermediate)
  np.testing.assert_allclose(np.asarray(out2[:, :p]), np.asarray(out[:, :p]), atol=1e-6)
  for a, b in ((est.logits, est2.logits), (est.probs, est2.probs)):
    np.testing.assert_allclose(np.asarray(b[:, :, :p]), np.asarray(a[:, :, :p]), atol=1e-6)
  for a, b in ((est.s_prob, est2.s_prob), (est.s_mix, est2.s_mix)):
    np.testing.assert_allclose(np.asarray(b[:, :p]), np.asarray(a[:, :p]), atol=1e-6)
  assert not np.allclose(np.asarray(out2[:, p:]), np.asarray(out[:, p:]))
  assert not np.allclose(np.asarray(est2.logits[:, :, p:]), np.asarray(est.logits[:, :, p:]))


@pytest.mark.parametrize('causal', [True, False])
def test_padding_is_never_attended_and_gradients_are_finite(causal):
  core = make_core(variant='causal' if causal else 'bidirectional')
  q, k, v = random_qkv(7, T)
  valid = lengths_valid(T, [13, 0])   # the second example is all padding
  vv = np.asarray(valid)
  graphdef, params, rest = nnx.split(core, nnx.Param, ...)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def loss_and_grads(params, q, k, v):
    def loss(p, q, k, v):
      mdl = nnx.merge(graphdef, p, rest)
      out = mdl(q, k, v, make_mask(causal, valid), sow_weights=True)
      (w,) = nnx.pop(mdl, nnx.Intermediate)['attention_weights'].get_value()
      return jnp.sum(out ** 2), (out, w)
    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(params, q, k, v)

  (_, (out, w)), grads = loss_and_grads(params, q, k, v)
  w = np.asarray(w)
  assert np.all(w[0][..., ~vv[0]] == 0) and np.all(w[1] == 0)
  assert np.all(np.asarray(out)[~vv] == 0)
  leaves = jax.tree.leaves(grads)
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0
  for g in grads[1:]:   # nothing flows into padded positions
    assert np.all(np.asarray(g)[~vv] == 0)
  # What stands in the padded slots cannot change the valid outputs.
  noise = random_qkv(8, T)
  q2, k2, v2 = (jnp.where(valid[:, :, None, None], x, y) for x, y in zip((q, k, v), noise))
  (_, (out2, _)), _ = loss_and_grads(params, q2, k2, v2)
  np.testing.assert_allclose(np.asarray(out2)[vv], np.asarray(out)[vv], atol=1e-6)


@pytest.mark.parametrize('case', [CASES[1], CASES[2]])
def test_chunked_inference_equals_dense(case):
  causal, mode, lengths, output, v_eye = case
  options = dict(variant='causal' if causal else 'bidirectional', k_flatten_dim=mode,
                 output=output, v_eye=v_eye)
  dense = make_core(**options)
  chunked = make_core(inference='chunked', query_chunk_size=8, **options)  # 21 = 2·8 + 5
  q, k, v = random_qkv(9, T)
  valid = lengths_valid(T, lengths)
  _, want = forward(dense, q, k, v, valid, causal=causal)
  nnx.pop(dense, nnx.Intermediate)
  got = inference(chunked, q, k, v, valid, causal=causal)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_chunked_path_memory_grows_subquadratically():
  def temp_bytes(t):
    core = make_core(inference='chunked', query_chunk_size=16, max_len=256)
    q, k, v = random_qkv(10, t, batch=1)
    f = jax.jit(lambda q, k, v: core(q, k, v, masks.causal()), compiler_options=FAST_COMPILE)
    try:
      stats = f.lower(q, k, v).compile().memory_analysis()
    except Exception as e:  # pylint: disable=broad-except
      pytest.skip(f'memory_analysis is unavailable on this backend: {e}')
    if stats is None or not getattr(stats, 'temp_size_in_bytes', 0):
      pytest.skip('memory_analysis reports no temp size on this backend')
    return stats.temp_size_in_bytes

  growth = temp_bytes(256) / temp_bytes(64)
  # Linear memory grows ≈4× for 4× the length; a T×S buffer would make it ≈16×.
  assert 1 < growth < 8, f'chunked temp memory grew {growth:.1f}× for 4× the length'


def test_jitter_moves_the_mask_in_training_but_stays_inside_it():
  q, k, v = random_qkv(11, T)
  plain, jittery = make_core(), make_core(jitter=1.0)
  forward(plain, q, k, v, None, causal=True)
  want = sown(plain)['attention_weights']
  _, out = forward(jittery, q, k, v, None, causal=True, deterministic=False)
  w = sown(jittery)['attention_weights']
  allowed = ref_layout(T, True)[3]
  assert np.all(w[~np.broadcast_to(allowed[:, None], w.shape)] == 0)
  assert np.isfinite(np.asarray(out)).all()
  assert not np.array_equal(w > 0, want > 0)   # U(−0.75, 0.75) moved some keys across cells


# -------------------------------------------------------------------------------------------
# The distillation loss.

def test_attention_kd_loss_matches_numpy_and_handles_zero_teacher_entries():
  t = 9
  rng = np.random.default_rng(12)
  allowed = np.tril(np.ones((t, t), bool))[None, None].copy()
  allowed = np.broadcast_to(allowed, (B, 1, t, t)).copy()
  allowed[1, 0, 3] = False                      # a row that sees no key
  full = np.broadcast_to(allowed, (B, N, t, t))
  teacher = ref_masked_softmax(rng.normal(size=(B, N, t, t)) * 2, full)
  teacher[0, 0, 5, :2] = 0.0                    # exact zeros inside the allowed keys
  teacher[0, 0, 5] /= teacher[0, 0, 5].sum()
  student = ref_masked_log_softmax(rng.normal(size=(B, N, t, t)), full)
  rows = full.any(-1)
  kl = np.zeros(rows.shape)
  mse = np.zeros(rows.shape)
  for idx in np.ndindex(*rows.shape):
    a, p, s = full[idx], teacher[idx], student[idx]
    pos = a & (p > 0)
    kl[idx] = np.sum(p[pos] * (np.log(p[pos]) - s[pos]))
    mse[idx] = np.mean((np.where(a, np.exp(s), 0) - np.where(a, p, 0)) ** 2)
  want = np.sum((0.1 * kl + mse)[rows]) / rows.sum()
  loss_and_grads = jax.jit(jax.value_and_grad(
      lambda a, b: sea.attention_kd_loss(a, b, jnp.asarray(allowed)), argnums=(0, 1)))
  loss, grads = loss_and_grads(jnp.asarray(teacher, jnp.float32),
                               jnp.asarray(student, jnp.float32))
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)
  # A student equal to the teacher has zero loss (zero entries included).
  same, _ = loss_and_grads(jnp.asarray(teacher, jnp.float32),
                           jnp.asarray(np.log(np.maximum(teacher, 1e-30)), jnp.float32))
  assert float(same) < 1e-6


# -------------------------------------------------------------------------------------------
# Configuration errors.

@pytest.mark.parametrize('option,value,match', [
    ('k', 0, 'attention.sea.k=0'),
    ('predictor_length', 0, 'attention.sea.predictor_length=0'),
    ('predictor_length', 6, 'attention.sea.predictor_length=6'),
    ('k_flatten_dim', 'rows', 'attention.sea.k_flatten_dim'),
    ('k_flatten_dim', 'head', 'attention.sea.k_flatten_dim'),   # leaks across time if causal
    ('output', 'sum', 'attention.sea.output'),
    ('v_eye', 'cubic', 'attention.sea.v_eye'),
    ('performer_kernel', 'cos', 'attention.sea.performer_kernel'),
    ('inference', 'sparse', 'attention.sea.inference'),
    ('query_chunk_size', 0, 'attention.sea.query_chunk_size'),
    ('jitter', 2.0, 'attention.sea.jitter'),
    ('nbf', -1.0, 'attention.sea.nbf'),
    ('variant', 'encoder', 'attention.sea.variant'),
    ('kl_weight', -1.0, 'attention.sea.kl_weight'),
])
def test_config_errors(option, value, match):
  with pytest.raises(ValueError, match=match):
    make_core(**{option: value})


def test_call_errors():
  t = 8
  q, k, v = random_qkv(13, t)
  core = make_core()
  with pytest.raises(ValueError, match='attention.kind=sea'):
    core(q, k, v, masks.causal() & masks.local_window(2))
  with pytest.raises(ValueError, match='attention.sea.variant'):
    core(q, k, v, None)
  with pytest.raises(ValueError, match='attention.sea.variant'):
    make_core(variant='bidirectional')(q, k, v, masks.causal())
  with pytest.raises(ValueError, match='attention.bias'):
    core(q, k, v, masks.causal(), score_mod=object())
  with pytest.raises(ValueError, match='model.max_len'):
    make_core(max_len=4)(q, k, v, masks.causal())
  config = common.attention_config()
  config.kind, config.impl = 'sea', 'cudnn'
  with pytest.raises(ValueError, match='attention.impl'):
    attention.create_core(config, num_heads=N, head_dim=D, rngs=nnx.Rngs(0))
