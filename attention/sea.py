"""SEA: sparse linear attention with an estimated attention mask (Lee, Kim, Willette, Hwang,
"SEA: Sparse Linear Attention with Estimated Attention Mask", ICLR 2024, arXiv:2310.01777).

`attention.kind=sea`, following the forward pass of the official code (gmlwns2000/sea-attention,
codename "perlin", `src/models/perlin_attention/attention.py`). Per head, with d = head_dim,
K = predictor_length (the compressed width) and L_i the number of keys query i may see (i + 1 in
the causal LM, the number of valid keys in an encoder):

 1. V_I: causal → a learned table [max_len, d] (randn init), V_I[t] = table[t]; bidirectional →
    the d×d identity resampled along the valid tokens, row t at p_t = pos_t/(L − 1)·(d − 1).
    V_cat = [V_I; V] ∈ R^{S×2d}, padded rows zeroed.
 2. C_perf = Performer(q, k, V_cat) ∈ R^{T×2d} (attention/performer.py): causal → generalised
    ReLU features, bidirectional → softmax FAVOR+; m = int(d·ln d / nbf) features.
 3. Z = GELU(LayerNorm(Linear_{3d→2d}([C_perf; V])))       (μ, shared by the heads)
 4. Ẑ = ChannelSplit_{c_h}(Linear_{2d→(K/c_s)·c_h}(Z)) ∈ R^{B×(N·c_h)×T×(K/c_s)}    (ν)
    causal: c_s = 4, c_h = 2; bidirectional: c_s = 2, c_h = 4; channel n·c_h + s.
 5. Â_logits = f_dec(Ẑ) ∈ R^{B×N×T×K}, Â = softmax_K(Â_logits). Causal f_dec:
    LayerNorm(K/4) → CausalConv(3×3, dilation 2) → ReLU → CausalConv(3×3, dilation 2) → ReLU →
    nearest ×4 along K → Conv 1×1 (2N → N) → LayerNorm(K); a causal conv sees rows t, t−2, t−4
    only (`lax.conv_general_dilated` padded with 4 rows of the past and none of the future).
    Bidirectional f_dec: Conv 3×3 stride (2, 1) → ReLU → Conv 3×3 → ReLU → nearest ×2 in time →
    Conv 3×3 (4N → N) → bilinear resize to (T, K).
 6. [s_prob, s_mix] = σ(Linear_{2d→2}(Z)).
 7. M̂ = grouped top-k̂ of Â: per row k̂_i = round(k·K/L_i); the groups (`k_flatten_dim`) are
      query        one row (b, n, i)            count clip(k̂_i, 1, K)
      head         all rows of (b, n)           count clip(Σ_i k̂_i, 1, T·K)
      batch        all rows and heads of b      count clip(N·Σ_i k̂_i, 1, N·T·K)
      causal_batch one row i across heads       count clip(N·k̂_i, 1, N·K)
    (sums over the valid rows), with one fixed-size `lax.top_k` and rank < count.
 8. M*[i, j] = M̂[i, c(i, j)] for the keys j query i may see, with
      c(i, j) = ⌊(pos_j + 0.5)·K / L_i − 1e−4⌋,   pos_j = number of valid keys before j.
 9. P = softmax(q·kᵀ/√d over M*) (a row with no kept key is 0), P ← σ(s_prob)·P, C = P·V.
10. C_avg: causal → mean of the valid v_j, j ≤ i; bidirectional → Σ_j ī_j·v_j with ī the
    query-mean of Â looked up as in step 8 (not renormalised, as the code).
    C_sea = σ(s_mix)·C + (1 − σ(s_mix))·C_avg.

Two computation paths: 'dense' (training, as the official code, which also computes its
reported perplexities this way) forms the T×S mask and a dense masked softmax; 'chunked'
(inference: `inference='chunked'` and deterministic) scans over query chunks, interpolating each
chunk's rows of M̂ to [C, S] on the fly, so memory is O(T·K + C·S). Both give the same output;
a call that sows takes the dense path (the sows are T×S). With `sow_weights=True` the dense path
sows 'attention_weights' σ(s_prob)·P [B, N, T, S], 'estimate' Â [B, N, T, K],
'estimate_log_probs' (log-softmax over the allowed keys of Â_logits looked up as in step 8) and
'dense_log_probs' (log-softmax of the student's own q·kᵀ/√d over the allowed keys), both
[B, N, T, S] and 0 where not allowed: the inputs of the distillation losses L_approx (estimate
vs teacher) and L_prob (the student's dense map vs teacher) (training/distill.py,
`attention_kd_loss` below).
`compute_estimate` returns the estimator's outputs (steps 1–6) for analysis and tests.

Options (`attention.sea.*`, see `default_config`): variant, predictor_length (K), k, nbf,
performer_kernel, k_flatten_dim, v_eye, jitter, output, inference, query_chunk_size, and the
distillation keys read by the training loop (distill, teacher and the loss weights).

Uncertain or changed, said plainly:
- The estimator's parameters differ between the causal and the bidirectional architecture, so
  the variant is a constructor option (`variant`) and must match the call's mask (causal() ↔
  'causal'); a mismatch is refused. Self-attention only (T = S).
- Causal width quirk dropped: the official last 1×1 conv pads the K axis by 1 (K + 2 columns,
  the two edge columns are bias only) and KeepRes area-resizes back to K; here the 1×1 conv maps
  K columns to K columns. The time axis is causal either way.
- V_I: the paper says nearest interpolation of I, the code bilinear (`v_eye`, default bilinear).
- Top-k grouping 'head' and 'batch' compete across time, so they would leak the future into
  the causal LM; they are refused with variant='causal' (the official code asserts the same).
  Counts round half to even (as torch.round).
- With padding the official code divides the causal mean by i + 1 and the bidirectional
  query-mean by T; here by the number of valid keys ≤ i and the number of valid queries. The
  decoder input is zeroed on rows that see no key, so padded content cannot reach valid rows.
- Training jitter (`jitter` = probability, official 0.1 in causal training, default 0 here):
  with that probability per call, U(−0.75, 0.75) noise is added to pos_j before the step-8
  lookup of the sparse mask, clipped to [0, L_i − 1] (the official clip is quirkier). The sown
  estimate uses the un-jittered lookup.
- `output='norm'` is the ICLR-submission code: C_sea + LayerNorm(C_sea) over all heads' features.
- The Performer projection is drawn once and never redrawn (the official OPT runs, through
  DeepSpeed, plausibly never redraw either).
- 'query' grouping: the official code uses one count, from the shortest sequence of the batch;
  here each row has its own k̂_i (the same thing without padding).
- The bidirectional decoder is the one of step 5 (the BERT decoder of the official
  `attention.py`); some official commits use a different (ResBlock) CNN there. The causal
  decoder is the OPT one.
- `attention.dropout` drops entries of σ(s_prob)·P in training (dense path); the sown weights
  are taken before dropout.
- With a causal variant K/4 columns enter LayerNorm(K/4): K ≥ 8 keeps it informative.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from attention import masks as masks_lib
from attention import performer
from attention.biases import ScoreMod
from attention.masks import Mask
from attention.kernels import backend as kernel_backend
from attention.kernels import flash
from attention.registry import (accumulation_dtype, check_choice, check_implementation,
                                register)

IMPLEMENTATIONS = ('xla', 'pallas', 'auto')
VARIANTS = ('causal', 'bidirectional')
K_FLATTEN_DIMS = ('query', 'head', 'batch', 'causal_batch')
OUTPUTS = ('mix', 'norm')
V_EYES = ('bilinear', 'nearest')
PERFORMER_KERNELS = ('auto', 'softmax', 'relu')
INFERENCE_PATHS = ('dense', 'chunked')
LAYER_NORM_EPS = 1e-5   # torch.nn.LayerNorm's default, as the official modules
_NEG = float(np.finfo(np.float32).min) / 2


# -------------------------------------------------------------------------------------------
# The steps of the module docstring as pure functions (tested one by one against NumPy).

class KeyLayout(NamedTuple):
  """Which keys each query sees, in the terms of step 8 (from the causal/padding mask)."""
  causal: bool
  valid_k: jax.Array     # [B, S] bool
  positions: jax.Array   # [B, S] float32: pos_j, the number of valid keys before j (valid j)
  lengths: jax.Array     # [B, T] int32: L_i, the number of keys query i sees
  row_valid: jax.Array   # [B, T] bool: query i is valid and sees at least one key


def key_layout(parts: masks_lib.CausalPadding, batch: int, length: int) -> KeyLayout:
  """The `KeyLayout` of a causal/padding mask for self-attention over `length` tokens."""
  if parts.valid_k is None:
    valid_k = jnp.ones((batch, length), bool)
  else:
    valid_k = jnp.broadcast_to(jnp.asarray(parts.valid_k, bool), (batch, length))
  count = jnp.cumsum(valid_k.astype(jnp.int32), axis=1)                   # [B, S]
  positions = (count - 1).astype(jnp.float32)
  if parts.causal:
    lengths = count                     # valid keys j ≤ i (T = S)
  else:
    lengths = jnp.broadcast_to(count[:, -1:], (batch, length))
  row_valid = lengths >= 1
  if parts.valid_q is not None:
    row_valid = row_valid & jnp.broadcast_to(jnp.asarray(parts.valid_q, bool), (batch, length))
  return KeyLayout(bool(parts.causal), valid_k, positions, lengths, row_valid)


def allowed_keys(layout: KeyLayout, rows: jax.Array, row_valid: jax.Array) -> jax.Array:
  """The mask query rows `rows: [R]` (validity `row_valid: [B, R]`) may attend: [B, R, S]."""
  allowed = layout.valid_k[:, None, :] & row_valid[:, :, None]
  if layout.causal:
    kv = jnp.arange(layout.valid_k.shape[1])
    allowed = allowed & (kv[None, None, :] <= rows[None, :, None])
  return allowed


def interpolation_columns(positions: jax.Array, lengths: jax.Array,
                          predictor_length: int) -> jax.Array:
  """c(i, j) = ⌊(pos_j + 0.5)/L_i·K − 1e−4⌋ in [0, K − 1] (step 8), int32 `[B, R, S]`.

  `positions: [B, 1|R, S]` float, `lengths: [B, R]` int (rows that see no key give column 0,
  masked by the caller). The order of operations is the official `resize_m_to_t`'s
  (`attention.masks.compressed_columns`, shared with the kernels).
  """
  return masks_lib.compressed_columns(positions, lengths[..., None], predictor_length)


def compressed_visit(keep: jax.Array, layout: KeyLayout, block_q: int, block_k: int
                     ) -> jax.Array:
  """Tiles `[B, N, nq, nk]` that may hold a key of M̂ (step 8), for the block-sparse kernel.

  Conservative and cheap (O(B·N·nq·(K + nk))): a key block spans the columns from c(pos_min,
  L_max) to c(pos_max, L_min) over the query block's rows (c grows with pos and falls with L),
  and the tile is visited if any row of the query block keeps any column in that span.
  """
  b, n, t, width = keep.shape
  s = layout.positions.shape[1]
  nq, nk = -(-t // block_q), -(-s // block_k)
  pad_rows = nq * block_q - t
  union = jnp.pad(keep, ((0, 0), (0, 0), (0, pad_rows), (0, 0))).reshape(
      b, n, nq, block_q, width).any(axis=3)                               # [B, N, nq, K]
  lengths = jnp.pad(layout.lengths, ((0, 0), (0, pad_rows))).reshape(b, nq, block_q)
  seen = lengths > 0
  l_max = jnp.max(lengths, axis=-1)
  l_min = jnp.min(jnp.where(seen, lengths, jnp.iinfo(jnp.int32).max), axis=-1)
  l_min = jnp.where(seen.any(-1), l_min, 1)
  pos = jnp.pad(layout.positions, ((0, 0), (0, nk * block_k - s)), mode='edge').reshape(
      b, nk, block_k)
  c_lo = masks_lib.compressed_columns(pos.min(-1)[:, None, :], l_max[:, :, None], width)
  c_hi = masks_lib.compressed_columns(pos.max(-1)[:, None, :], l_min[:, :, None], width)
  cum = jnp.cumsum(union.astype(jnp.int32), axis=-1)                      # [B, N, nq, K]
  upto = lambda c: jnp.take_along_axis(cum, jnp.broadcast_to(c[:, None], (b, n, nq, nk)), -1)
  before = jnp.where(c_lo[:, None] > 0, upto(jnp.maximum(c_lo - 1, 0)), 0)
  return (upto(c_hi) - before > 0) & seen.any(-1)[:, None, :, None]


def lookup(compressed: jax.Array, columns: jax.Array) -> jax.Array:
  """x[b, n, i, c(i, j)]: `compressed: [B, N, R, K]`, `columns: [B, R, S]` → `[B, N, R, S]`."""
  b, n, r, _ = compressed.shape
  idx = jnp.broadcast_to(columns[:, None], (b, n, r, columns.shape[-1]))
  return jnp.take_along_axis(compressed, idx, axis=-1)


def resampled_identity(valid: jax.Array, dim: int, *, mode: str = 'bilinear') -> jax.Array:
  """V_I `[B, S, d]` (step 1, bidirectional): the d×d identity sampled at p_t along the tokens.

  Token t, the pos_t-th of the L valid tokens, reads row p_t = pos_t/(L − 1)·(d − 1) of I
  (align_corners=True): bilinearly a hat max(0, 1 − |p_t − c|) over the columns c, or the
  one-hot of the nearest row ⌊p_t + 0.5⌋. Padded tokens are zero.
  """
  valid_f = valid.astype(jnp.float32)
  pos = jnp.cumsum(valid_f, axis=1) - 1.0
  count = jnp.sum(valid_f, axis=1, keepdims=True)
  p = pos / jnp.maximum(count - 1.0, 1.0) * (dim - 1)                   # [B, S]
  cols = jnp.arange(dim, dtype=jnp.float32)
  if mode == 'bilinear':
    eye = jnp.maximum(0.0, 1.0 - jnp.abs(p[..., None] - cols))
  else:
    eye = (jnp.floor(p[..., None] + 0.5) == cols).astype(jnp.float32)
  return eye * valid_f[..., None]


def grouped_top_k(probs: jax.Array, row_valid: jax.Array, lengths: jax.Array, *, k: int,
                  mode: str) -> tuple[jax.Array, jax.Array]:
  """The compressed mask M̂ (step 7): `probs: [B, N, T, K]` → (keep `[B, N, T, K]`, counts).

  `counts` has the group shape: [B, N, T] (query), [B, N] (head), [B] (batch), [B, T]
  (causal_batch). One `lax.top_k` over the whole group sorts it (the largest count a row can
  ask for, round(k·K/1), already fills a row), the rank of every cell is scattered back and a
  cell is kept when its rank is below its group's count; ties go to the lower index. Rows that
  are not valid are never kept.
  """
  b, n, t, width = probs.shape
  per_row = jnp.where(row_valid, jnp.round((k * width) / jnp.maximum(lengths, 1).astype(
      jnp.float32)), 0.0)                                                   # k̂_i, [B, T]
  x = jnp.where(row_valid[:, None, :, None], probs.astype(accumulation_dtype(probs)), -1.0)
  if mode == 'query':
    groups = x
    counts = jnp.clip(jnp.broadcast_to(per_row[:, None, :], (b, n, t)), 1, width)
  elif mode == 'head':
    groups = x.reshape(b, n, t * width)
    counts = jnp.clip(jnp.broadcast_to(jnp.sum(per_row, 1)[:, None], (b, n)), 1, t * width)
  elif mode == 'batch':
    groups = x.reshape(b, n * t * width)
    counts = jnp.clip(n * jnp.sum(per_row, 1), 1, n * t * width)
  elif mode == 'causal_batch':
    groups = jnp.transpose(x, (0, 2, 1, 3)).reshape(b, t, n * width)
    counts = jnp.clip(n * per_row, 1, n * width)
  else:
    raise ValueError(f'attention.sea.k_flatten_dim={mode!r} is not supported; expected one of '
                     f'{", ".join(K_FLATTEN_DIMS)}')
  counts = counts.astype(jnp.int32)
  size = groups.shape[-1]
  _, order = jax.lax.top_k(groups, size)
  ranks = jnp.put_along_axis(jnp.zeros(order.shape, jnp.int32), order,
                             jnp.broadcast_to(jnp.arange(size, dtype=jnp.int32), order.shape),
                             axis=-1, inplace=False)
  keep = ranks < counts[..., None]
  if mode == 'causal_batch':
    keep = jnp.transpose(keep.reshape(b, t, n, width), (0, 2, 1, 3))
  else:
    keep = keep.reshape(b, n, t, width)
  return keep & row_valid[:, None, :, None], counts


def masked_softmax(x: jax.Array, where: jax.Array) -> jax.Array:
  """Softmax over the last axis restricted to `where`; a row with nothing allowed is 0."""
  m = jax.lax.stop_gradient(jnp.max(jnp.where(where, x, _NEG), axis=-1, keepdims=True))
  e = jnp.where(where, jnp.exp(jnp.where(where, x - m, 0.0)), 0.0)
  denom = jnp.sum(e, axis=-1, keepdims=True)
  return e / jnp.where(denom > 0, denom, 1.0)


def masked_log_softmax(x: jax.Array, where: jax.Array) -> jax.Array:
  """Log-softmax over the last axis restricted to `where`, 0 elsewhere (finite gradients)."""
  m = jax.lax.stop_gradient(jnp.max(jnp.where(where, x, _NEG), axis=-1, keepdims=True))
  z = jnp.where(where, x - m, 0.0)
  denom = jnp.sum(jnp.where(where, jnp.exp(z), 0.0), axis=-1, keepdims=True)
  return jnp.where(where, z - jnp.log(jnp.where(denom > 0, denom, 1.0)), 0.0)


def causal_mean_values(v: jax.Array, layout: KeyLayout) -> jax.Array:
  """C_avg[i] = mean of the valid v_j with j ≤ i (step 10, causal): `[B, T, N, H]` in
  `accumulation_dtype(v)`."""
  vf = v.astype(accumulation_dtype(v)) * layout.valid_k[:, :, None, None]
  total = jnp.cumsum(vf, axis=1)
  return total / jnp.maximum(layout.lengths, 1).astype(vf.dtype)[:, :, None, None]


def attention_kd_rows(teacher_probs: jax.Array, student_log_probs: jax.Array,
                      allowed: jax.Array, *, kl_weight: float = 0.1) -> tuple[jax.Array, jax.Array]:
  """Per query row: kl_weight·KL(teacher ‖ student) + mean_S (exp(student) − teacher)².

  `teacher_probs`, `student_log_probs: [B, N, T, S]` (e.g. the sown 'attention_weights' of a
  softmax teacher and this core's 'estimate_log_probs' or 'dense_log_probs'), `allowed` the bool
  mask `[B|1, N|1, T, S]`. KL = Σ_j t_j·(log t_j − log s_j) and MSE = mean over all S keys of
  (s_j − t_j)², entries outside `allowed` counting as zero on both sides. Zero teacher entries
  add 0 (t·log t → 0), with finite gradients. Returns (loss `[B, N, T]` in
  `accumulation_dtype(teacher_probs, student_log_probs)` (float32 unless an input is float64),
  rows `[B, N, T]` bool: the rows that see at least one key; the loss is 0 elsewhere).
  """
  dtype = accumulation_dtype(teacher_probs, student_log_probs)
  t = teacher_probs.astype(dtype)
  allowed = jnp.broadcast_to(allowed, t.shape)
  t = jnp.where(allowed, t, 0.0)
  log_s = jnp.where(allowed, student_log_probs.astype(dtype), 0.0)
  positive = allowed & (t > 0)
  log_t = jnp.log(jnp.where(positive, t, 1.0))
  kl = jnp.sum(jnp.where(positive, t * (log_t - log_s), 0.0), axis=-1)
  mse = jnp.mean(jnp.square(jnp.where(allowed, jnp.exp(log_s), 0.0) - t), axis=-1)
  rows = jnp.any(allowed, axis=-1)
  return jnp.where(rows, kl_weight * kl + mse, 0.0), rows


def attention_kd_loss(teacher_probs: jax.Array, student_log_probs: jax.Array,
                      allowed: jax.Array, *, kl_weight: float = 0.1) -> jax.Array:
  """`attention_kd_rows` averaged over the rows that see a key: a scalar (float32 unless an
  input is float64).

  For the causal LM without padding this is PyTorch's `kl_div(reduction='batchmean')` over the
  N·T rows plus `mse_loss`'s mean over the N·T·S entries, as the official causal code.
  """
  loss, rows = attention_kd_rows(teacher_probs, student_log_probs, allowed, kl_weight=kl_weight)
  return jnp.sum(loss) / jnp.maximum(jnp.sum(rows), 1).astype(loss.dtype)


# -------------------------------------------------------------------------------------------
# The estimator's modules.

class Conv2d(nnx.Module):
  """A 2-D convolution on `[B, C, T, W]` (NCHW, kernel OIHW) with explicit padding.

  Explicit (low, high) padding per axis is what makes the time axis causal: padding only the
  past, (kernel − 1)·dilation rows at the top, lets output row t see rows ≤ t.
  """

  def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int], *,
               rngs: nnx.Rngs):
    # torch.nn.Conv2d's default weight init: U(±1/√fan_in).
    init = nnx.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform', in_axis=1, out_axis=0)
    self.kernel = nnx.Param(init(rngs.params(), (out_channels, in_channels) + tuple(kernel),
                                 jnp.float32))
    self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32))

  def __call__(self, x: jax.Array, *, padding, stride=(1, 1), dilation=(1, 1)) -> jax.Array:
    y = jax.lax.conv_general_dilated(
        x, self.kernel[...].astype(x.dtype), window_strides=stride, padding=padding,
        rhs_dilation=dilation, dimension_numbers=('NCHW', 'OIHW', 'NCHW'),
        precision=jax.lax.Precision.HIGHEST)
    return y + self.bias[...].astype(x.dtype)[None, :, None, None]


class Estimate(NamedTuple):
  """The estimator's outputs (steps 5 and 6), in `accumulation_dtype(q, k, v)`."""
  logits: jax.Array   # Â_logits [B, N, T, K]
  probs: jax.Array    # Â = softmax_K(Â_logits) [B, N, T, K]
  s_prob: jax.Array   # σ(s_prob) [B, T, N]: scale of the sparse weights
  s_mix: jax.Array    # σ(s_mix) [B, T, N]: weight of the sparse context


def _check_choice(name, value, choices):
  check_choice('sea', name, value, choices)


def _check_number(name, value, *, minimum=0.0, integer=False, strict=False, maximum=None):
  ok_type = (int, np.integer) if integer else (int, float, np.integer, np.floating)
  ok = (not isinstance(value, bool) and isinstance(value, ok_type) and math.isfinite(value)
        and (value > minimum if strict else value >= minimum)
        and (maximum is None or value <= maximum))
  if not ok:
    kind = 'an int' if integer else 'a number'
    bound = f'> {minimum}' if strict else f'≥ {minimum}'
    if maximum is not None:
      bound += f' and ≤ {maximum}'
    raise ValueError(f'attention.sea.{name}={value!r} is not supported; expected {kind} {bound}')


@register('sea')
class SeaAttention(nnx.Module):
  """SEA core: `core(q, k, v, mask, *, score_mod=None, deterministic, sow_weights)`.

  Shapes: `q, k, v: [B, T, N, H]` (self-attention) → `[B, T, N, H]` in `v`'s dtype. The
  estimator and the scores run in `accumulation_dtype(q, k, v)` (float32 for bfloat16/float16/
  float32 inputs, float64 for float64); the key positions and columns of the step-8 lookup
  stay float32 (small integers and a discrete choice). Masks: `causal()` (variant='causal') or none
  (variant='bidirectional'), AND-ed with padding; no other mask and no score mod.
  """

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Estimator architecture; must match the mask: causal (LM, mask has causal()) | bidirectional.
    c.variant = 'causal'
    c.predictor_length = 256       # K, compressed width of the estimate (paper OPT runs: 256)
    c.k = 64                       # target kept keys per query and head at full resolution
    c.nbf = 0.0                    # Performer features m = int(d·ln d / nbf); 0: 8 causal, 1 not
    c.performer_kernel = 'auto'    # auto (relu causal, softmax bidirectional) | softmax | relu
    c.k_flatten_dim = 'causal_batch'  # top-k groups: query | head | batch | causal_batch
    c.v_eye = 'bilinear'           # V_I resampling (bidirectional): bilinear (code) | nearest
    c.jitter = 0.0                 # training jitter probability of the lookup (official 0.1)
    c.output = 'mix'               # mix: σ(s_mix)·C + (1−σ(s_mix))·C_avg | norm: mix + LN(mix)
    c.inference = 'dense'          # deterministic calls: dense (T×S mask) | chunked (linear)
    c.query_chunk_size = 128       # queries per chunk of the chunked inference path
    # Distillation (read by training/distill.py, validated here). The weights are the official
    # OPT trainer's: 0.1·task NLL + 5·hidden MSE + 0.2·logits KL + the per-layer losses.
    c.distill = True               # train from a dense teacher (needs `teacher`)
    c.teacher = ''                 # workdir of a trained softmax run of the same LM
    c.task_weight = 0.1            # weight of the task NLL
    c.hidden_weight = 5.0          # weight of the hidden-state MSE (mean over layers)
    c.logits_kl_weight = 0.2       # weight of KL(teacher ‖ student) of the output distributions
    c.kl_weight = 0.1              # weight of the KL inside L_approx and L_prob
    c.attention_loss_weight = 1.0  # weight of the per-layer L_approx + L_prob + L_context
    return c

  def __init__(self, *, num_heads: int, head_dim: int, config, rngs: nnx.Rngs,
               layer_index: int = 0, max_len: int = 512):
    del layer_index  # unused
    self.impl = check_implementation(config, 'sea', IMPLEMENTATIONS)
    self.kernel_options = flash.kernel_options(config, head_dim, self.impl)
    c = config.sea
    _check_choice('variant', c.variant, VARIANTS)
    causal = c.variant == 'causal'
    _check_number('predictor_length', c.predictor_length, minimum=0, integer=True, strict=True)
    c_s, c_h = (4, 2) if causal else (2, 4)
    if c.predictor_length % c_s:
      raise ValueError(f'attention.sea.predictor_length={c.predictor_length} must be a multiple '
                       f'of {c_s} with attention.sea.variant={c.variant} (the row decoder '
                       f'outputs K/{c_s} columns)')
    _check_number('k', c.k, minimum=0, integer=True, strict=True)
    _check_number('nbf', c.nbf, minimum=0)
    _check_choice('performer_kernel', c.performer_kernel, PERFORMER_KERNELS)
    _check_choice('k_flatten_dim', c.k_flatten_dim, K_FLATTEN_DIMS)
    if causal and c.k_flatten_dim in ('head', 'batch'):
      raise ValueError(f'attention.sea.k_flatten_dim={c.k_flatten_dim!r} ranks the estimate '
                       'across time, so future queries would change which keys earlier ones '
                       'keep; with attention.sea.variant=causal use causal_batch or query')
    _check_choice('v_eye', c.v_eye, V_EYES)
    _check_number('jitter', c.jitter, minimum=0, maximum=1)
    _check_choice('output', c.output, OUTPUTS)
    _check_choice('inference', c.inference, INFERENCE_PATHS)
    _check_number('query_chunk_size', c.query_chunk_size, minimum=0, integer=True, strict=True)
    if not isinstance(c.distill, bool):
      raise ValueError(f'attention.sea.distill={c.distill!r} is not supported; expected a bool')
    if not isinstance(c.teacher, str):
      raise ValueError(f'attention.sea.teacher={c.teacher!r} is not supported; expected a '
                       'workdir path (str)')
    for name in ('task_weight', 'hidden_weight', 'logits_kl_weight', 'kl_weight',
                 'attention_loss_weight'):
      _check_number(name, c[name], minimum=0)
    if causal and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
      raise ValueError(f'model.max_len={max_len!r} must be an int ≥ 1 for attention.kind=sea '
                       '(the causal V_I table has one row per position)')

    self.num_heads, self.head_dim = num_heads, head_dim
    self.causal = causal
    self.variant = c.variant
    self.predictor_length, self.k = int(c.predictor_length), int(c.k)
    self.c_s, self.c_h = c_s, c_h
    self.k_flatten_dim, self.v_eye, self.output = c.k_flatten_dim, c.v_eye, c.output
    self.jitter = float(c.jitter)
    if self.impl == 'pallas' and self.jitter > 0:
      raise ValueError(f'attention.sea.jitter={c.jitter} is not supported with '
                       'attention.impl=pallas (the jittered lookup differs per query and key); '
                       'set attention.sea.jitter=0 or use attention.impl=xla')
    self.inference, self.query_chunk_size = c.inference, int(c.query_chunk_size)
    self.max_len = int(max_len)
    kernel = c.performer_kernel
    if kernel == 'auto':
      kernel = 'relu' if causal else 'softmax'
    self.performer_kernel = kernel
    nbf = float(c.nbf) or (8.0 if causal else 1.0)
    d = head_dim
    self.num_features = max(1, int(d * math.log(d) / nbf))   # lucidrains' int(d·ln d / nbf)

    # ω is drawn once (state, not a parameter), as the official OPT runs that never redraw.
    self.projection = performer.RandomFeatures(performer.gaussian_orthogonal_projection(
        rngs.params(), self.num_features, d))
    if causal:
      self.v_eye_table = nnx.Param(jax.random.normal(rngs.params(), (self.max_len, d),
                                                     jnp.float32))
    linear = lambda i, o: nnx.Linear(i, o, param_dtype=jnp.float32, rngs=rngs)
    self.encoder = linear(3 * d, 2 * d)                                   # μ
    self.encoder_norm = nnx.LayerNorm(2 * d, epsilon=LAYER_NORM_EPS, rngs=rngs)
    width = self.predictor_length // c_s
    self.row_decoder = linear(2 * d, width * c_h)                         # ν
    channels = num_heads * c_h
    if causal:
      self.cnn_norm_in = nnx.LayerNorm(width, epsilon=LAYER_NORM_EPS, rngs=rngs)
      self.conv1 = Conv2d(channels, channels, (3, 3), rngs=rngs)
      self.conv2 = Conv2d(channels, channels, (3, 3), rngs=rngs)
      self.conv_out = Conv2d(channels, num_heads, (1, 1), rngs=rngs)
      self.cnn_norm_out = nnx.LayerNorm(self.predictor_length, epsilon=LAYER_NORM_EPS, rngs=rngs)
    else:
      self.conv1 = Conv2d(channels, channels, (3, 3), rngs=rngs)
      self.conv2 = Conv2d(channels, channels, (3, 3), rngs=rngs)
      self.conv_out = Conv2d(channels, num_heads, (3, 3), rngs=rngs)
    self.scaler = linear(2 * d, 2)
    if self.output == 'norm':
      self.output_norm = nnx.LayerNorm(num_heads * d, epsilon=LAYER_NORM_EPS, rngs=rngs)
    self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
    self.jitter_rngs = rngs['dropout'].fork() if self.jitter > 0 else nnx.data(None)

  # -- mask handling ------------------------------------------------------------------------

  def layout(self, q: jax.Array, k: jax.Array, mask: Mask | None) -> KeyLayout:
    """Checks the call against the variant and returns the `KeyLayout` of `mask`."""
    parts = masks_lib.causal_padding_parts(mask, kind='sea')
    if parts.causal != self.causal:
      raise ValueError(
          f'attention.sea.variant={self.variant} builds the '
          f'{"causal" if self.causal else "bidirectional"} estimator, but the mask is '
          f'{"causal" if parts.causal else "not causal"}; set attention.sea.variant='
          f'{"causal" if parts.causal else "bidirectional"}')
    b, t = q.shape[:2]
    if k.shape[1] != t:
      raise ValueError(f'attention.kind=sea is self-attention only: got {t} queries and '
                       f'{k.shape[1]} keys')
    if self.causal and t > self.max_len:
      raise ValueError(f'attention.kind=sea (causal) has a V_I table of model.max_len='
                       f'{self.max_len} positions but the sequence has {t} tokens; raise '
                       'model.max_len')
    return key_layout(parts, b, t)

  # -- steps 1–6: the estimator -------------------------------------------------------------

  def compute_estimate(self, q: jax.Array, k: jax.Array, v: jax.Array,
                       mask: Mask | None = None) -> Estimate:
    """Â_logits, Â and the two scales for `q, k, v: [B, T, N, H]` (steps 1–6)."""
    return self._estimate(q, k, v, self.layout(q, k, mask))

  def _estimate(self, q, k, v, layout: KeyLayout) -> Estimate:
    b, t, n, d = q.shape
    dtype = accumulation_dtype(q, k, v)
    qf, kf, vf = (x.astype(dtype) for x in (q, k, v))
    valid_k = layout.valid_k
    # Step 1: V_cat = [V_I; V], padded rows zeroed.                         [B, S, N, 2d]
    if self.causal:
      v_eye = self.v_eye_table[...][:t][None, :, None, :].astype(dtype)
    else:
      v_eye = resampled_identity(valid_k, d, mode=self.v_eye)[:, :, None, :].astype(dtype)
    v_cat = jnp.concatenate([jnp.broadcast_to(v_eye, vf.shape), vf], axis=-1)
    v_cat = v_cat * valid_k[:, :, None, None]
    # Step 2: kernelised attention over (q, k, V_cat).                       [B, T, N, 2d]
    w = self.projection[...]
    k_log_scale = None
    if self.performer_kernel == 'relu':
      q_feat = performer.relu_features(qf, w)
      k_feat = performer.relu_features(kf, w)
    else:
      # Keys keep a per-token log-scale that linear_attention puts on a common scale over
      # the keys each query sees (a running max when causal, so the future cannot leak).
      q_feat = performer.softmax_features(qf, w, is_query=True)
      k_feat, k_log_scale = performer.softmax_feature_parts(kf, w)
    c_perf = performer.linear_attention(q_feat, k_feat, v_cat, causal=self.causal,
                                        valid_k=valid_k, k_log_scale=k_log_scale)
    # Step 3: μ on [C_perf; V], shared by the heads.                         [B, T, N, 2d]
    z = self.encoder(jnp.concatenate([c_perf.astype(dtype), vf], axis=-1))
    z = jax.nn.gelu(self.encoder_norm(z), approximate=False)
    # Step 4: ν and the channel split (channel n·c_h + s).             [B, N·c_h, T, K/c_s]
    width = self.predictor_length // self.c_s
    y = self.row_decoder(z).reshape(b, t, n, self.c_h, width)
    image = jnp.transpose(y, (0, 2, 3, 1, 4)).reshape(b, n * self.c_h, t, width)
    # Rows that see no key (padding) are blanked so their content cannot reach valid rows
    # through the convolutions.
    image = jnp.where(layout.row_valid[:, None, :, None], image, 0.0)
    # Step 5: the CNN decoder.                                               [B, N, T, K]
    logits = self._decode_causal(image) if self.causal else self._decode_bidirectional(image)
    # Step 6: the scales.                                                    [B, T, N]
    scales = jax.nn.sigmoid(self.scaler(z))
    return Estimate(logits, jax.nn.softmax(logits, axis=-1), scales[..., 0], scales[..., 1])

  def _decode_causal(self, x: jax.Array) -> jax.Array:
    """[B, 2N, T, K/4] → [B, N, T, K]; every op sees rows ≤ t only."""
    causal_pad = ((4, 0), (2, 2))   # 3 taps, dilation 2: rows t−4, t−2, t; width 'same'
    x = self.cnn_norm_in(x)
    x = jax.nn.relu(self.conv1(x, padding=causal_pad, dilation=(2, 2)))
    x = jax.nn.relu(self.conv2(x, padding=causal_pad, dilation=(2, 2)))
    x = jnp.repeat(x, 4, axis=-1)                                          # nearest ×4 in K
    x = self.conv_out(x, padding=((0, 0), (0, 0)))
    return self.cnn_norm_out(x)

  def _decode_bidirectional(self, x: jax.Array) -> jax.Array:
    """[B, 4N, T, K/2] → [B, N, T, K] (KeepRes: bilinear back to (T, K))."""
    b, _, t, _ = x.shape
    same = ((1, 1), (1, 1))
    x = jax.nn.relu(self.conv1(x, padding=same, stride=(2, 1)))
    x = jax.nn.relu(self.conv2(x, padding=same))
    x = jnp.repeat(x, 2, axis=2)                                           # nearest ×2 in T
    x = self.conv_out(x, padding=same)
    return jax.image.resize(x, (b, self.num_heads, t, self.predictor_length), 'bilinear',
                            antialias=False)

  # -- steps 7–10 ---------------------------------------------------------------------------

  def __call__(self, q, k, v, mask: Mask | None = None, *, score_mod: ScoreMod | None = None,
               deterministic: bool = True, sow_weights: bool = False):
    if score_mod is not None:
      raise ValueError('attention.bias is not supported with attention.kind=sea (the sparse '
                       'mask is estimated without forming the scores); remove attention.bias')
    layout = self.layout(q, k, mask)
    est = self._estimate(q, k, v, layout)
    # Step 7: the selection is not differentiable; the estimator learns from the distillation
    # losses (and from the scales).
    keep, _ = grouped_top_k(jax.lax.stop_gradient(est.probs), layout.row_valid, layout.lengths,
                            k=self.k, mode=self.k_flatten_dim)
    impl = self.impl if self.impl != 'auto' else kernel_backend.auto_implementation(
        'sea', q.dtype, dropout=self.dropout.rate if self.jitter == 0 else 1.0, additive=True)
    if impl == 'pallas' and not sow_weights:
      context = self._sparse_kernel(q, k, v, mask, keep, est.s_prob, layout)
    elif self.inference == 'chunked' and deterministic and not sow_weights:
      context = self._sparse_chunked(q, k, v, keep, est.s_prob, layout)
    else:
      context = self._sparse_dense(q, k, v, keep, est, layout, deterministic=deterministic,
                                   sow_weights=sow_weights)
    # Step 10: the average branch and the mix.                              [B, T, N, H]
    if self.causal:
      average = causal_mean_values(v, layout)
    else:
      average = self._weighted_average(v, est.probs, layout)
    s_mix = est.s_mix[..., None]
    out = s_mix * context + (1.0 - s_mix) * average
    if self.output == 'norm':
      b, t, n, h = out.shape
      out = out + self.output_norm(out.reshape(b, t, n * h)).reshape(b, t, n, h)
    out = jnp.where(layout.row_valid[:, :, None, None], out, 0.0)
    return out.astype(v.dtype)

  def _jittered_positions(self, layout: KeyLayout) -> jax.Array:
    """pos_j + U(−0.75, 0.75) with probability `jitter` per call, per (row, key): [B, T, S]."""
    key = self.jitter_rngs()
    k_apply, k_noise = jax.random.split(key)
    b, s = layout.positions.shape
    noise = jax.random.uniform(k_noise, (b, s, s), minval=-0.75, maxval=0.75)
    top = jnp.maximum(layout.lengths - 1, 0).astype(jnp.float32)[:, :, None]
    moved = jnp.clip(layout.positions[:, None, :] + noise, 0.0, top)
    return jnp.where(jax.random.bernoulli(k_apply, self.jitter), moved,
                     layout.positions[:, None, :])

  def _sparse_dense(self, q, k, v, keep, est: Estimate, layout: KeyLayout, *,
                    deterministic: bool, sow_weights: bool) -> jax.Array:
    """Steps 8–9 with the [B, N, T, S] mask formed (training; the official dense emulation)."""
    t = q.shape[1]
    rows = jnp.arange(t)
    allowed = allowed_keys(layout, rows, layout.row_valid)                 # [B, T, S]
    columns = interpolation_columns(layout.positions[:, None, :], layout.lengths,
                                    self.predictor_length)                 # [B, T, S]
    mask_columns = columns
    if self.jitter > 0 and not deterministic:
      mask_columns = interpolation_columns(self._jittered_positions(layout), layout.lengths,
                                           self.predictor_length)
    sparse = allowed[:, None] & lookup(keep, mask_columns)                 # M* [B, N, T, S]
    scores = jnp.einsum('btnh,bsnh->bnts', q, k, preferred_element_type=accumulation_dtype(q, k),
                        precision=jax.lax.Precision.HIGHEST) * (q.shape[-1] ** -0.5)
    p = masked_softmax(scores, sparse) * jnp.transpose(est.s_prob, (0, 2, 1))[..., None]
    if sow_weights:
      self.sow(nnx.Intermediate, 'attention_weights', p)
      self.sow(nnx.Intermediate, 'estimate', est.probs)
      self.sow(nnx.Intermediate, 'estimate_log_probs',
               masked_log_softmax(lookup(est.logits, columns), allowed[:, None]))
      self.sow(nnx.Intermediate, 'dense_log_probs', masked_log_softmax(scores, allowed[:, None]))
    p = self.dropout(p, deterministic=deterministic)
    return jnp.einsum('bnts,bsnh->btnh', p, v.astype(p.dtype),
                      precision=jax.lax.Precision.HIGHEST)

  def _sparse_kernel(self, q, k, v, mask, keep, s_prob, layout: KeyLayout) -> jax.Array:
    """Steps 8–9 by the block-sparse kernel: M̂ is read tile by tile (`compressed_rows`) and
    only the tiles that may hold a kept key are computed; memory O(T·K), backward included."""
    sparse = masks_lib.compressed_rows(keep, layout.lengths, layout.positions)
    sparse = sparse if mask is None else mask & sparse
    selection = lambda block_q, block_k: (
        None, compressed_visit(keep, layout, block_q, block_k))
    out, _ = flash.selected_attention(q, k, v, sparse, None, selection, **dict(self.kernel_options))
    return out.astype(accumulation_dtype(q, k, v)) * s_prob[..., None]

  def _sparse_chunked(self, q, k, v, keep, s_prob, layout: KeyLayout) -> jax.Array:
    """Steps 8–9 one chunk of C queries at a time: memory O(T·K + C·S), never T×S."""
    b, t, n, h = q.shape
    size = min(self.query_chunk_size, t)
    chunks = -(-t // size)
    pad = chunks * size - t
    # Padded rows are invalid rows: no key is kept for them and they are cut off at the end.
    q_p = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    keep_p = jnp.pad(keep, ((0, 0), (0, 0), (0, pad), (0, 0)))
    lengths_p = jnp.pad(layout.lengths, ((0, 0), (0, pad)))
    valid_p = jnp.pad(layout.row_valid, ((0, 0), (0, pad)))
    s_prob_p = jnp.pad(s_prob, ((0, 0), (0, pad), (0, 0)))
    by_chunk = lambda x, axis: jnp.moveaxis(
        x.reshape(x.shape[:axis] + (chunks, size) + x.shape[axis + 1:]), axis, 0)
    xs = (by_chunk(q_p, 1), by_chunk(keep_p, 2), by_chunk(lengths_p, 1), by_chunk(valid_p, 1),
          by_chunk(s_prob_p, 1), jnp.arange(chunks * size).reshape(chunks, size))
    dtype = accumulation_dtype(q, k, v)
    vf = v.astype(dtype)
    scale = h ** -0.5

    def chunk(x):
      q_c, keep_c, lengths_c, valid_c, s_prob_c, rows = x
      allowed = allowed_keys(layout, rows, valid_c)                        # [B, C, S]
      columns = interpolation_columns(layout.positions[:, None, :], lengths_c,
                                      self.predictor_length)
      sparse = allowed[:, None] & lookup(keep_c, columns)                  # [B, N, C, S]
      scores = jnp.einsum('btnh,bsnh->bnts', q_c, k, preferred_element_type=dtype,
                          precision=jax.lax.Precision.HIGHEST) * scale
      p = masked_softmax(scores, sparse) * jnp.transpose(s_prob_c, (0, 2, 1))[..., None]
      return jnp.einsum('bnts,bsnh->btnh', p.astype(dtype), vf,
                        precision=jax.lax.Precision.HIGHEST)

    out = jax.lax.map(chunk, xs)                                           # [chunks, B, C, N, H]
    return jnp.moveaxis(out, 0, 1).reshape(b, chunks * size, n, h)[:, :t]

  def _weighted_average(self, v, probs, layout: KeyLayout) -> jax.Array:
    """C_avg = Σ_j ī_j·v_j (step 10, bidirectional), the same for every query: [B, 1, N, H]."""
    rows = layout.row_valid.astype(jnp.float32)                            # [B, T]
    mean = jnp.einsum('bntk,bt->bnk', probs, rows) / jnp.maximum(
        jnp.sum(rows, axis=1), 1.0)[:, None, None]                         # [B, N, K]
    columns = interpolation_columns(layout.positions[:, None, :], layout.lengths[:, :1],
                                    self.predictor_length)                 # [B, 1, S]
    ibar = lookup(mean[:, :, None, :], columns)[:, :, 0] * layout.valid_k[:, None, :]
    return jnp.einsum('bns,bsnh->bnh', ibar, v.astype(ibar.dtype),
                      precision=jax.lax.Precision.HIGHEST)[:, None]
