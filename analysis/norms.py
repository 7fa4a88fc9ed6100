"""Norm-based analysis of attention: ‖α f(x)‖ instead of α alone, for every attention kind.

Kobayashi, Kuribayashi, Yokoi & Inui 2020, "Attention is Not Only a Weight: Analyzing
Transformers with Vector Norms" (arXiv:2004.10102), §3. A multi-head attention layer outputs

    Attn(x_i) = Σ_h Σ_j α^h_ij f^h(x_j) + b_O,      f^h(x) = (x W_V^h + b_V^h) W_O^h,

so what key j contributes to query i is the vector α^h_ij f^h(x_j), whose norm can be small
even when the weight is large. b_O is the same for every j and is left out; dropout is off.
`decompose` returns, per layer, from what the layer sowed (attention/registry.py):

  weights          α `[B, N, T, S]`: the core's map (signed for daGPAM and DIFF)
  transformed_norm ‖f^h(x_j)‖ `[B, N, S]`
  weighted_norm    ‖α^h_ij f^h(x_j)‖ = |α^h_ij| ‖f^h(x_j)‖ `[B, N, T, S]` (per head)
  summed_norm      ‖Σ_h α^h_ij f^h(x_j)‖ `[B, T, S]`: the layer-level norm map (the norm of
                   the head sum, not the sum of head norms)
  mean_weights     the head mean of α `[B, T, S]`: the layer-level weight map

The head-summed norm uses the Gram form ‖Σ_h c_h f^h‖² = cᵀ G c with G_j = F_j F_jᵀ (N × N per
key), so no `[B, T, S, D]` tensor is built: O(B·T·S·N²) instead of O(B·T·S·N·D).

Per kind, what is decomposed:
* softmax, top-k: α ≥ 0 (top-k's map is zero outside the kept keys). Exact.
* daGPAM: P = c⁺P⁺ − c⁻P⁻ has negative entries. ‖α f‖ = |α|·‖f‖ is the length of the
  contribution whatever its sign; a negative weight points it against f(x_j) (the value is
  subtracted). The head-summed norm keeps the signs (they can cancel across heads). The branch
  decomposition `branches` gives ‖c⁺P⁺ f‖ and ‖c⁻P⁻ f‖ (per head and head-summed): how much of
  each key is added by the positive map and taken away by the negative one. Exact.
* DIFF: each head is (1 − λ_init)·RMSNorm(Σ_j P_ij v_j) with P = P1 − λP2, and RMSNorm is not
  linear. Its scale factor depends on the query only, so with that factor fixed per query the
  output is exactly Σ_j P_ij s_i (g ⊙ v_j) W_O (s_i the sown 'query_scale', g the RMSNorm
  scale): this is what is decomposed, f^h_i(x_j) = s^h_i (g ⊙ v^h_j) W_O^h, exact for the
  layer's actual output, but the contribution of j is measured with the normaliser that all
  keys together produced (as the LayerNorm treatment of Kobayashi et al. 2021).
  `transformed_norm` is then ‖(g ⊙ v_j) W_O‖, without the query's factor.
* NON, NAP, CoDA: the map that multiplies the values (NON's includes its 1/√n_i), so the
  decomposition is exact; it is signed and its rows do not sum to 1 (NON's and NAP's are not
  even bounded). |α|‖f‖ is still the length of what key j adds (or, with α < 0, takes away),
  the -N mixing ratios compare vectors and ATTN-W compares |ᾱ| within a row, so these keep
  their meaning. Two weight-based numbers do not: a category's summed α ('weight') can be
  negative or exceed 1, so it is no share of the attention; and ATTNRES-W's 0.5ᾱ + 0.5I
  assumes rows that sum to 1 (Abnar & Zuidema's residual), so for these maps it mixes the
  residual in at an arbitrary relative scale. Read 'norm', 'share' and the -N ratios here.
* Performer: the implied map of its kernel features; the output is exactly that map times V,
  so the decomposition is exact, but the map is an estimate of softmax attention
  (`"weights": "estimate"` in the JSON).
* SEA: the sown map is the sparse branch σ(s_prob)·P; SEA's output also mixes an average
  branch in, so the reconstruction is not exact (reported as `reconstruction_error`), and the
  map is an estimate.
`reconstruction_error` = ‖context − Σ_j w_ij v'_j‖ / ‖context‖ checks each layer against the
context the layer itself computed: ~1e-7 where the decomposition is exact in float32.

Mixing ratios (Kobayashi et al. 2021, "Incorporating Residual and Normalization Layers into
Analysis of Masked Language Models", arXiv:2109.07152): for self-attention, how much of query
i's new state comes from the other tokens, r_i = ‖mix‖ / (‖mix‖ + ‖own‖) with
  ATTN-W      Σ_{j≠i} |ᾱ_ij| vs |ᾱ_ii| (ᾱ the head mean)
  ATTN-N      Σ_{j≠i} Σ_h α f vs Σ_h α_ii f(x_i)
  ATTNRES-W   Abnar & Zuidema's 0.5ᾱ + 0.5I: 0.5 Σ_{j≠i}|ᾱ_ij| vs |0.5ᾱ_ii + 0.5|
  ATTNRES-N   the same vectors with the residual x_i added to the own part
  ATTNRESLN-N both parts through the LayerNorm that follows the residual, g(z) = γ ⊙ (z −
              mean(z)) / s(y), s(y) the standard deviation of the whole sum y = x + Attn(x)
              (b_O included), β left out (the LN distributes over the sum).
Post-LN blocks (LN(x + Attn(x))) are what the 2021 paper decomposes. In a pre-LN block
(x + Attn(LN(x))) the attention reads LN(x_j), which is still a function of x_j alone, so
ATTN-* and ATTNRES-* are exact; no LN follows the residual inside the sublayer, and
ATTNRESLN-N here uses the LayerNorm the next sublayer applies to the sum (the FFN's, or the
cross-attention's in a decoder), which is what that sublayer reads.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ESTIMATED_KINDS = ('performer', 'sea')
LN_EPS = 1e-5


def transformed_vectors(values: jax.Array, w_out: jax.Array, value_scale=None) -> jax.Array:
  """f^h(x_j) `[B, S, N, D]` from `values: [B, S, N, H]` (v_proj output, bias included) and
  the output projection kernel `w_out: [N·H, D]`; `value_scale: [H]` (DIFF's RMSNorm scale)."""
  b, s, n, h = values.shape
  v = values.astype(jnp.float32)
  if value_scale is not None:
    v = v * value_scale.astype(jnp.float32)
  return jnp.einsum('bsnh,nhd->bsnd', v, w_out.astype(jnp.float32).reshape(n, h, -1))


def head_summed_norm(coefficients: jax.Array, f: jax.Array) -> jax.Array:
  """‖Σ_h c^h_ij f^h(x_j)‖ `[B, T, S]` by the Gram form; `coefficients: [B, N, T, S]`,
  `f: [B, S, N, D]`."""
  gram = jnp.einsum('bsnd,bsmd->bsnm', f, f)                               # [B, S, N, N]
  squared = jnp.einsum('bnts,bsnm,bmts->bts', coefficients, gram, coefficients)
  return jnp.sqrt(jnp.maximum(squared, 0.0))


def decompose(sown: dict[str, Any], w_out: jax.Array) -> dict[str, jax.Array]:
  """The norm-based quantities of one attention layer (module docstring) from its sows.

  `sown` holds the layer's 'attention_weights' `[B, N, T, S]`, 'values' `[B, S, N, H]`,
  'context' `[B, T, N, H]`, and DIFF's 'query_scale' `[B, N, T]` / 'value_scale' `[H]`.
  """
  weights = jnp.asarray(sown['attention_weights'], jnp.float32)
  f = transformed_vectors(sown['values'], w_out, sown.get('value_scale'))
  coefficients = weights
  if sown.get('query_scale') is not None:
    coefficients = weights * jnp.asarray(sown['query_scale'], jnp.float32)[..., None]
  f_norm = jnp.linalg.norm(f, axis=-1).transpose(0, 2, 1)                  # [B, N, S]
  out = {
      'weights': weights,
      'mean_weights': jnp.mean(weights, axis=1),
      'transformed_norm': f_norm,
      'weighted_norm': jnp.abs(coefficients) * f_norm[:, :, None, :],
      'summed_norm': head_summed_norm(coefficients, f),
      'coefficients': coefficients,
      'transformed': f,
  }
  if 'context' in sown:
    v = jnp.asarray(sown['values'], jnp.float32)
    if sown.get('value_scale') is not None:
      v = v * jnp.asarray(sown['value_scale'], jnp.float32)
    rebuilt = jnp.einsum('bnts,bsnh->btnh', coefficients, v)
    context = jnp.asarray(sown['context'], jnp.float32)
    out['reconstruction_error'] = (jnp.linalg.norm(rebuilt - context)
                                   / jnp.maximum(jnp.linalg.norm(context), 1e-30))
  return out


def branches(sown: dict[str, Any], f: jax.Array) -> dict[str, jax.Array]:
  """daGPAM's branch decomposition: per-head and head-summed norms of c⁺P⁺ f and c⁻P⁻ f.

  Needs 'positive_weights', 'negative_weights' (`attention.dagpam.sow_branches`) and
  'branch_coefficients'; `f` from `transformed_vectors`.
  """
  c_pos, c_neg = sown['branch_coefficients']
  f_norm = jnp.linalg.norm(f, axis=-1).transpose(0, 2, 1)[:, :, None, :]  # [B, N, 1, S]
  out = {}
  for name, p, c in (('positive', sown['positive_weights'], c_pos),
                     ('negative', sown['negative_weights'], c_neg)):
    coefficient = jnp.asarray(c, jnp.float32) * jnp.asarray(p, jnp.float32)
    out[f'{name}_weighted_norm'] = coefficient * f_norm
    out[f'{name}_summed_norm'] = head_summed_norm(coefficient, f)
  return out


def _layer_norm(z, scale, mean_source, eps=LN_EPS):
  """γ ⊙ (z − mean(z)) / s(y): the linear part of LayerNorm at the sum y (β left out)."""
  std = jnp.sqrt(jnp.var(mean_source, axis=-1, keepdims=True) + eps)
  return scale * (z - jnp.mean(z, axis=-1, keepdims=True)) / std


def mixing_ratios(parts: dict[str, jax.Array], residual: jax.Array, b_out: jax.Array,
                  ln_scale: jax.Array | None, valid: jax.Array | None = None
                  ) -> dict[str, jax.Array]:
  """Per-query mixing ratios `[B, T]` of a self-attention layer (module docstring).

  `parts` from `decompose` (T = S); `residual: [B, T, D]` the stream entering the sublayer
  ('self_attention_input'); `b_out: [D]` the output bias; `ln_scale: [D]` γ of the
  LayerNorm after the residual (None: no ATTNRESLN-N); `valid: [B, T]` queries to keep (the
  others are NaN).
  """
  c, f, w = parts['coefficients'], parts['transformed'], parts['weights']
  total = jnp.einsum('bnts,bsnd->btd', c, f)                                # Σ_h Σ_j α f
  own = jnp.einsum('bntt,btnd->btd', c, f)                                  # Σ_h α_ii f(x_i)
  mixed = total - own
  x = residual.astype(jnp.float32)

  def ratio(a, b):
    na, nb = jnp.linalg.norm(a, axis=-1), jnp.linalg.norm(b, axis=-1)
    return na / jnp.maximum(na + nb, 1e-30)

  mean_w = jnp.mean(w, axis=1)                                              # [B, T, S]
  diag = jnp.diagonal(mean_w, axis1=-2, axis2=-1)                           # [B, T]
  off = jnp.sum(jnp.abs(mean_w), axis=-1) - jnp.abs(diag)
  out = {
      'ATTN-W': off / jnp.maximum(off + jnp.abs(diag), 1e-30),
      'ATTN-N': ratio(mixed, own),
      'ATTNRES-W': 0.5 * off / jnp.maximum(0.5 * off + jnp.abs(0.5 * diag + 0.5), 1e-30),
      'ATTNRES-N': ratio(mixed, own + x),
  }
  if ln_scale is not None:
    y = x + total + b_out.astype(jnp.float32)
    g = jnp.asarray(ln_scale, jnp.float32)
    out['ATTNRESLN-N'] = ratio(_layer_norm(mixed, g, y), _layer_norm(own + x, g, y))
  if valid is not None:
    out = {k: jnp.where(valid, v, jnp.nan) for k, v in out.items()}
  return out


# ------------------------------------------------------------------------------ aggregates


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
  """Spearman's rank correlation of two 1-D samples (average ranks for ties); None if either
  is constant or there are fewer than 3 points."""
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
    return None
  ra, rb = _average_ranks(a), _average_ranks(b)
  ra, rb = ra - ra.mean(), rb - rb.mean()
  return float(np.sum(ra * rb) / np.sqrt(np.sum(ra * ra) * np.sum(rb * rb)))


def _average_ranks(x: np.ndarray) -> np.ndarray:
  order = np.argsort(x, kind='mergesort')
  ranks = np.empty(x.size, np.float64)
  ranks[order] = np.arange(1, x.size + 1)
  _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
  sums = np.bincount(inverse, weights=ranks)
  return (sums / counts)[inverse]


class CategoryStats:
  """Weight- vs norm-based attention to token categories, accumulated over batches.

  Kobayashi et al. 2020 §4 (their `re-examine.py` rules): for each (head, sequence), per query
  the sum over the keys of a category of α (or of ‖α f‖), averaged over the real queries, then
  over sequences; the layer value is the mean over heads. ‖f(x)‖ of a category is averaged over
  its tokens (and heads). 'share' divides a query's category sum of ‖α f‖ by its total over
  all keys, which makes norms comparable with weights (that sum to 1 for softmax).
  """

  def __init__(self, categories: dict[str, Any]):
    self.categories = categories      # name → predicate on key token ids (np array → bool)
    self._sums: dict[tuple[str, str], float] = {}
    self._counts: dict[tuple[str, str], float] = {}

  def _add(self, key, value, count):
    self._sums[key] = self._sums.get(key, 0.0) + float(value)
    self._counts[key] = self._counts.get(key, 0.0) + float(count)

  def update(self, parts: dict[str, jax.Array], key_tokens: np.ndarray, query_valid: np.ndarray,
             key_valid: np.ndarray) -> None:
    """`parts` of one layer for a batch; tokens `[B, S]`, masks `[B, T]`, `[B, S]`."""
    w = np.asarray(parts['weights'], np.float64)                  # [B, N, T, S]
    wn = np.asarray(parts['weighted_norm'], np.float64)
    fn = np.asarray(parts['transformed_norm'], np.float64)        # [B, N, S]
    qv = np.asarray(query_valid, bool)
    total_norm = np.sum(wn, axis=-1)                              # [B, N, T]
    for name, predicate in self.categories.items():
      member = np.asarray(predicate(key_tokens), bool) & np.asarray(key_valid, bool)  # [B, S]
      m = member[:, None, None, :]
      per_query = {'weight': np.sum(w * m, axis=-1), 'norm': np.sum(wn * m, axis=-1),
                   'share': np.sum(wn * m, axis=-1) / np.maximum(total_norm, 1e-30)}
      for what, values in per_query.items():                       # [B, N, T]
        # Mean over real queries, per (sequence, head); then summed for the mean over both.
        rows = np.sum(qv, axis=-1)                                 # [B]
        per_seq = np.sum(values * qv[:, None, :], axis=-1) / np.maximum(rows, 1)[:, None]
        self._add((name, what), np.sum(per_seq[rows > 0]), np.sum(rows > 0) * w.shape[1])
      self._add((name, 'f_norm'), np.sum(fn * member[:, None, :]), np.sum(member) * w.shape[1])

  def result(self) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for (name, what), total in self._sums.items():
      count = self._counts[(name, what)]
      out.setdefault(name, {})[what] = total / count if count else None
    return out
