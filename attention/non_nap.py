"""NON and NAP: attention without the softmax (Richter & Wattenhofer 2020, "Normalized Attention
Without Probability Cage", arXiv:2005.09561).

Two kinds that drop the softmax, so the weights are signed, unbounded and need not sum to 1.
The daGPAM paper (Heo & Choi 2024, arXiv:2410.15578, Table 1) compares both in its PTB
language model. Write s = q·kᵀ/√H (+ score mod) for the scaled scores `[B, N, T, S]`, A_i for
the keys query i may see (the mask) and n_i = |A_i|:

`attention.kind=non` (no normalisation):

    P_ij = s_ij / √n_i   for j ∈ A_i,   0 otherwise          (`output_scale='keys_seen'`)
    P_ij = s_ij / √S     for j ∈ A_i,   0 otherwise          (`output_scale='length'`)
    out = P V

The authors' code (OliverRichter/normalized-attention, `models.py`) keeps the 1/√H logit
scaling, multiplies the raw logits by the mask and divides the heads' output by the square root
of the sequence length, so that a sum of n weighted values keeps its scale. Without padding or
a causal mask the two readings above coincide with it. With masks, 'keys_seen' (default)
divides each query by the number of terms it actually sums, which is what the rescaling is for,
does not depend on how much padding a batch has, and lets a decoder cache keys and values;
'length' is the code's literal √(padded length): S, the number of keys of the call (the code
has only self-attention, where that is also the query length).

`attention.kind=nap` (normalised attention pooling), per head h with gain g_h (init 1) and
bias b_h (init 0), both learned:

    z = √H·s = q·kᵀ (+ √H·score mod)                          (`scale_scores=False`)
    μ_i = mean_{j∈A_i} z_ij,   σ_i = (mean_{j∈A_i} (z_ij − μ_i)²)^½
    P_ij = g_h (z_ij − μ_i) / (σ_i + ε) + b_h   for j ∈ A_i,   0 otherwise
    out = P V

As the authors' code: no 1/√H on the logits (the normalisation removes any scale, except
against ε; `scale_scores=True` normalises s itself), the population standard deviation over the
keys the query sees, ε = 10⁻³ added to σ, and the mask applied after the bias, so a masked key
gets exactly 0. A query that sees one key (the first position under a causal mask) has σ = 0
and weight b_h for that key. The gradient of σ at σ = 0 is taken as 0 (there z_ij − μ_i = 0 for
every seen key, so nothing depends on it), never NaN. Where a query's scores are nearly equal
(σ ≲ ε), P moves by up to about g_h/ε per unit of z, so float32 rounding that differs between two
equivalent programs (eager vs jitted, full pass vs cached decoding) shows up to ~10⁻⁴ in P.

For both: a query that sees no key outputs exact zeros; attention dropout (`attention.dropout`,
as in the authors' code) drops entries of P; computation in `accumulation_dtype(q, k, v)`
(attention/registry.py). Prior masks restrict A_i. A score mod (`attention.bias`) is applied to
s as for every core, but with no softmax it is no longer a log-prior (under a softmax an
additive B multiplies the probabilities by e^B): for NON an additive bias B adds B_ij/√n_i to
the weight of key j itself, for NAP it moves z before the normalisation. Sown 'attention_weights' are P, the map
that multiplies the values (NON's includes the 1/√n_i), so the norm-based analysis is exact;
its rows do not sum to 1 and its entries have either sign.

Options:
  `attention.non.output_scale`: 'keys_seen' (default) | 'length' (above). With 'length' a
    one-query decoding step sees S = the cache length instead of the prefix length, so the
    key/value cache is off (`supports_decode_cache`) and decoding recomputes the prefix.
  `attention.nap.eps`: ε > 0 added to σ (10⁻³, the authors' code).
  `attention.nap.scale_scores`: normalise s = q·kᵀ/√H instead of q·kᵀ (False, as the code).

Uncertain: how the daGPAM authors adapted NON's rescaling to their causal LM (the rescaling by
√(sequence length) comes from a bidirectional encoder); the switch `non.output_scale` gives
both readings. The authors' models can also put a GELU and (except for NON, whose rescaling
takes its place) a LayerNorm between the heads and the output projection, by flags of their
experiments and for every variant they compare alike; that is their layer, not the attention,
and the shared layer here (models/transformer.py) keeps its plain output projection for every
kind.
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
OUTPUT_SCALES = ('keys_seen', 'length')


@register('non')
class NonAttention(DenseMapCore):
  """NON core (no normalisation): `core(q, k, v, mask, *, score_mod, deterministic, sow_weights)`.

  Shapes: `q: [B, T, N, H]`, `k, v: [B, S, N, H]` → `[B, T, N, H]` in `v`'s dtype. Reads
  `config.impl` (xla; auto = xla), `config.dropout` (on P) and `config.non.output_scale`.
  """

  kind = 'non'

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.output_scale = 'keys_seen'   # P = s/√n_i (keys the query sees) | length: s/√S
    return c

  # With output_scale='keys_seen' the weights of a query depend only on the keys it sees, so a
  # key-padding mask gives the causal attention at that position (models/seq2seq.py decoding).
  # An instance built with 'length' turns this off.
  supports_decode_cache = True

  def __init__(self, *, num_heads: int, head_dim: int, config, rngs: nnx.Rngs,
               layer_index: int = 0, max_len: int = 0):
    del layer_index, max_len  # unused
    check_implementation(config, 'non', IMPLEMENTATIONS)
    check_choice('non', 'output_scale', config.non.output_scale, OUTPUT_SCALES)
    self.num_heads, self.head_dim = num_heads, head_dim
    self.output_scale = config.non.output_scale
    if self.output_scale == 'length':
      self.supports_decode_cache = False
    self.dropout = nnx.Dropout(config.dropout, rngs=rngs)

  def weights(self, q: jax.Array, k: jax.Array, mask: Mask | None = None,
              score_mod: ScoreMod | None = None, *, probe: bool = False) -> jax.Array:
    """P `[B, N, T, S]` in `accumulation_dtype(q, k)`; `probe` marks s as 'scores'."""
    s = scaled_scores(q, k, score_mod, scores_hook=scores_probe(self, probe))
    allowed = masks_lib.allowed_keys(mask, s.shape)
    if self.output_scale == 'keys_seen':
      n = jnp.sum(allowed, axis=-1, keepdims=True).astype(s.dtype)
    else:
      n = jnp.asarray(s.shape[-1], s.dtype)
    return jnp.where(allowed, s, jnp.zeros((), s.dtype)) * jax.lax.rsqrt(jnp.maximum(n, 1))



@register('nap')
class NapAttention(DenseMapCore):
  """NAP core (normalised attention pooling): `core(q, k, v, mask, *, score_mod, deterministic,
  sow_weights)`.

  Shapes: `q: [B, T, N, H]`, `k, v: [B, S, N, H]` → `[B, T, N, H]` in `v`'s dtype. Reads
  `config.impl` (xla; auto = xla), `config.dropout` (on P) and `config.nap.*`. Parameters: the
  per-head gain `gain: [N]` (init 1) and bias `bias: [N]` (init 0).
  """

  kind = 'nap'

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.eps = 1e-3                   # ε added to the standard deviation σ_i (authors' code)
    c.scale_scores = False         # normalise q·kᵀ (False, authors' code) or q·kᵀ/√H
    return c

  # μ_i and σ_i are taken over the keys the query sees, so a key-padding mask gives the causal
  # attention at that position (models/seq2seq.py decoding).
  supports_decode_cache = True

  def __init__(self, *, num_heads: int, head_dim: int, config, rngs: nnx.Rngs,
               layer_index: int = 0, max_len: int = 0):
    del layer_index, max_len  # unused
    check_implementation(config, 'nap', IMPLEMENTATIONS)
    c = config.nap
    check_choice('nap', 'scale_scores', c.scale_scores, (True, False))
    self.num_heads, self.head_dim = num_heads, head_dim
    self.eps = check_number('nap', 'eps', c.eps, minimum=0.0, strict=True)
    self.scale_scores = c.scale_scores
    self.gain = nnx.Param(jnp.ones((num_heads,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_heads,), jnp.float32))
    self.dropout = nnx.Dropout(config.dropout, rngs=rngs)

  def weights(self, q: jax.Array, k: jax.Array, mask: Mask | None = None,
              score_mod: ScoreMod | None = None, *, probe: bool = False) -> jax.Array:
    """P `[B, N, T, S]` in `accumulation_dtype(q, k)`; `probe` marks s as 'scores'."""
    z = scaled_scores(q, k, score_mod, scores_hook=scores_probe(self, probe))
    if not self.scale_scores:
      z = z * math.sqrt(q.shape[-1])
    allowed = masks_lib.allowed_keys(mask, z.shape)
    mean, _ = masks_lib.row_mean(z, allowed)
    centred = jnp.where(allowed, z - mean, jnp.zeros((), z.dtype))
    var, _ = masks_lib.row_mean(centred * centred, allowed)
    # σ = √var with a zero gradient at var = 0 (one key, or equal scores: centred = 0 there).
    positive = var > 0
    std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1)), 0)
    per_head = lambda p: p[...].astype(z.dtype)[:, None, None]             # [N] → [N, 1, 1]
    p = per_head(self.gain) * centred / (std + self.eps) + per_head(self.bias)
    return jnp.where(allowed, p, jnp.zeros((), z.dtype))

