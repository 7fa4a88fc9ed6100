"""Rank-collapse metrics (analysis/collapse.py) against float64 NumPy references written here.

Properties: a rank-1 input has relative residual 0; identical rows have composite residual 0;
random inputs match an SVD / a double loop computed independently; padding changes nothing;
the composite norm matches a hand-computed case; jax float32 / bfloat16 inputs are accepted.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from analysis import collapse


def rng(seed: int = 0) -> np.random.Generator:
  return np.random.default_rng(seed)


def reference_relative_residual(x: np.ndarray) -> float:
  """sqrt(Σ_{k≥2} σ_k²) / sqrt(Σ σ_k²) of one matrix."""
  s = np.linalg.svd(x, compute_uv=False)
  return float(np.sqrt(np.sum(s[1:] ** 2)) / np.sqrt(np.sum(s ** 2)))


def reference_composite_norm(m: np.ndarray) -> float:
  """sqrt(max_j Σ_i |m_ij| · max_i Σ_j |m_ij|), by loops over rows and columns."""
  rows, cols = m.shape
  col_sums = [sum(abs(m[i, j]) for i in range(rows)) for j in range(cols)]
  row_sums = [sum(abs(m[i, j]) for j in range(cols)) for i in range(rows)]
  return float(np.sqrt(max(col_sums) * max(row_sums)))


def reference_mean_cosine(x: np.ndarray) -> float:
  n = len(x)
  total = 0.0
  for i in range(n):
    for j in range(n):
      if i != j:
        ni, nj = np.linalg.norm(x[i]), np.linalg.norm(x[j])
        total += 0.0 if ni == 0 or nj == 0 else float(x[i] @ x[j]) / (ni * nj)
  return total / (n * (n - 1))


def test_rank_one_input_has_zero_relative_residual():
  u, w = rng().normal(size=(3, 9, 1)), rng(1).normal(size=(3, 1, 5))
  np.testing.assert_allclose(collapse.relative_residual(u * w), 0.0, atol=1e-12)


def test_identical_rows_have_zero_composite_residual():
  x = rng().normal(size=(2, 1, 6))
  h = np.repeat(x, 7, axis=1)  # 1 xᵀ per sequence
  np.testing.assert_allclose(collapse.composite_residual(h), 0.0, atol=1e-12)
  np.testing.assert_allclose(collapse.composite_residual(h, relative=True), 0.0, atol=1e-12)
  np.testing.assert_allclose(collapse.relative_residual(h), 0.0, atol=1e-12)


def test_rank_one_with_distinct_rows_is_not_a_collapse_in_dongs_residual():
  h = np.arange(1.0, 5.0)[None, :, None] * np.ones((1, 1, 3))  # rows 1·1ᵀ, 2·1ᵀ, …
  assert collapse.composite_residual(h)[0] > 0.1


def test_relative_residual_matches_numpy_svd():
  h = rng().normal(size=(4, 11, 6))
  want = [reference_relative_residual(x) for x in h]
  np.testing.assert_allclose(collapse.relative_residual(h), want, rtol=1e-12)
  wide = rng(2).normal(size=(2, 5, 13))  # fewer tokens than features
  np.testing.assert_allclose(collapse.relative_residual(wide),
                             [reference_relative_residual(x) for x in wide], rtol=1e-12)


def test_composite_norm_hand_computed():
  # |M| column sums 1+3=4, 2+4=6 → ‖M‖₁ = 6; row sums 3, 7 → ‖M‖_∞ = 7.
  m = np.array([[1.0, -2.0], [-3.0, 4.0]])
  np.testing.assert_allclose(collapse.composite_norm(m), np.sqrt(42.0), rtol=1e-15)
  # Mean row (1, 2) → residual [[-1,-2],[0,0],[1,2]]: ‖·‖₁ = 4, ‖·‖_∞ = 3.
  x = np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]])
  np.testing.assert_allclose(collapse.composite_residual(x[None]), [np.sqrt(12.0)], rtol=1e-15)
  # ‖X‖₁ = max(3, 6) = 6, ‖X‖_∞ = 6.
  np.testing.assert_allclose(collapse.composite_residual(x[None], relative=True),
                             [np.sqrt(12.0) / 6.0], rtol=1e-15)


def test_composite_residual_matches_loop_reference_on_random_input():
  h = rng(3).normal(size=(3, 8, 5))
  for got, got_rel, x in zip(collapse.composite_residual(h),
                             collapse.composite_residual(h, relative=True), h):
    res = x - x.mean(axis=0)
    want = reference_composite_norm(res)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(got_rel, want / reference_composite_norm(x), rtol=1e-12)


def test_cosine_of_identical_and_orthogonal_rows():
  same = np.tile(rng().normal(size=(1, 1, 4)), (1, 5, 1))
  np.testing.assert_allclose(collapse.mean_pairwise_cosine(same), [1.0], atol=1e-12)
  orthogonal = np.eye(4)[None] * np.array([1.0, 2.0, 0.5, 3.0])[None, :, None]
  np.testing.assert_allclose(collapse.mean_pairwise_cosine(orthogonal), [0.0], atol=1e-15)


def test_cosine_matches_double_loop_and_zero_vector_counts_zero():
  h = rng(4).normal(size=(3, 6, 4))
  h[1, 2] = 0.0
  want = [reference_mean_cosine(x) for x in h]
  np.testing.assert_allclose(collapse.mean_pairwise_cosine(h), want, rtol=1e-12, atol=1e-15)


def test_padding_is_excluded():
  h = rng(5).normal(size=(2, 6, 4))
  lengths = np.array([6, 4])
  valid = np.arange(6)[None, :] < lengths[:, None]
  padded = np.concatenate([h, 1e3 * rng(6).normal(size=(2, 3, 4))], axis=1)
  padded[1, 4:6] = 1e3  # garbage inside the length too, masked out
  padded_valid = np.concatenate([valid, np.zeros((2, 3), dtype=bool)], axis=1)
  trimmed = [h[0], h[1, :4]]
  for name, fn in [('relative', collapse.relative_residual),
                   ('composite', collapse.composite_residual),
                   ('cosine', collapse.mean_pairwise_cosine)]:
    got = fn(padded, padded_valid)
    want = [fn(x[None])[0] for x in trimmed]
    np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=name)
  np.testing.assert_allclose(collapse.relative_residual(padded, padded_valid),
                             [reference_relative_residual(x) for x in trimmed], rtol=1e-12)


def test_sequence_without_tokens_has_no_value_and_is_left_out_of_the_mean():
  h = rng(7).normal(size=(2, 5, 3))
  valid = np.array([[True] * 5, [False] * 5])
  assert np.isnan(collapse.relative_residual(h, valid)[1])
  out = collapse.collapse_metrics([h], valid)
  assert out['per_sequence']['relative_residual'][0][1] is None
  np.testing.assert_allclose(out['relative_residual'][0], reference_relative_residual(h[0]),
                             rtol=1e-12)


def test_collapse_metrics_is_json_and_means_over_sequences():
  layers = [rng(s).normal(size=(3, 7, 4)) for s in range(4)]
  out = collapse.collapse_metrics(layers)
  json.dumps(out, allow_nan=False)
  assert out['layers'] == 4 and out['sequences'] == 3
  for name in collapse.METRICS:
    assert len(out[name]) == 4 and len(out['per_sequence'][name][0]) == 3
  want = [np.mean([reference_relative_residual(x) for x in h]) for h in layers]
  np.testing.assert_allclose(out['relative_residual'], want, rtol=1e-12)
  want_cos = [np.mean([reference_mean_cosine(x) for x in h]) for h in layers]
  np.testing.assert_allclose(out['mean_pairwise_cosine'], want_cos, rtol=1e-12)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_jax_inputs_are_converted_to_float64(dtype):
  h = jnp.asarray(rng(8).normal(size=(2, 5, 3)), dtype=dtype)
  want = [reference_relative_residual(np.asarray(x, dtype=np.float64)) for x in h]
  np.testing.assert_allclose(collapse.relative_residual(h), want, rtol=1e-12)


def test_wrong_shapes_say_what_was_expected():
  with pytest.raises(ValueError, match=r'\[B, T, D\]'):
    collapse.relative_residual(np.zeros((5, 3)))
  with pytest.raises(ValueError, match=r'valid must be \[B, T\]'):
    collapse.mean_pairwise_cosine(np.zeros((2, 5, 3)), np.ones((2, 4), dtype=bool))
