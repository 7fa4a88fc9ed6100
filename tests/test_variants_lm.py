"""Every registered attention kind inside the shared LM: causal, padding, sow, masks, gradients.

The per-variant files test each core against its own float64 reference; this file checks the
contract they all share once they sit in `models.lm.TransformerLM`, so a new variant is covered
by registering it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention
from configs import common
from models import lm as lm_lib

B, T, V = 2, 12, 41

# Small options so the tiny model exercises each algorithm's real path (top-k keeps fewer keys
# than T; SEA compresses T keys into fewer columns; Performer uses a few features).
SMALL_OPTIONS = {
    'topk': {'k': 4, 'query_chunk_size': 5},
    'performer': {'num_features': 16, 'chunk_size': 4},
    'sea': {'predictor_length': 8, 'k': 2, 'distill': False},
}
# Kinds that never form the T×S score matrix and so support only causal and padding masks.
LINEAR_KINDS = ('performer', 'sea')


def kinds():
  return attention.known_kinds()


def key(seed):
  return jax.random.key(seed, impl='rbg')


def make_lm(kind, mask='', seed=0):
  m = common.model_config()
  m.num_layers, m.d_model, m.num_heads, m.d_ff, m.max_len, m.vocab_size = 2, 32, 4, 64, 32, V
  a = common.attention_config()
  a.kind = kind
  a.mask = mask
  for option, value in SMALL_OPTIONS.get(kind, {}).items():
    a[kind][option] = value
  return lm_lib.TransformerLM(m, a, rngs=nnx.Rngs(params=key(seed), dropout=key(seed + 1)))


def tokens(seed=0):
  return jax.random.randint(jax.random.key(seed), (B, T), 0, V)


@pytest.mark.parametrize('kind', kinds())
def test_causal_no_leak(kind):
  model = make_lm(kind)
  x = tokens()
  h = model(x, deterministic=True)
  for p in (T // 3, T - 2):
    x2 = x.at[:, p:].set((x[:, p:] + 7) % V)
    h2 = model(x2, deterministic=True)
    np.testing.assert_allclose(np.asarray(h2[:, :p]), np.asarray(h[:, :p]), atol=1e-5,
                               err_msg=f'{kind}: changing tokens from {p} on moved earlier outputs')
    assert not np.allclose(np.asarray(h2[:, p:]), np.asarray(h[:, p:]))


@pytest.mark.parametrize('kind', kinds())
def test_padding_hides_padded_tokens(kind):
  """Right padding: what stands in the padded slots cannot change the valid positions."""
  model = make_lm(kind)
  x = tokens()
  lengths = jnp.array([T, T - 5])
  valid = jnp.arange(T)[None, :] < lengths[:, None]
  h = model(x, valid=valid, deterministic=True)
  x2 = jnp.where(valid, x, (x + 3) % V)
  h2 = model(x2, valid=valid, deterministic=True)
  np.testing.assert_allclose(np.asarray(jnp.where(valid[..., None], h2, 0)),
                             np.asarray(jnp.where(valid[..., None], h, 0)), atol=1e-5)
  assert np.isfinite(np.asarray(h)).all()


@pytest.mark.parametrize('kind', kinds())
def test_gradients_are_finite_with_padding(kind):
  model = make_lm(kind)
  x = tokens(1)
  valid = jnp.arange(T)[None, :] < jnp.array([[T], [3]])
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p):
    mdl = nnx.merge(graphdef, p, rest)
    nll = mdl.token_nll(mdl(x, valid=valid, deterministic=True), x)
    return jnp.sum(nll * valid)

  grads = jax.grad(loss)(params)
  leaves = jax.tree.leaves(grads)
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0


@pytest.mark.parametrize('kind', kinds())
def test_every_kind_sows_attention_weights(kind):
  model = make_lm(kind)
  x = tokens(2)
  model(x, deterministic=True, sow_weights=True)
  inter = nnx.pop(model, nnx.Intermediate)
  for i in range(2):
    (w,) = inter['layers'][i]['self_attention']['core']['attention_weights'].get_value()
    assert w.ndim == 4 and w.shape[0] == B and w.shape[2:] == (T, T), w.shape
    w = np.asarray(w)
    assert np.isfinite(w).all()
    # Nothing sown above the diagonal: the weights respect the causal mask.
    assert np.all(w[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0)


@pytest.mark.parametrize('kind', kinds())
def test_prior_mask_applies_or_is_refused(kind):
  """A prior mask either changes the attention as the mask says, or the config is refused."""
  if kind in LINEAR_KINDS:
    with pytest.raises(ValueError, match=f'attention.kind={kind}'):
      make_lm(kind, mask='local_window(2)')(tokens(), deterministic=True)
    return
  model = make_lm(kind, mask='local_window(2)')
  x = tokens(3)
  model(x, deterministic=True, sow_weights=True)
  (w,) = nnx.pop(model, nnx.Intermediate)['layers'][0]['self_attention']['core'][
      'attention_weights'].get_value()
  i, j = np.indices((T, T))
  assert np.all(np.asarray(w)[..., (i - j) > 2] == 0), 'weights outside the local window'
