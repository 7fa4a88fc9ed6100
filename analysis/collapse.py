"""Measure rank collapse of token representations: `collapse_metrics(hidden_states, valid)`.

Pure attention drives every token towards the same vector, so the hidden states of a sequence
tend to a matrix of identical rows, `1 xᵀ`, doubly exponentially with depth (Dong, Cordonnier &
Loukas 2021, "Attention is Not All You Need: Pure Attention Loses Rank Doubly Exponentially with
Depth", arXiv:2103.03404). Heo & Choi 2024 ("Generalized Probabilistic Attention Mechanism in
Transformers", arXiv:2410.15578, §5.2 and Fig. 4) track the same quantities per layer to show
that attention with negative weights collapses less. Per sequence `X: [n, D]` (its n valid
tokens) this module measures:

* `relative_residual`: ‖X − X₁‖_F / ‖X‖_F, X₁ the best rank-1 approximation (truncated SVD),
  i.e. sqrt(Σ_{k≥2} σ_k²) / sqrt(Σ_k σ_k²). 0 for any rank-1 X (identical rows or not).
* `composite_residual`: Dong et al.'s residual res(X) = X − 1 x̄ᵀ in the composite norm
  ‖M‖_{1,∞} = sqrt(‖M‖₁ ‖M‖_∞) (`composite_norm`), with x̄ the mean valid token. 0 exactly when
  every valid token is the same vector. `relative=True` divides by ‖X‖_{1,∞}.
* `mean_pairwise_cosine`: the mean of cos(h_i, h_j) over ordered pairs i ≠ j of valid tokens.

Choice of x̄ (what is uncertain in the paper): Dong et al. define res(X) = X − 1xᵀ with
x = argmin_x ‖X − 1xᵀ‖, which in the composite norm has no closed form (the geometric mean of
two convex functions of x is not convex). Their public code (twistedcubic/attention-rank-collapse,
`paper-plotting/walking_casual_transformers.ipynb`, the cell that draws their hidden-state
residual figures) uses `hidden_states - hidden_states.mean(dim=-2)`, the mean token, and divides
its composite norm by that of the hidden states; the mean token is also the exact minimiser in
the Frobenius norm. This module does the same. The composite norm of the mean-token residual is
therefore an upper bound on min_x ‖X − 1xᵀ‖_{1,∞}, and equals 0 exactly when the minimum does.

Padding: rows with `valid=False` are left out of every sum, mean and SVD. Batch value: the plain
mean over sequences (every sequence weighs the same, whatever its length), over the sequences
that have a value; the per-sequence values come back too. A sequence with no valid token has no
value (NaN; None in `collapse_metrics`), nor has one with a single token for the cosine. A valid
but all-zero X has residuals 0 (nothing is left to collapse).

Arithmetic is NumPy float64 whatever the input dtype (jax float32 or bfloat16 arrays included).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

METRICS = ('relative_residual', 'composite_residual', 'relative_composite_residual',
           'mean_pairwise_cosine')


def _inputs(hidden: Any, valid: Any | None) -> tuple[np.ndarray, np.ndarray]:
  """`hidden: [B, T, D]` as float64 with padded rows zeroed, and `valid: [B, T]` as bool."""
  h = np.asarray(hidden, dtype=np.float64)
  if h.ndim != 3:
    raise ValueError(f'hidden states must be [B, T, D] (batch, tokens, features); got shape '
                     f'{h.shape}. Add a batch axis with h[None] for a single sequence.')
  if valid is None:
    v = np.ones(h.shape[:2], dtype=bool)
  else:
    v = np.asarray(valid).astype(bool)
    if v.shape != h.shape[:2]:
      raise ValueError(f'valid must be [B, T] = {h.shape[:2]} to match hidden states of shape '
                       f'{h.shape}; got shape {v.shape}')
  return np.where(v[..., None], h, 0.0), v


def _ratio(numerator: np.ndarray, denominator: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """numerator / denominator per sequence; 0 where both are 0, NaN where no token is valid."""
  safe = np.where(denominator > 0, denominator, 1.0)
  out = np.where(denominator > 0, numerator / safe, 0.0)
  return np.where(valid.any(axis=1), out, np.nan)


def composite_norm(m: Any) -> np.ndarray:
  """sqrt(‖M‖₁ ‖M‖_∞) of `m: [..., T, D]`: max absolute column sum times max absolute row sum."""
  m = np.abs(np.asarray(m, dtype=np.float64))
  if m.ndim < 2:
    raise ValueError(f'composite_norm needs a matrix [..., T, D]; got shape {m.shape}')
  if m.shape[-2] == 0 or m.shape[-1] == 0:
    return np.zeros(m.shape[:-2])
  col = m.sum(axis=-2).max(axis=-1)  # ‖M‖₁
  row = m.sum(axis=-1).max(axis=-1)  # ‖M‖_∞
  return np.sqrt(col * row)


def relative_residual(hidden: Any, valid: Any | None = None) -> np.ndarray:
  """‖X − X₁‖_F / ‖X‖_F per sequence, X₁ the best rank-1 approximation; `[B]` float64."""
  h, v = _inputs(hidden, valid)
  # Zeroed padding rows leave the singular values unchanged.
  sigma = np.linalg.svd(h, compute_uv=False)  # [B, min(T, D)], descending
  tail = np.sqrt(np.sum(sigma[:, 1:] ** 2, axis=1))
  return _ratio(tail, np.sqrt(np.sum(sigma ** 2, axis=1)), v)


def composite_residual(hidden: Any, valid: Any | None = None, *,
                       relative: bool = False) -> np.ndarray:
  """‖X − 1 x̄ᵀ‖_{1,∞} per sequence (x̄ the mean valid token), ÷ ‖X‖_{1,∞} if relative; `[B]`."""
  h, v = _inputs(hidden, valid)
  count = v.sum(axis=1)
  mean = h.sum(axis=1) / np.maximum(count, 1)[:, None]  # [B, D]
  res = np.where(v[..., None], h - mean[:, None, :], 0.0)
  norm = composite_norm(res)
  if not relative:
    return np.where(count > 0, norm, np.nan)
  return _ratio(norm, composite_norm(h), v)


def mean_pairwise_cosine(hidden: Any, valid: Any | None = None) -> np.ndarray:
  """Mean of cos(h_i, h_j) over valid pairs i ≠ j per sequence; `[B]`, a zero vector counts 0.

  With unit rows u_i (a zero row stays zero), Σ_{i≠j} u_i·u_j = ‖Σ_i u_i‖² − Σ_i ‖u_i‖², which
  needs no [T, T] Gram matrix. Fewer than two valid tokens: NaN.
  """
  h, v = _inputs(hidden, valid)
  length = np.linalg.norm(h, axis=-1, keepdims=True)
  unit = np.where(length > 0, h / np.where(length > 0, length, 1.0), 0.0)
  total = unit.sum(axis=1)
  off_diagonal = np.sum(total ** 2, axis=1) - np.sum(unit ** 2, axis=(1, 2))
  n = v.sum(axis=1).astype(np.float64)
  pairs = n * (n - 1)
  return np.where(pairs > 0, off_diagonal / np.where(pairs > 0, pairs, 1.0), np.nan)


def _json(values: np.ndarray) -> list[float | None]:
  return [None if np.isnan(x) else float(x) for x in values]


def _batch_mean(values: np.ndarray) -> float | None:
  kept = values[~np.isnan(values)]
  return float(kept.mean()) if kept.size else None


def collapse_metrics(hidden_states: Sequence[Any], valid: Any | None = None) -> dict[str, Any]:
  """Every collapse metric of each layer's `[B, T, D]` hidden states, as JSON-able lists.

  Returns `{metric: [batch mean per layer], 'per_sequence': {metric: [[B values] per layer]},
  'layers': L, 'sequences': B}` for the metrics in `METRICS`; the batch mean is the plain mean
  over the sequences that have a value (None where none has).
  """
  if len(hidden_states) == 0:
    raise ValueError('collapse_metrics needs at least one layer of hidden states [B, T, D]')
  functions = {
      'relative_residual': relative_residual,
      'composite_residual': composite_residual,
      'relative_composite_residual': lambda h, v: composite_residual(h, v, relative=True),
      'mean_pairwise_cosine': mean_pairwise_cosine,
  }
  per_sequence: dict[str, list[list[float | None]]] = {name: [] for name in METRICS}
  out: dict[str, Any] = {name: [] for name in METRICS}
  batch = None
  for layer, hidden in enumerate(hidden_states):
    h, v = _inputs(hidden, valid)
    if batch is not None and h.shape[0] != batch:
      raise ValueError(f'layer {layer} has batch size {h.shape[0]}; layer 0 has {batch}')
    batch = h.shape[0]
    for name in METRICS:
      values = functions[name](h, v)
      per_sequence[name].append(_json(values))
      out[name].append(_batch_mean(values))
  out['per_sequence'] = per_sequence
  out['layers'] = len(hidden_states)
  out['sequences'] = batch
  return out
