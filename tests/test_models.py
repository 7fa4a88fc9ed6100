"""Tests for models/: blocks, positions, adaptive input/softmax and the LM."""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import attention
import attention.registry
from attention import cpu_paths
from attention import masks as masks_lib
from attention.softmax import SoftmaxAttention
from configs import common
from models import adaptive
from models import lm as lm_lib
from models import positions as positions_lib
from models import transformer

B, T, V = 2, 8, 37


def tiny_model_config(**overrides):
  c = common.model_config()
  c.num_layers = 2
  c.d_model = 16
  c.num_heads = 2
  c.d_ff = 32
  c.max_len = 16
  c.vocab_size = V
  for key, value in overrides.items():
    c[key] = value
  return c


def tiny_attention_config(**overrides):
  c = common.attention_config()
  for key, value in overrides.items():
    c[key] = value
  return c


def key(seed):
  # The 'rbg' PRNG compiles several times faster than threefry on CPU, which dominates these
  # tests' run time (every new parameter shape and dropout site is a compile); the models are
  # agnostic to the key implementation.
  return jax.random.key(seed, impl='rbg')


def make_rngs(seed=0):
  return nnx.Rngs(params=key(seed), dropout=key(seed + 1))


def make_lm(seed=0, attention_overrides=None, **overrides):
  return lm_lib.TransformerLM(tiny_model_config(**overrides),
                              tiny_attention_config(**(attention_overrides or {})),
                              rngs=make_rngs(seed))


def random_tokens(seed=0, shape=(B, T), vocab=V):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def random_normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


ADAPTIVE = dict(adaptive_cutoffs=(5, 15), adaptive_factor=2.0, adaptive_input=True,
                adaptive_softmax=True)


# Jitted entry points: on CPU one XLA compile of the whole computation is several times cheaper
# than eager mode's compile of every primitive.


@functools.partial(nnx.jit, static_argnames=('deterministic',))
def forward(model, tokens, valid=None, positions=None, deterministic=True):
  return model(tokens, valid=valid, positions=positions, deterministic=deterministic)


@nnx.jit
def outputs(model, tokens, targets):
  """`(hidden, log_probs, token_nll)` of the LM."""
  hidden = model(tokens)
  return hidden, model.log_probs(hidden), model.token_nll(hidden, targets)


@nnx.jit
def softmax_outputs(asm, hidden, targets):
  """`(log_probs, token_nll)` of an AdaptiveSoftmax."""
  return asm.log_probs(hidden), asm.token_nll(hidden, targets)


# -- shapes, causality, padding ----------------------------------------------------------------


@pytest.mark.parametrize('overrides', [
    {},
    {'positions': 'learned', 'tie_embeddings': False},
    {'positions': 'none', 'pre_norm': False, 'activation': 'gelu'},
])
def test_shapes(overrides):
  model = make_lm(**overrides)
  tokens = random_tokens()
  hidden, log_probs, nll = outputs(model, tokens, tokens)
  assert hidden.shape == (B, T, 16)
  assert model.logits(hidden).shape == (B, T, V)
  assert model.logits(hidden).dtype == jnp.float32
  np.testing.assert_allclose(log_probs, jax.nn.log_softmax(model.logits(hidden)), atol=1e-5)
  assert nll.shape == (B, T) and nll.dtype == jnp.float32
  assert np.all(np.isfinite(nll))


@pytest.mark.parametrize('overrides', [
    {},
    {'positions': 'learned', 'pre_norm': False},
    ADAPTIVE,
])
def test_causal_no_leak(overrides):
  model = make_lm(**overrides)
  tokens = random_tokens(1)
  t = 3
  perturbed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 7) % V)
  (h1, lp1, _), (h2, lp2, _) = outputs(model, tokens, tokens), outputs(model, perturbed, tokens)
  np.testing.assert_allclose(h1[:, :t + 1], h2[:, :t + 1], atol=1e-6)
  assert not np.allclose(h1[:, t + 1:], h2[:, t + 1:])
  np.testing.assert_allclose(lp1[:, :t + 1], lp2[:, :t + 1], atol=1e-5)


def test_padding_left_padded_matches_unpadded():
  model = make_lm()
  n_pad = 3
  tokens = random_tokens(2, (1, T - n_pad))
  padded = jnp.concatenate([jnp.zeros((1, n_pad), jnp.int32), tokens], axis=1)
  valid = jnp.arange(T)[None] >= n_pad
  positions = jnp.maximum(jnp.arange(T)[None] - n_pad, 0)
  h_ref = forward(model, tokens)
  h_pad = forward(model, padded, valid, positions)
  assert np.all(np.isfinite(h_pad))
  np.testing.assert_allclose(h_pad[:, n_pad:], h_ref, atol=1e-5)


def test_learned_positions_longer_than_max_len_raises():
  model = make_lm(positions='learned', max_len=4)
  with pytest.raises(ValueError, match='max_len'):
    model(random_tokens(0, (1, 5)))


# -- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize('pre_norm', [True, False])
def test_tiny_training_reduces_loss(pre_norm):
  # Residual/embedding dropout exercises the dropout path; each dropout site costs seconds of
  # CPU compile time (threefry), so attention and activation dropout stay off here.
  model = make_lm(pre_norm=pre_norm, dropout=0.1)
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
  tokens = random_tokens(3, (4, 12))
  inputs, targets = tokens[:, :-1], tokens[:, 1:]

  @nnx.jit
  def step(model, optimizer, key):
    nnx.reseed(model, dropout=key)

    def loss_fn(model):
      hidden = model(inputs, deterministic=False)
      return model.token_nll(hidden, targets, deterministic=False).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  @nnx.jit
  def eval_loss(model):
    return model.token_nll(model(inputs), targets).mean()

  before = float(eval_loss(model))
  for i in range(30):
    step(model, optimizer, key(100 + i))
  after = float(eval_loss(model))
  assert after < 0.7 * before, (before, after)


# -- tied embeddings, label smoothing ----------------------------------------------------------


def test_tied_embeddings_logits_are_hidden_times_embedding():
  model = make_lm(tie_embeddings=True)
  assert model.output is None
  hidden = forward(model, random_tokens())
  emb = np.asarray(model.embed.embedding[...], np.float64)
  np.testing.assert_allclose(model.logits(hidden), np.asarray(hidden, np.float64) @ emb.T,
                             rtol=1e-5, atol=1e-5)


def test_untied_has_separate_output():
  model = make_lm(tie_embeddings=False)
  assert model.output.kernel[...].shape == (16, V)


def test_label_smoothing_matches_fairseq_formula():
  model = make_lm()
  tokens = random_tokens(4)
  hidden = forward(model, tokens)
  eps = 0.1
  lp = _np_log_softmax(np.asarray(model.logits(hidden), np.float64))
  nll = -np.take_along_axis(lp, np.asarray(tokens)[..., None], -1)[..., 0]
  smooth = -lp.sum(-1)
  eps_i = eps / (V - 1)
  expected = (1 - eps - eps_i) * nll + eps_i * smooth
  np.testing.assert_allclose(model.token_nll(hidden, tokens, eps), expected, rtol=1e-5)
  np.testing.assert_allclose(model.token_nll(hidden, tokens), nll, rtol=1e-5)


def test_label_smoothing_with_adaptive_softmax_raises():
  model = make_lm(**ADAPTIVE)
  tokens = random_tokens()
  hidden = forward(model, tokens)
  with pytest.raises(ValueError, match='label_smoothing'):
    model.token_nll(hidden, tokens, 0.1)
  with pytest.raises(ValueError, match='log_probs'):
    model.logits(hidden)


# -- adaptive softmax / input ------------------------------------------------------------------


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_adaptive_log_probs(asm: adaptive.AdaptiveSoftmax, hidden, tied=None):
  """float64 NumPy adaptive softmax (Grave et al. 2017) from the module's parameters."""
  f64 = lambda a: np.asarray(a, np.float64)
  h = f64(hidden)
  edges = asm.edges
  if tied is not None:
    head_words = f64(tied.embeddings[0].embedding[...]).T
  else:
    head_words = f64(asm.head_words.kernel[...])
  head = _np_log_softmax(np.concatenate([h @ head_words, h @ f64(asm.head_clusters.kernel[...])],
                                        -1))
  parts = [head[..., :edges[1]]]
  for band in range(1, len(edges) - 1):
    if tied is not None:
      proj = f64(tied.projections[band].kernel[...]).T
      out = f64(tied.embeddings[band].embedding[...]).T
    else:
      proj = f64(asm.tail_projections[band - 1].kernel[...])
      out = f64(asm.tail_outputs[band - 1].kernel[...])
    parts.append(head[..., edges[1] + band - 1, None] + _np_log_softmax(h @ proj @ out))
  return np.concatenate(parts, -1)


@pytest.mark.parametrize('chunk_size', [8192, 3])
def test_adaptive_softmax_against_numpy(chunk_size):
  asm = adaptive.AdaptiveSoftmax(V, 16, (5, 15), factor=2.0, chunk_size=chunk_size,
                                 rngs=make_rngs())
  assert asm.dims == (16, 8, 4)
  hidden = random_normal(1, (B, T, 16))
  targets = jnp.asarray(np.arange(B * T).reshape(B, T) * 5 % V, jnp.int32)  # every band
  lp, nll = softmax_outputs(asm, hidden, targets)
  assert lp.shape == (B, T, V) and lp.dtype == jnp.float32
  np.testing.assert_allclose(np.exp(np.asarray(lp, np.float64)).sum(-1), 1.0, atol=1e-5)
  ref = np_adaptive_log_probs(asm, hidden)
  np.testing.assert_allclose(lp, ref, atol=1e-5)
  gathered = -np.take_along_axis(ref, np.asarray(targets)[..., None], -1)[..., 0]
  np.testing.assert_allclose(nll, gathered, atol=1e-5)
  np.testing.assert_allclose(
      nll, -jnp.take_along_axis(lp, targets[..., None], -1)[..., 0], atol=1e-5)


def test_adaptive_softmax_chunked_gradient_matches_dense():
  dense = adaptive.AdaptiveSoftmax(V, 16, (5, 15), factor=2.0, chunk_size=8192,
                                   rngs=make_rngs())
  chunked = adaptive.AdaptiveSoftmax(V, 16, (5, 15), factor=2.0, chunk_size=4, rngs=make_rngs())
  hidden = random_normal(1, (B, T, 16))
  targets = random_tokens(5)
  grad = nnx.jit(nnx.grad(lambda m, h: m.token_nll(h, targets).sum(), argnums=(0, 1)))
  (gm_d, gh_d), (gm_c, gh_c) = grad(dense, hidden), grad(chunked, hidden)
  np.testing.assert_allclose(gh_d, gh_c, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), gm_d, gm_c)


def test_adaptive_cutoff_errors():
  with pytest.raises(ValueError, match='increasing'):
    adaptive.AdaptiveSoftmax(V, 16, (15, 5), rngs=make_rngs())
  with pytest.raises(ValueError, match='vocab_size'):
    adaptive.AdaptiveInput(V, 16, (5, V), rngs=make_rngs())
  with pytest.raises(ValueError, match='adaptive_cutoffs'):
    make_lm(adaptive_cutoffs=(), adaptive_softmax=True, tie_embeddings=False)


def test_adaptive_input_against_numpy():
  emb = adaptive.AdaptiveInput(V, 16, (5, 15), factor=2.0, rngs=make_rngs())
  tokens = np.arange(V, dtype=np.int32)[None]
  out = np.asarray(emb(jnp.asarray(tokens)), np.float64)
  for band, (lo, hi) in enumerate(zip(emb.edges[:-1], emb.edges[1:])):
    table, proj = (np.asarray(a, np.float64) for a in emb.band_weights(band))
    assert table.shape == (hi - lo, 16 // 2**band)
    np.testing.assert_allclose(out[0, lo:hi], table @ proj, atol=1e-5)


def test_adaptive_input_with_tied_adaptive_softmax():
  model = make_lm(**ADAPTIVE, tie_embeddings=True)
  asm = model.adaptive_softmax
  # Only the cluster weights are the softmax's own; the rest is read from the adaptive input.
  own = nnx.state(asm, nnx.Param)
  assert [p.shape for p in jax.tree.leaves(own)] == [(16, 2)]
  tokens = random_tokens(6)
  hidden, lp, nll = outputs(model, tokens, tokens)
  np.testing.assert_allclose(np.exp(np.asarray(lp, np.float64)).sum(-1), 1.0, atol=1e-5)
  ref = np_adaptive_log_probs(asm, hidden, tied=model.embed)
  np.testing.assert_allclose(lp, ref, atol=1e-5)
  np.testing.assert_allclose(
      nll, -np.take_along_axis(ref, np.asarray(tokens)[..., None], -1)[..., 0], atol=1e-5)
  # The output side reaches the tied input tables: a word that never appears as input still gets
  # a gradient on its embedding row through the softmax normaliser.
  grads = nnx.jit(nnx.grad(lambda m: m.token_nll(m(tokens), tokens).sum()))(model)
  g_tail = np.asarray(grads['embed']['embeddings'][2]['embedding'][...])
  assert np.all(np.abs(g_tail).sum(-1) > 0)


def test_adaptive_softmax_untied_lm():
  model = make_lm(**ADAPTIVE, tie_embeddings=False)
  tokens = random_tokens(7)
  hidden, lp, _ = outputs(model, tokens, tokens)
  ref = np_adaptive_log_probs(model.adaptive_softmax, hidden)
  np.testing.assert_allclose(lp, ref, atol=1e-5)


# -- positions ---------------------------------------------------------------------------------


@pytest.mark.parametrize('d_model', [16, 7])
def test_sinusoidal_matches_numpy(d_model):
  pos = np.arange(50)
  half = d_model // 2
  inv_freq = np.exp(-np.arange(half) * math.log(10000.0) / (half - 1))
  ang = pos[:, None] * inv_freq[None]
  expected = np.concatenate([np.sin(ang), np.cos(ang)], -1)
  if d_model % 2:
    expected = np.pad(expected, ((0, 0), (0, 1)))
  got = positions_lib.sinusoidal(jnp.asarray(pos), d_model)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  # Position 0 is (0…0, 1…1): positions start at 0.
  np.testing.assert_allclose(got[0, :half], 0.0)
  np.testing.assert_allclose(got[0, half:2 * half], 1.0)


def test_default_positions_are_arange():
  model = make_lm()
  tokens = random_tokens(8)
  np.testing.assert_allclose(
      forward(model, tokens),
      forward(model, tokens, positions=jnp.broadcast_to(jnp.arange(T), (B, T))), atol=1e-6)


# -- dtype -------------------------------------------------------------------------------------


def test_bfloat16_keeps_float32_params_and_close_loss():
  tokens = random_tokens(9)
  m32, m16 = make_lm(), make_lm(dtype='bfloat16')
  for p in jax.tree.leaves(nnx.state(m16, nnx.Param)):
    assert p.dtype == jnp.float32
  h16, _, nll16 = outputs(m16, tokens, tokens)
  assert h16.dtype == jnp.bfloat16
  assert m16.logits(h16).dtype == jnp.float32
  l32 = float(outputs(m32, tokens, tokens)[2].mean())
  assert nll16.dtype == jnp.float32
  l16 = float(nll16.mean())
  assert np.isfinite(l16)
  assert abs(l16 - l32) < 0.05 * l32, (l16, l32)


# -- attention weights, cores, cross-attention -------------------------------------------------


def test_sow_weights_per_layer():
  model = make_lm(num_layers=2)
  valid = jnp.ones((B, T), bool)
  model(random_tokens(), valid=valid, sow_weights=True)
  inter = nnx.pop(model, nnx.Intermediate)
  assert len(model.layers) == 2
  for i in range(2):
    (w,) = inter['layers'][i]['self_attention']['core']['attention_weights'].get_value()
    w = np.asarray(w)
    assert w.shape == (B, 2, T, T)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    assert np.all(w[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0)
  # Popped: a second pop finds nothing, and a call without sow_weights sows nothing.
  model(random_tokens())
  assert not jax.tree.leaves(nnx.state(model, nnx.Intermediate))


def test_prior_mask_and_bias_from_attention_config():
  model = make_lm(num_layers=1, attention_overrides={'mask': 'local_window(2)',
                                                     'bias': 'learnable(alibi())'})
  attn = model.layers[0].self_attention
  assert attn.prior_mask is not None and attn.score_mod is not None
  # The learnable bias is a parameter of the model.
  assert any('score_mod' in '/'.join(map(str, path))
             for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)))
  forward_sow = nnx.jit(lambda m, t: m(t, sow_weights=True))
  forward_sow(model, random_tokens())
  inter = nnx.pop(model, nnx.Intermediate)
  (w,) = inter['layers'][0]['self_attention']['core']['attention_weights'].get_value()
  i, j = np.indices((T, T))
  w = np.asarray(w)
  assert np.all(w[..., (j > i) | (j < i - 2)] == 0)
  assert np.all(w[..., (j <= i) & (j >= i - 2)] > 0)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


class _GroupedCore(nnx.Module):
  """A test core asking for 2 query heads sharing 1 KV head, with wider values."""

  @classmethod
  def projection_shape(cls, num_heads, head_dim):
    return num_heads, 1, head_dim, head_dim + 4

  def __init__(self, *, num_heads, head_dim, config, rngs, layer_index=0, max_len=0):
    self.inner = SoftmaxAttention(num_heads=num_heads, head_dim=head_dim, config=config,
                                  rngs=rngs)

  def __call__(self, q, k, v, mask=None, *, score_mod=None, deterministic=True,
               sow_weights=False):
    n = q.shape[2]
    k = jnp.repeat(k, n, axis=2)
    v = jnp.repeat(v, n, axis=2)
    return self.inner(q, k, v, mask, score_mod=score_mod, deterministic=deterministic,
                      sow_weights=sow_weights)


def test_core_projection_shape(monkeypatch):
  monkeypatch.setitem(attention.registry._CORES, '_grouped_test', _GroupedCore)
  mha = transformer.MultiHeadAttention(16, 2, tiny_attention_config(kind='_grouped_test'),
                                       max_len=16, rngs=make_rngs())
  assert mha.k_proj.kernel[...].shape == (16, 8)
  assert mha.v_proj.kernel[...].shape == (16, 12)
  assert mha.out_proj.kernel[...].shape == (24, 16)
  x = random_normal(0, (B, T, 16))
  assert mha(x, mask=masks_lib.causal(), deterministic=True).shape == (B, T, 16)


def test_cross_attention_block():
  block = transformer.DecoderBlock(16, 2, 32, tiny_attention_config(), max_len=16,
                                   cross_attention=True, rngs=make_rngs())
  x = random_normal(0, (B, T, 16))
  memory = random_normal(1, (B, 5, 16))
  src_valid = jnp.array([[True] * 5, [True] * 3 + [False] * 2])
  out = block(x, masks_lib.causal(), memory=memory,
              memory_mask=masks_lib.padding(None, src_valid), deterministic=True)
  assert out.shape == (B, T, 16)
  # Padded memory positions are ignored.
  memory2 = memory.at[1, 3:].set(100.0)
  out2 = block(x, masks_lib.causal(), memory=memory2,
               memory_mask=masks_lib.padding(None, src_valid), deterministic=True)
  np.testing.assert_allclose(out[1], out2[1], atol=1e-5)
  with pytest.raises(ValueError, match='memory'):
    block(x, deterministic=True)


def test_model_is_a_tree():
  """No shared submodules: tree-mode split works and state leaves are unique."""
  model = make_lm(**ADAPTIVE, tie_embeddings=True)
  graphdef, state = nnx.split(model, graph=False)
  merged = nnx.merge(graphdef, state)
  tokens = random_tokens()
  np.testing.assert_allclose(forward(merged, tokens), forward(model, tokens), atol=1e-6)


def test_gelu_is_the_exact_form_on_both_paths_against_float64():
  # GELU(x) = x·Φ(x) = x·erfc(−x/√2)/2 and its derivative Φ(x) + x·φ(x), in float64; the CPU
  # path (erf form) and the generic path (jax.nn.gelu, erfc form) stay within two float32
  # rounding steps of max(1, |x|), the tail and the large |x| included.
  x = np.concatenate([np.linspace(-40, 40, 40001), [-1e4, -20.5, -5.25, 1e-30, 0.0, 3e4]])
  x = x.astype(np.float32)
  x64 = x.astype(np.float64)
  erfc = np.vectorize(math.erfc)
  value = 0.5 * x64 * erfc(-x64 / math.sqrt(2))
  slope = 0.5 * erfc(-x64 / math.sqrt(2)) + x64 * np.exp(-x64 ** 2 / 2) / math.sqrt(2 * math.pi)
  bound = 2 * np.finfo(np.float32).eps * np.maximum(1.0, np.abs(x64))
  paths = [contextlib.nullcontext(), cpu_paths.disabled()]
  if jax.default_backend() != 'cpu':
    paths = paths[1:]
  for path in paths:
    with path:  # a fresh function per path: jit caches traces by function
      gelu = lambda v: transformer.gelu(v)  # noqa: E731
      y = np.asarray(jax.jit(gelu)(x), np.float64)
      dy = np.asarray(jax.jit(jax.vmap(jax.grad(gelu)))(x), np.float64)
    assert (np.abs(y - value) <= bound).all(), np.abs(y - value).max()
    assert (np.abs(dy - slope) <= 4 * np.finfo(np.float32).eps).all(), np.abs(dy - slope).max()


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the CPU paths are CPU-only')
def test_cpu_paths_compute_what_the_generic_paths_compute():
  # 130 tokens: on CPU the causal softmax runs in query blocks of 64 and the linear layers
  # multiply [B·T, D] matrices (attention/cpu_paths.py); loss and gradients are those of the
  # generic computation.
  model = make_lm(max_len=160, activation='gelu')
  tokens = random_tokens(3, (B, 130))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params):
    lm = nnx.merge(graphdef, params, rest)
    return jnp.mean(lm.token_nll(lm(tokens), tokens))

  fast = jax.jit(jax.value_and_grad(loss))(params)
  with cpu_paths.disabled():
    generic = jax.jit(jax.value_and_grad(lambda p: loss(p)))(params)
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(generic)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_dropout_reseed_changes_output_and_is_deterministic():
  model = make_lm(dropout=0.3)
  tokens = random_tokens()
  nnx.reseed(model, dropout=key(0))
  a = forward(model, tokens, deterministic=False)
  nnx.reseed(model, dropout=key(0))
  b = forward(model, tokens, deterministic=False)
  c = forward(model, tokens, deterministic=False)
  np.testing.assert_allclose(a, b)
  assert not np.allclose(a, c)
  np.testing.assert_allclose(forward(model, tokens), forward(model, tokens))


# -- config validation -------------------------------------------------------------------------


@pytest.mark.parametrize('overrides, option', [
    ({'d_model': 18, 'num_heads': 4}, 'num_heads'),
    ({'vocab_size': -1}, 'vocab_size'),
    ({'dtype': 'float16'}, 'model.dtype'),
    ({'positions': 'rotary'}, 'model.positions'),
    ({'activation': 'swish'}, 'model.activation'),
    ({'dropout': 1.0}, 'model.dropout'),
    ({'adaptive_softmax': True, 'adaptive_cutoffs': (5, 15)}, 'tie_embeddings'),
    ({'adaptive_softmax': True, 'adaptive_cutoffs': (5, 40), 'tie_embeddings': False},
     'adaptive_cutoffs'),
    ({'adaptive_input': True, 'adaptive_softmax': True, 'adaptive_cutoffs': (5, 15),
      'adaptive_factor': 32.0}, 'adaptive_factor'),
])
def test_config_errors(overrides, option):
  with pytest.raises(ValueError, match=option):
    make_lm(**overrides)


def test_vocab_size_error_says_it_comes_from_data():
  with pytest.raises(ValueError, match='set from the'):
    make_lm(vocab_size=-1)


def test_unknown_attention_kind():
  with pytest.raises(ValueError, match='attention.kind'):
    make_lm(attention_overrides={'kind': 'nope'})
