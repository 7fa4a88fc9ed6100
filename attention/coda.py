"""CoDA: compositional de-attention (Tay, Luu, Zhang, Wang & Hui 2019, "Compositional
De-Attention Networks", NeurIPS 2019).

`attention.kind=coda`. A quasi-attention: instead of a convex combination of the values, each
query adds (weight near +1), subtracts (near −1) or ignores (near 0) each value. The weight is
the product of a signed affinity and a gate that closes for keys far from the query:

    E_ij = α · s_ij,                s = q·kᵀ/√H (+ score mod)         (pairwise affinity)
    N_ij = −β · ‖q_i − k_j‖₁ / √H                                      (negative L1 distance)
    Ñ_ij = N_ij − mean_{j'∈A_i} N_ij'                                  (`centering='row'`)
    M_ij = tanh(E_ij) · sigmoid(Ñ_ij)  for j ∈ A_i,   0 otherwise      (A_i: keys i may see)
    out = M V

Entries of M lie in (−1, 1) and rows have no sum constraint. The paper computes E and N from
learned maps F_E, F_N of the two sequences; here, inside a Transformer's attention as the
paper's CoDA Transformer uses it (in place of softmax(QKᵀ/√d)), the layer's query and key
projections serve as both: q and k enter E and N alike.

Why the centring: N ≤ 0, so sigmoid(N) ≤ 1/2, and an L1 distance grows with the width H: with
unit-scale q and k, ‖q − k‖₁/√H ≈ 1.1·√H (9 for H = 64), so an uncentred gate starts near
sigmoid(−9) ≈ 10⁻⁴ for every key and the map is all but zero. Centring N to zero mean before
the sigmoid, as the paper is described to do, fixes that. Here the mean is over the keys each
query may see, so a causal model never
reads future keys through it (a mean over the whole matrix would) and a padded key changes
nothing; a query's gate is then about 1/2 for a key at its mean distance.

Options (`attention.coda.*`):
  alpha: α > 0, the scale of the affinity inside tanh (1).
  beta: β ≥ 0, the scale of the distance inside the sigmoid (1; 0 makes every gate 1/2).
  centering: 'row' (default, above) | 'none' (sigmoid(N) itself, in (0, 1/2]).
  scale_distance: divide the L1 distance by √H as the dot product is (True) or not (False).

Uncertain (the paper's text was not available to check while writing this; the formula is the
paper's as it is commonly quoted): the values of α and β, whether N is centred and over what
(`centering`), how the CoDA Transformer scales the two terms (here both by 1/√H,
`scale_distance`), and whether F_N has projections of its own (here it shares q and k).

A score mod (`attention.bias`) is applied to s before α and tanh, as for every core, but it is
no longer a log-prior: an additive B moves the affinity, tanh(α(s + B)). Prior masks restrict
A_i. Attention dropout (`attention.dropout`) drops entries of M. A query that sees no key
outputs exact zeros. Computation in `accumulation_dtype(q, k, v)` (attention/registry.py),
the L1 distance included. `l1_distances` sums |q_i − k_j| in one reduction that XLA fuses with
the differences, and has a custom VJP that keeps only q and k for the backward pass and goes
through the features one at a time, so no `[B, N, T, S, H]` tensor of differences is stored
between the passes or formed in the backward pass.
Sown 'attention_weights' are M (signed; the exact map that multiplies the values).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from attention import masks as masks_lib
from attention.biases import ScoreMod
from attention.masks import Mask
from attention.registry import check_choice, check_implementation, check_number, register
from attention.softmax import DenseMapCore, scaled_scores, scores_probe

IMPLEMENTATIONS = ('xla',)
CENTERINGS = ('row', 'none')


@jax.custom_vjp
def l1_distances(q: jax.Array, k: jax.Array) -> jax.Array:
  """‖q_i − k_j‖₁ `[B, N, T, S]` for `q: [B, T, N, H]`, `k: [B, S, N, H]`."""
  return jnp.sum(jnp.abs(_differences(q, k)), axis=-1)


def _differences(q, k):
  """q_i − k_j `[B, N, T, S, H]`, for the reduction that consumes it (and is fused with it)."""
  return (jnp.transpose(q, (0, 2, 1, 3))[:, :, :, None, :]
          - jnp.transpose(k, (0, 2, 1, 3))[:, :, None, :, :])


def _l1_forward(q, k):
  return l1_distances(q, k), (q, k)


def _l1_backward(residuals, g):
  """∂‖q_i − k_j‖₁/∂q_ih = sign(q_ih − k_jh) = −∂/∂k_jh, recomputed from q and k.

  One feature h at a time (`lax.scan` over H): each step forms a `[B, N, T, S]` sign map and
  reduces it over S (for dq) and T (for dk), so the backward pass needs O(B·N·T·S) memory,
  not the O(B·N·T·S·H) of the differences that plain autodiff would keep.
  """
  q, k = residuals
  g = g.astype(q.dtype)

  def feature(_, qk_h):
    q_h, k_h = qk_h                                                         # [B, T, N], [B, S, N]
    weighted = g * jnp.sign(jnp.transpose(q_h, (0, 2, 1))[..., :, None]
                            - jnp.transpose(k_h, (0, 2, 1))[..., None, :])  # [B, N, T, S]
    return None, (jnp.sum(weighted, axis=-1), -jnp.sum(weighted, axis=-2))  # [B, N, T], [B, N, S]

  _, (dq, dk) = jax.lax.scan(feature, None, (jnp.moveaxis(q, -1, 0), jnp.moveaxis(k, -1, 0)))
  return jnp.transpose(dq, (1, 3, 2, 0)), jnp.transpose(dk, (1, 3, 2, 0))   # [B, T|S, N, H]


l1_distances.defvjp(_l1_forward, _l1_backward)


@register('coda')
class CodaAttention(DenseMapCore):
  """CoDA core: `core(q, k, v, mask, *, score_mod, deterministic, sow_weights)`.

  Shapes: `q: [B, T, N, H]`, `k, v: [B, S, N, H]` → `[B, T, N, H]` in `v`'s dtype. Reads
  `config.impl` (xla; auto = xla), `config.dropout` (on M) and `config.coda.*`.
  """

  kind = 'coda'

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.alpha = 1.0                  # α: tanh(α·s)
    c.beta = 1.0                   # β: sigmoid(−β·‖q − k‖₁/√H, centred)
    c.centering = 'row'            # row: subtract the mean over the keys a query sees | none
    c.scale_distance = True        # divide the L1 distance by √H
    return c

  # The gate is centred over the keys the query sees, so a key-padding mask gives the causal
  # attention at that position (models/seq2seq.py decoding).
  supports_decode_cache = True

  def __init__(self, *, num_heads: int, head_dim: int, config, rngs: nnx.Rngs,
               layer_index: int = 0, max_len: int = 0):
    del layer_index, max_len  # unused
    check_implementation(config, 'coda', IMPLEMENTATIONS)
    c = config.coda
    self.alpha = check_number('coda', 'alpha', c.alpha, minimum=0.0, strict=True)
    self.beta = check_number('coda', 'beta', c.beta, minimum=0.0, strict=False)
    check_choice('coda', 'centering', c.centering, CENTERINGS)
    check_choice('coda', 'scale_distance', c.scale_distance, (True, False))
    self.centering, self.scale_distance = c.centering, c.scale_distance
    self.num_heads, self.head_dim = num_heads, head_dim
    self.dropout = nnx.Dropout(config.dropout, rngs=rngs)

  def weights(self, q: jax.Array, k: jax.Array, mask: Mask | None = None,
              score_mod: ScoreMod | None = None, *, probe: bool = False) -> jax.Array:
    """M `[B, N, T, S]` in `accumulation_dtype(q, k)`; `probe` marks s as 'scores'."""
    s = scaled_scores(q, k, score_mod, scores_hook=scores_probe(self, probe))
    dtype = s.dtype
    distance = l1_distances(q.astype(dtype), k.astype(dtype))
    if self.scale_distance:
      distance = distance / math.sqrt(q.shape[-1])
    allowed = masks_lib.allowed_keys(mask, s.shape)
    gate_logits = -self.beta * distance                                     # N
    if self.centering == 'row':
      mean, _ = masks_lib.row_mean(gate_logits, allowed)
      gate_logits = gate_logits - mean                                      # Ñ
    m = jnp.tanh(self.alpha * s) * jax.nn.sigmoid(gate_logits)
    return jnp.where(allowed, m, jnp.zeros((), dtype))
