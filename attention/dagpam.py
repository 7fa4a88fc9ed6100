"""daGPAM: dual-attention generalized probabilistic attention (Heo & Choi 2024, "Generalized
Probabilistic Attention Mechanism in Transformers", arXiv:2410.15578).

`attention.kind=dagpam`. GPAM lets attention weights be negative while keeping a fixed row sum
and a finite range, so a head outputs an *affine* (not convex) combination of the values. daGPAM
builds such a map from two softmax maps over the same keys. The paper's equations were not
available in full; this is the most plausible reconstruction ("reading A") from its abstract and
its ICLR 2025 reviews, which describe ReLU on the queries, a learned W_Q⁻ and two maps weighted
by λ⁺ and λ⁻ (see "Uncertain" below):

    Q⁻ = ReLU(Q) W_Q⁻ (+ b_Q⁻)                     per head, W_Q⁻ ∈ R^{H×H}, H = head width
    A⁺ = Q Kᵀ/√H (+ score mod),   A⁻ = Q⁻ Kᵀ/√H (+ score mod),   the same mask on both
    P⁺ = softmax(A⁺),   P⁻ = softmax(A⁻)
    P  = (1 + λ⁺) P⁺ − λ⁻ P⁻                       (`combination='affine'`, reading A)
    P  =      λ⁺  P⁺ − λ⁻ P⁻                       (`combination='difference'`, reading B)
    out = P V

K and V are shared by both branches, so the KV cache and the Q/K/V/output projections are those
of softmax attention; the only new parameters are W_Q⁻ (and its bias) and the λs. Each row of P
sums to 1 + λ⁺ − λ⁻ (reading A; λ⁺ − λ⁻ for reading B) whatever the input, and its entries lie
in [−λ⁻, 1 + λ⁺]. A query that sees no key gets an all-zero row of P and outputs exact zeros.

Options (`attention.dagpam.*`):
  combination: 'affine' (reading A, default) | 'difference' (reading B).
  share_wq_neg: True: one W_Q⁻ [H, H] per attention module, shared by its heads (the count that
    reproduces the +0.1 % to +0.84 % parameters the reviews quote: +0.75 % for fairseq's IWSLT14
    shape, +0.12 % for WMT14 base, benchmarks/param_overhead.py); False: one per head [N, H, H].
  wq_neg_init: 'neg_identity' (W_Q⁻ = −I, default) | 'default' (Xavier-uniform with the
    fairseq Q/K/V gain 1/√2, as the layer's other projections). −I is the paper's analytic
    regime (Lemma 6 takes ReLU ≈ identity and W_Q⁻ ≈ −I, so A⁻ ≈ −A⁺): the negative map
    starts as a well-defined "anti-attention" map that favours the keys the positive map
    disfavours, and training moves W_Q⁻ from there; a random W_Q⁻ starts from an unrelated map.
  wq_neg_bias: add a bias b_Q⁻ (zero-initialised) to the negative-query projection.
  lambda_pos, lambda_neg: λ⁺, λ⁻ ≥ 0, the fixed values or the initial values of trainable λs.
    The paper's values are not known (they differ per task); the defaults 0.5 / 0.5 make every
    row of P sum to exactly 1 under reading A (as an independent third-party daGPAM
    implementation, (1 + S)·P⁺ − S·P⁻ with S initialised to 0.5). Under reading B, 0.5 / 0.5
    gives rows summing to 0: use e.g. 1.5 / 0.5 to get reading A's map.
  trainable_lambdas: learn λ⁺ and λ⁻ (the paper's "Trainable λs" row) instead of fixing them.
  lambda_granularity: 'layer' (one λ⁺ and one λ⁻ per attention module) | 'head' (one per head);
    only meaningful with trainable_lambdas (fixed λs are the same for every head).
  lambda_param: how a trainable λ is stored. 'softplus': λ = softplus(ρ) with ρ initialised to
    softplus⁻¹(λ_init) = log(exp(λ_init) − 1), so λ stays > 0 throughout training (needs
    λ_init > 0); 'raw': λ is the parameter itself (any sign once training moves it).
  sow_branches: with `sow_weights=True`, also sow P⁺ and P⁻ as 'positive_weights' and
    'negative_weights' `[B, N, T, S]` (next to the combined 'attention_weights') and (c⁺, c⁻)
    as 'branch_coefficients' (eval.py --analysis turns it on for the branch decomposition).

Uncertain (the full paper text was not available, and no official code was found):
  * reading A vs reading B of the combination (the switch `combination`); reading A is favoured
    by a reviewer's remark on the range of P in terms of 1 + λ⁺ and by the third-party code;
  * whether W_Q⁻ is shared across heads (`share_wq_neg`), its initialisation (`wq_neg_init`)
    and whether it has a bias (`wq_neg_bias`);
  * the λ granularity, parameterisation and values (`lambda_*`, `trainable_lambdas`);
  * where attention dropout goes: here on the combined P (one dropout mask, rescaled by
    1/(1 − p), so the expected row sum is kept), not on P⁺ and P⁻ separately;
  * whether "two linear layers" in the paper's parameter count means something beyond W_Q⁻.
Negative queries are computed in the compute dtype of q (as the layer's other projections);
scores, softmax, the λ combination and P·V in `accumulation_dtype(q, k, v)` (float32 for
bfloat16/float16/float32 inputs, float64 for float64; attention/registry.py).
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
from attention.registry import (accumulation_dtype, check_choice, check_implementation,
                                register)
from attention.softmax import attention_weights, scores_probe

IMPLEMENTATIONS = ('xla', 'pallas', 'auto')
COMBINATIONS = ('affine', 'difference')
WQ_NEG_INITS = ('neg_identity', 'default')
LAMBDA_GRANULARITIES = ('layer', 'head')
LAMBDA_PARAMS = ('softplus', 'raw')


def _softplus_inverse(y: float) -> float:
  """ρ with softplus(ρ) = y > 0: log(e^y − 1), written stably for large y."""
  return y + math.log(-math.expm1(-y))


def _option_error(option: str, value, expected: str) -> ValueError:
  return ValueError(f'attention.dagpam.{option}={value!r} is not supported; expected {expected}')


@register('dagpam')
class DaGPAMAttention(nnx.Module):
  """daGPAM core: `core(q, k, v, mask, *, score_mod, deterministic, sow_weights)`.

  Shapes: `q: [B, T, N, H]`, `k, v: [B, S, N, H]` → `[B, T, N, H]` in `v`'s dtype, computed in
  `accumulation_dtype(q, k, v)`. Reads `config.impl` (xla | pallas | auto), `config.dropout`
  (on the combined map P; xla only) and `config.dagpam.*`. `pallas` is the fused two-map
  kernel (attention/kernels/flash.py `two_map_attention`): one load of K and V per key tile
  feeds both score tiles and both online softmaxes, and P is never formed.
  """

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.combination = 'affine'           # affine: (1+λ⁺)P⁺ − λ⁻P⁻ | difference: λ⁺P⁺ − λ⁻P⁻
    c.share_wq_neg = True              # one W_Q⁻ [H, H] for all heads (False: one per head)
    c.wq_neg_init = 'neg_identity'     # neg_identity (−I, the paper's Lemma 6 regime) | default
    c.wq_neg_bias = False              # bias on the negative-query projection
    c.lambda_pos = 0.5                 # λ⁺ (fixed, or initial if trainable); not from the paper
    c.lambda_neg = 0.5                 # λ⁻; 0.5/0.5 makes rows sum to 1 (affine)
    c.trainable_lambdas = False        # learn λ⁺, λ⁻
    c.lambda_granularity = 'layer'     # layer | head (trainable λs only)
    c.lambda_param = 'softplus'        # softplus: λ = softplus(ρ) ≥ 0 | raw: λ = ρ
    c.sow_branches = False             # also sow P⁺/P⁻ as positive_/negative_weights
    return c

  # Attention over a key-padding mask equals the causal attention at that position, so a
  # decoder may cache keys/values and feed one query per step (models/seq2seq.py).
  supports_decode_cache = True

  def __init__(self, *, num_heads: int, head_dim: int, config, rngs: nnx.Rngs,
               layer_index: int = 0, max_len: int = 0):
    del layer_index, max_len  # unused
    self.impl = check_implementation(config, 'dagpam', IMPLEMENTATIONS)
    self.kernel_options = flash.kernel_options(config, head_dim, self.impl)
    c = config.dagpam
    for option, choices in (('combination', COMBINATIONS), ('wq_neg_init', WQ_NEG_INITS),
                            ('lambda_granularity', LAMBDA_GRANULARITIES),
                            ('lambda_param', LAMBDA_PARAMS)):
      check_choice('dagpam', option, c[option], choices)
    for option in ('share_wq_neg', 'wq_neg_bias', 'trainable_lambdas', 'sow_branches'):
      if not isinstance(c[option], bool):
        raise _option_error(option, c[option], 'True or False')
    for option in ('lambda_pos', 'lambda_neg'):
      value = c[option]
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
          0 <= value < math.inf):
        raise _option_error(option, value, 'a finite number ≥ 0 (λ⁺, λ⁻ ≥ 0)')
      if c.trainable_lambdas and c.lambda_param == 'softplus' and value == 0:
        raise _option_error(option, value, 'a number > 0 with lambda_param=softplus (λ = '
                            'softplus(ρ) never reaches 0); use lambda_param=raw to start at 0')

    self.num_heads, self.head_dim = num_heads, head_dim
    self.combination = c.combination
    self.share_wq_neg = c.share_wq_neg
    self.trainable_lambdas = c.trainable_lambdas
    self.lambda_param = c.lambda_param
    self.sow_branches = c.sow_branches

    # W_Q⁻: [H, H] shared, or [N, H, H] per head (rows: input features of ReLU(Q)).
    shape = (head_dim, head_dim) if c.share_wq_neg else (num_heads, head_dim, head_dim)
    if c.wq_neg_init == 'neg_identity':
      w = jnp.broadcast_to(jnp.diag(jnp.full((head_dim,), -1.0, jnp.float32)), shape)
    else:
      init = nnx.initializers.variance_scaling(
          0.5, 'fan_avg', 'uniform', in_axis=-2, out_axis=-1,
          batch_axis=() if c.share_wq_neg else (0,))
      w = init(rngs.params(), shape, jnp.float32)
    self.wq_neg = nnx.Param(w)
    self.bq_neg = nnx.Param(jnp.zeros(shape[:-2] + (head_dim,), jnp.float32)) if (
        c.wq_neg_bias) else None

    if c.trainable_lambdas:
      lam_shape = () if c.lambda_granularity == 'layer' else (num_heads,)
      to_param = _softplus_inverse if c.lambda_param == 'softplus' else float
      self.lambda_pos = nnx.Param(jnp.full(lam_shape, to_param(c.lambda_pos), jnp.float32))
      self.lambda_neg = nnx.Param(jnp.full(lam_shape, to_param(c.lambda_neg), jnp.float32))
    else:
      self.lambda_pos, self.lambda_neg = float(c.lambda_pos), float(c.lambda_neg)
    self.dropout = nnx.Dropout(config.dropout, rngs=rngs)

  def lambdas(self, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """(λ⁺, λ⁻) in `dtype`: scalars (per layer, or fixed) or `[N]` (per head)."""
    if not self.trainable_lambdas:
      return jnp.asarray(self.lambda_pos, dtype), jnp.asarray(self.lambda_neg, dtype)
    rho_pos, rho_neg = self.lambda_pos[...].astype(dtype), self.lambda_neg[...].astype(dtype)
    if self.lambda_param == 'softplus':
      return jax.nn.softplus(rho_pos), jax.nn.softplus(rho_neg)
    return rho_pos, rho_neg

  def coefficients(self, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """(c⁺, c⁻) in `dtype` with P = c⁺P⁺ − c⁻P⁻, broadcastable to `[B, N, T, S]`."""
    lam_pos, lam_neg = self.lambdas(dtype)
    c_pos = 1.0 + lam_pos if self.combination == 'affine' else lam_pos
    per_head = lambda x: x.reshape(x.shape + (1, 1)) if x.ndim else x  # [N] → [N, 1, 1]
    return per_head(c_pos), per_head(lam_neg)

  def negative_queries(self, q: jax.Array) -> jax.Array:
    """Q⁻ = ReLU(Q) W_Q⁻ (+ b_Q⁻): `[B, T, N, H]` → `[B, T, N, H]` in q's dtype."""
    w = self.wq_neg[...].astype(q.dtype)
    spec = 'btnh,hg->btng' if self.share_wq_neg else 'btnh,nhg->btng'
    q_neg = jnp.einsum(spec, jax.nn.relu(q), w)
    if self.bq_neg is not None:
      q_neg = q_neg + self.bq_neg[...].astype(q.dtype)
    return q_neg

  def weights(self, q: jax.Array, k: jax.Array, mask: Mask | None = None,
              score_mod: ScoreMod | None = None, *, probe: bool = False
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(P, P⁺, P⁻), each `[B, N, T, S]` in `accumulation_dtype(q, k)`; rows of P sum to
    c⁺ − c⁻ (0 if fully masked). `probe` marks the scores of both branches ('scores',
    'negative_scores') for gradients (softmax.scores_probe)."""
    p_pos = attention_weights(q, k, mask, score_mod,
                              scores_hook=scores_probe(self, probe, 'scores'))
    p_neg = attention_weights(self.negative_queries(q), k, mask, score_mod,
                              scores_hook=scores_probe(self, probe, 'negative_scores'))
    c_pos, c_neg = self.coefficients(p_pos.dtype)
    return c_pos * p_pos - c_neg * p_neg, p_pos, p_neg

  def __call__(self, q, k, v, mask: Mask | None = None, *, score_mod: ScoreMod | None = None,
               deterministic: bool = True, sow_weights: bool = False):
    if q.shape[-1] != self.head_dim or (not self.share_wq_neg and q.shape[2] != self.num_heads):
      raise ValueError(f'attention.kind=dagpam was built for {self.num_heads} heads of width '
                       f'{self.head_dim}; got q of shape {q.shape} ([B, T, N, H])')
    impl = self.impl if self.impl != 'auto' else kernel_backend.auto_implementation(
        'dagpam', q.dtype, dropout=self.dropout.rate,
        additive=score_mod is None or score_mod.additive)
    if impl == 'pallas' and not sow_weights:
      lam_pos, lam_neg = self.lambdas(accumulation_dtype(q, k, v))
      c_pos = 1.0 + lam_pos if self.combination == 'affine' else lam_pos
      out, _ = flash.two_map_attention(q, k, self.negative_queries(q), None, v, c_pos, lam_neg,
                                       mask, score_mod, **dict(self.kernel_options))
      return out
    p, p_pos, p_neg = self.weights(q, k, mask, score_mod, probe=sow_weights)
    if sow_weights:
      self.sow(nnx.Intermediate, 'attention_weights', p)
      if self.sow_branches:
        self.sow(nnx.Intermediate, 'branch_coefficients', self.coefficients(p.dtype))
        self.sow(nnx.Intermediate, 'positive_weights', p_pos)
        self.sow(nnx.Intermediate, 'negative_weights', p_neg)
    p = self.dropout(p, deterministic=deterministic)
    # One P·V product for both branches: combining the maps first costs one T×S×H product.
    out = jnp.einsum('bnts,bsnh->btnh', p.astype(v.dtype), v,
                     preferred_element_type=accumulation_dtype(q, k, v))
    return out.astype(v.dtype)
