"""Differential attention (Ye et al. 2024, "Differential Transformer", arXiv:2410.05258).

`attention.kind=diff`, as the official microsoft/unilm `Diff-Transformer/multihead_diffattn.py`
(the naive, non-FlashAttention version). With d = d_model / model.num_heads (the baseline head
width), the layer projects half as many heads, each of width 2d (`projection_shape`), so the
Q/K/V/output projections have exactly the baseline's parameters. For each of the N/2 heads:

    [Q1; Q2] = q,  [K1; K2] = k     (the first and second d features of the 2d-wide head)
    DiffAttn = (softmax(Q1 K1ᵀ/√d) − λ · softmax(Q2 K2ᵀ/√d)) V          (V of width 2d)
    λ = exp(λ_q1 · λ_k1) − exp(λ_q2 · λ_k2) + λ_init                    (λ_* ∈ R^d)
    λ_init = 0.8 − 0.6 · exp(−0.3 · layer_index)                        (layer_index 0-based)
    head = (1 − λ_init) · RMSNorm(DiffAttn)                             (over the 2d features)

As in the official code: one λ per layer shared by its heads; λ vectors initialised N(0, 0.1);
RMSNorm ("subln") with ε = 1e-5 and one learnable scale of size 2d shared by the heads;
softmax in float32 (here in `accumulation_dtype(q, k, v)`: float32 for bfloat16/float16/
float32 inputs, float64 for float64); the mask is applied to both maps before the softmax. The
official code views q/k as 2·(N/2) = N heads of width d (head 2h is Q1 of pair h, 2h + 1 its
Q2); the score mod and the mask see the scores in that layout, `[B, N, T, S]`, so a per-head
prior built for model.num_heads heads applies to each of the N half-heads. The paper writes the
schedule with a 1-based l, λ_init = 0.8 − 0.6·exp(−0.3(l − 1)), which is the same numbers.

Options (`attention.diff.*`):
  lambda_init: −1 (default) = the depth schedule above; a number in [0, 1) = that constant.
  lambda_std: standard deviation of the normal initialisation of λ_q1, λ_k1, λ_q2, λ_k2 (0.1).
  norm_eps: ε of the per-head RMSNorm (1e-5).

Implementations (`attention.impl`): `xla` (the map P1 − λP2 formed explicitly), `pallas` (the
fused two-map kernel of attention/kernels/flash.py: both maps' online softmaxes share each tile
of V, λ and its gradient go through the kernel, and the RMSNorm follows in XLA; no attention
dropout, and per-head priors only as position score mods such as ALiBi), `auto` (pallas on
GPU/TPU when it applies, else xla). Analysis (`sow_weights`) always runs the xla path.

Not in the official code, so uncertain here: `config.dropout` (the official naive
implementation has no attention dropout) is applied to the differential map P1 − λP2. A query
that sees no key has a zero DiffAttn row, which RMSNorm keeps at zero, so it outputs zeros.
Sown 'attention_weights' are the differential map P1 − λP2, `[B, N/2, T, S]` (rows sum to 1 − λ).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from attention.biases import ScoreMod
from attention.masks import Mask
from attention.kernels import backend as kernel_backend
from attention.kernels import flash
from attention.registry import accumulation_dtype, check_implementation, register
from attention.softmax import attention_weights, scores_probe


IMPLEMENTATIONS = ('xla', 'pallas', 'auto')


def lambda_init_for_depth(layer_index: int) -> float:
  """λ_init = 0.8 − 0.6·exp(−0.3·layer_index), layer_index 0-based (official `lambda_init_fn`)."""
  return 0.8 - 0.6 * math.exp(-0.3 * layer_index)


def _check_num_heads(num_heads: int) -> None:
  if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 2 or (
      num_heads % 2):
    raise ValueError(f'model.num_heads={num_heads!r} must be an even number ≥ 2 for '
                     'attention.kind=diff: DIFF pairs two heads of width d into one differential '
                     'head of width 2d (N/2 heads); choose an even model.num_heads')


@register('diff')
class DiffAttention(nnx.Module):
  """DIFF core: `core(q, k, v, mask, *, score_mod, deterministic, sow_weights)`.

  Built with the model's `num_heads` (N) and `head_dim` (d = d_model / N); called with
  `q, k: [B, T|S, N/2, 2d]`, `v: [B, S, N/2, 2d]` → `[B, T, N/2, 2d]` in `v`'s dtype, computed
  in `accumulation_dtype(q, k, v)`.
  """

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.lambda_init = -1.0   # −1: 0.8 − 0.6·exp(−0.3·layer_index); else a constant in [0, 1)
    c.lambda_std = 0.1     # λ_q1, λ_k1, λ_q2, λ_k2 ~ N(0, lambda_std²)
    c.norm_eps = 1e-5      # ε of the per-head RMSNorm (subln)
    return c

  @classmethod
  def projection_shape(cls, num_heads: int, head_dim: int) -> tuple[int, int, int, int]:
    """Half the heads, each twice as wide: `(N/2, N/2, 2d, 2d)`."""
    _check_num_heads(num_heads)
    return num_heads // 2, num_heads // 2, 2 * head_dim, 2 * head_dim

  # Attention over a key-padding mask equals the causal attention at that position, so a
  # decoder may cache keys/values and feed one query per step (models/seq2seq.py).
  supports_decode_cache = True

  def __init__(self, *, num_heads: int, head_dim: int, config, rngs: nnx.Rngs,
               layer_index: int = 0, max_len: int = 0):
    del max_len  # unused
    _check_num_heads(num_heads)
    self.impl = check_implementation(config, 'diff', IMPLEMENTATIONS)
    self.kernel_options = flash.kernel_options(config, head_dim, self.impl)
    c = config.diff
    lam = c.lambda_init
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (
        lam == -1 or 0 <= lam < 1):
      raise ValueError(f'attention.diff.lambda_init={lam!r} is not supported; expected -1 (the '
                       'depth schedule 0.8 − 0.6·exp(−0.3·layer_index)) or a number in [0, 1)')
    if isinstance(c.lambda_std, bool) or not isinstance(c.lambda_std, (int, float)) or not (
        0 <= c.lambda_std < math.inf):
      raise ValueError(f'attention.diff.lambda_std={c.lambda_std!r} is not supported; expected '
                       'a finite number ≥ 0')
    if isinstance(c.norm_eps, bool) or not isinstance(c.norm_eps, (int, float)) or not (
        0 < c.norm_eps < math.inf):
      raise ValueError(f'attention.diff.norm_eps={c.norm_eps!r} is not supported; expected a '
                       'finite number > 0')
    self.num_heads, self.head_dim = num_heads, head_dim
    self.lambda_init = lambda_init_for_depth(layer_index) if lam == -1 else float(lam)
    self.norm_eps = float(c.norm_eps)

    def lambda_vector():
      return nnx.Param(c.lambda_std * jax.random.normal(rngs.params(), (head_dim,), jnp.float32))

    self.lambda_q1, self.lambda_k1 = lambda_vector(), lambda_vector()
    self.lambda_q2, self.lambda_k2 = lambda_vector(), lambda_vector()
    self.subln_scale = nnx.Param(jnp.ones((2 * head_dim,), jnp.float32))  # shared by the heads
    self.dropout = nnx.Dropout(config.dropout, rngs=rngs)

  def lambda_full(self, dtype=jnp.float32) -> jax.Array:
    """λ = exp(λ_q1·λ_k1) − exp(λ_q2·λ_k2) + λ_init, a scalar in `dtype` shared by the heads."""
    dot = lambda a, b: jnp.sum(a[...].astype(dtype) * b[...].astype(dtype))
    return (jnp.exp(dot(self.lambda_q1, self.lambda_k1))
            - jnp.exp(dot(self.lambda_q2, self.lambda_k2)) + self.lambda_init)

  def weights(self, q: jax.Array, k: jax.Array, mask: Mask | None = None,
              score_mod: ScoreMod | None = None, *, probe: bool = False) -> jax.Array:
    """The differential map P1 − λP2, `[B, N/2, T, S]` in `accumulation_dtype(q, k)`, for
    `q, k: [.., N/2, 2d]`. `probe` marks the half-head scores `[B, N, T, S]` as 'scores'
    for gradients (softmax.scores_probe)."""
    b, t, pairs, _ = q.shape
    s = k.shape[1]
    # [.., N/2, 2d] → [.., N, d]: head 2h is Q1 (K1) of pair h and 2h + 1 its Q2 (K2), as the
    # official `view(bsz, len, 2 * num_heads, head_dim)`; scale 1/√d comes from the width d.
    q_halves = q.reshape(b, t, 2 * pairs, self.head_dim)
    k_halves = k.reshape(b, s, 2 * pairs, self.head_dim)
    p = attention_weights(q_halves, k_halves, mask, score_mod,
                          scores_hook=scores_probe(self, probe))     # [B, N, T, S]
    p = p.reshape(b, pairs, 2, t, s)
    return p[:, :, 0] - self.lambda_full(p.dtype) * p[:, :, 1]

  def __call__(self, q, k, v, mask: Mask | None = None, *, score_mod: ScoreMod | None = None,
               deterministic: bool = True, sow_weights: bool = False):
    expected = (self.num_heads // 2, 2 * self.head_dim)
    for name, x in (('q', q), ('k', k), ('v', v)):
      if tuple(x.shape[2:]) != expected:
        raise ValueError(
            f'attention.kind=diff expects {name} of shape [B, T|S, {expected[0]}, {expected[1]}] '
            f'(model.num_heads/2 heads of width 2·head_dim, from DiffAttention.projection_shape); '
            f'got {tuple(x.shape)}')
    impl = self.impl if self.impl != 'auto' else kernel_backend.auto_implementation(
        'diff', q.dtype, dropout=self.dropout.rate,
        additive=score_mod is None or score_mod.additive)
    if impl == 'pallas' and not sow_weights:
      # The fused two-map kernel: Q1/K1 and Q2/K2 are the halves of each 2d-wide head, and
      # the priors of half-head 2h + m apply to map m of pair h, as in `weights`.
      d = self.head_dim
      out, _ = flash.two_map_attention(
          q[..., :d], k[..., :d], q[..., d:], k[..., d:], v, 1.0,
          self.lambda_full(accumulation_dtype(q, k, v)), mask, score_mod,
          interleaved_priors=True, **dict(self.kernel_options))
      out = out.astype(accumulation_dtype(q, k, v))                         # [B, T, N/2, 2d]
    else:
      p = self.weights(q, k, mask, score_mod, probe=sow_weights)
      if sow_weights:
        self.sow(nnx.Intermediate, 'attention_weights', p)
      p = self.dropout(p, deterministic=deterministic)
      out = jnp.einsum('bnts,bsnh->btnh', p.astype(v.dtype), v,
                       preferred_element_type=accumulation_dtype(q, k, v))  # [B, T, N/2, 2d]
    # subln: RMSNorm over each head's 2d features (at least float32, as the official RMSNorm),
    # then the fixed (1 − λ_init) that keeps the output scale of the baseline at initialisation.
    query_scale = jax.lax.rsqrt(jnp.mean(out * out, axis=-1) + self.norm_eps) * (
        1.0 - self.lambda_init)                                            # [B, T, N/2]
    value_scale = self.subln_scale[...].astype(out.dtype)                 # [2d]
    if sow_weights:
      # out_i = query_scale_i · Σ_j P_ij (value_scale ⊙ v_j): exact per query once the RMS of
      # its own context is fixed (the norm-based analysis decomposes this, analysis/norms.py).
      self.sow(nnx.Intermediate, 'query_scale', jnp.transpose(query_scale, (0, 2, 1)))
      self.sow(nnx.Intermediate, 'value_scale', value_scale)
    out = out * query_scale[..., None] * value_scale
    return out.astype(v.dtype)
