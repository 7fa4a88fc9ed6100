"""Adaptive input embeddings and the adaptive softmax, for large word-level vocabularies.

* `AdaptiveInput` (Baevski & Auli 2019, "Adaptive Input Representations for Neural Language
  Modeling", arXiv 1809.10853): the vocabulary is split into frequency bands by the cutoffs; band
  `i` has embeddings of width `d_model / factor^i`, each band projected to `d_model`.
* `AdaptiveSoftmax` (Grave et al. 2017, "Efficient softmax approximation for GPUs",
  arXiv 1609.04309): a head softmax over the `cutoffs[0]` most frequent words plus one cluster
  token per tail band; the probability of a tail word is
  `p(cluster_i | h) · p(word | cluster_i, h)`, the tail softmax taken over the band from a
  projection of `h` to width `d_model / factor^i`.

Both follow fairseq (`fairseq/modules/adaptive_input.py`, `adaptive_softmax.py`), including the
tie of `--tie-adaptive-weights --tie-adaptive-proj` used by the WikiText-103 recipe: the head's
word weights are band 0's input embeddings, tail band `i`'s output weights are band `i`'s input
embeddings, and tail band `i`'s projection is the transpose of the input projection of band `i`.
The tie reads the `AdaptiveInput`'s parameters at call time (`tied=` argument), so no module is
shared and the model stays a tree.

**Vocabulary ids must be sorted by decreasing frequency**: ids `< cutoffs[0]` are the most
frequent words, and each later band holds rarer words (as fairseq's dictionaries are).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

_xavier_uniform = nnx.initializers.xavier_uniform()


def band_edges(cutoffs: Sequence[int], vocab_size: int) -> tuple[int, ...]:
  """Validated band edges `(0, c_0, …, c_{k-1}, vocab_size)`; ValueError naming the option."""
  cutoffs = tuple(int(c) for c in cutoffs)
  if not cutoffs:
    raise ValueError('model.adaptive_cutoffs is empty; adaptive input/softmax need at least one '
                     'cutoff, e.g. (20000, 60000)')
  if vocab_size <= 0:
    raise ValueError(f'model.vocab_size={vocab_size} must be positive (it is set from the data)')
  if cutoffs[0] <= 0 or any(b <= a for a, b in zip(cutoffs, cutoffs[1:])):
    raise ValueError(f'model.adaptive_cutoffs={cutoffs} must be positive and strictly increasing')
  if cutoffs[-1] >= vocab_size:
    raise ValueError(f'model.adaptive_cutoffs={cutoffs} must all be < model.vocab_size='
                     f'{vocab_size}')
  return (0,) + cutoffs + (vocab_size,)


def band_dims(d_model: int, factor: float, num_bands: int) -> tuple[int, ...]:
  """Band widths `int(d_model // factor^i)` (fairseq's rounding); ValueError if one is < 1."""
  if factor <= 0:
    raise ValueError(f'model.adaptive_factor={factor} must be positive')
  dims = tuple(int(d_model // (factor**i)) for i in range(num_bands))
  if min(dims) < 1:
    raise ValueError(f'model.adaptive_factor={factor} leaves band widths {dims} for '
                     f'd_model={d_model}; every band needs width ≥ 1')
  return dims


class AdaptiveInput(nnx.Module):
  """Adaptive input embeddings: `tokens: [B, T]` → `[B, T, D]` (Baevski & Auli 2019).

  Band `i` (ids in `[edges[i], edges[i+1])`) has an embedding table `[size_i, D / factor^i]`,
  initialised N(0, width^-1/2), and a bias-free Xavier-initialised projection to D.
  """

  def __init__(self, vocab_size: int, d_model: int, cutoffs: Sequence[int], *,
               factor: float = 4.0, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.edges = band_edges(cutoffs, vocab_size)
    self.dims = band_dims(d_model, factor, len(self.edges) - 1)
    self.d_model = d_model
    self.embeddings = nnx.List([
        nnx.Embed(hi - lo, dim, dtype=dtype, param_dtype=jnp.float32,
                  embedding_init=nnx.initializers.normal(stddev=dim**-0.5), rngs=rngs)
        for lo, hi, dim in zip(self.edges[:-1], self.edges[1:], self.dims)
    ])
    self.projections = nnx.List([
        nnx.Linear(dim, d_model, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                   kernel_init=_xavier_uniform, rngs=rngs)
        for dim in self.dims
    ])

  def band_weights(self, i: int) -> tuple[jax.Array, jax.Array]:
    """Band `i`'s `(embedding [size_i, dim_i], projection kernel [dim_i, D])`, float32."""
    return self.embeddings[i].embedding[...], self.projections[i].kernel[...]

  def __call__(self, tokens: jax.Array) -> jax.Array:
    # tokens: [B, T] int → [B, T, D]. Every band is looked up for every token (clipped ids) and
    # the right one selected: static shapes, and cheap next to the transformer itself.
    out = None
    for (lo, hi), embed, proj in zip(zip(self.edges[:-1], self.edges[1:]), self.embeddings,
                                     self.projections):
      in_band = (tokens >= lo) & (tokens < hi)                              # [B, T]
      e = proj(embed(jnp.clip(tokens - lo, 0, hi - lo - 1)))                # [B, T, D]
      out = e if out is None else jnp.where(in_band[..., None], e, out)
    return out


def _logsumexp_rows(p: jax.Array, w: jax.Array, chunk_size: int) -> jax.Array:
  """`logsumexp(p @ w.T, -1)` for `p: [..., d]`, `w: [V, d]`, in vocabulary chunks.

  Peak memory is `[..., chunk_size]` logits instead of `[..., V]`; the chunk logits are
  rematerialised in the backward pass (`jax.checkpoint`), so the gradient does not store them
  either.
  """
  v = w.shape[0]
  if v <= chunk_size:
    return jax.nn.logsumexp(p @ w.T, axis=-1)
  n_chunks = -(-v // chunk_size)
  pad = n_chunks * chunk_size - v
  w = jnp.pad(w, ((0, pad), (0, 0))).reshape(n_chunks, chunk_size, w.shape[-1])
  valid = (jnp.arange(n_chunks * chunk_size) < v).reshape(n_chunks, chunk_size)

  @jax.checkpoint
  def chunk_lse(p, w_chunk, valid_chunk):
    logits = jnp.where(valid_chunk, p @ w_chunk.T, -jnp.inf)               # [..., chunk]
    return jax.nn.logsumexp(logits, axis=-1)                                # [...]

  lses = jax.lax.map(lambda args: chunk_lse(p, *args), (w, valid))         # [n_chunks, ...]
  return jax.nn.logsumexp(lses, axis=0)


class AdaptiveSoftmax(nnx.Module):
  """Adaptive softmax output layer (Grave et al. 2017) with fairseq's tie options.

  Untied parameters: head word weights `[D, cutoffs[0]]`, cluster weights `[D, num_tails]`, and
  per tail band `i ≥ 1` a projection `[D, dim_i]` and output weights `[dim_i, size_i]` (all
  bias-free, Xavier-initialised). With `tie_weights` the head word weights and the tail output
  weights are read from the `AdaptiveInput` passed as `tied=`; with `tie_proj` the tail
  projections too (transposed input projections). The cluster weights are never tied.

  Dropout (`dropout`, fairseq's `--adaptive-softmax-dropout`) is applied, as in fairseq, to the
  hidden state entering the softmax and to each tail projection's output.
  """

  def __init__(self, vocab_size: int, d_model: int, cutoffs: Sequence[int], *,
               factor: float = 4.0, dropout: float = 0.0, tie_weights: bool = False,
               tie_proj: bool = False, chunk_size: int = 8192, rngs: nnx.Rngs):
    if tie_proj and not tie_weights:
      raise ValueError('AdaptiveSoftmax: tie_proj needs tie_weights (fairseq ties projections '
                       'only together with --tie-adaptive-weights)')
    self.edges = band_edges(cutoffs, vocab_size)
    self.dims = band_dims(d_model, factor, len(self.edges) - 1)
    self.vocab_size = vocab_size
    self.d_model = d_model
    self.num_tails = len(self.edges) - 2
    self.tie_weights = tie_weights
    self.tie_proj = tie_proj
    self.chunk_size = chunk_size

    def linear(n_in, n_out):
      return nnx.Linear(n_in, n_out, use_bias=False, param_dtype=jnp.float32,
                        kernel_init=_xavier_uniform, rngs=rngs)

    head_size = self.edges[1]
    self.head_words = None if tie_weights else linear(d_model, head_size)
    self.head_clusters = linear(d_model, self.num_tails)
    tail_bands = range(1, len(self.edges) - 1)
    self.tail_projections = nnx.List(
        [] if tie_proj else [linear(d_model, self.dims[i]) for i in tail_bands])
    self.tail_outputs = nnx.List(
        [] if tie_weights else
        [linear(self.dims[i], self.edges[i + 1] - self.edges[i]) for i in tail_bands])
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  # -- weights (float32), resolving the tie ---------------------------------------------------

  def _check_tied(self, tied: AdaptiveInput | None) -> None:
    if not self.tie_weights:
      return
    if tied is None:
      raise ValueError('this AdaptiveSoftmax is tied to an AdaptiveInput; pass it as `tied=`')
    if tuple(tied.edges) != tuple(self.edges) or tuple(tied.dims) != tuple(self.dims):
      raise ValueError(f'tied AdaptiveInput bands {tied.edges}/{tied.dims} differ from the '
                       f'AdaptiveSoftmax bands {self.edges}/{self.dims}')

  def _head_words(self, tied: AdaptiveInput | None) -> jax.Array:
    """`[D, cutoffs[0]]`."""
    if self.tie_weights:
      return tied.band_weights(0)[0].T
    return self.head_words.kernel[...]

  def _tail_weights(self, band: int, tied: AdaptiveInput | None) -> tuple[jax.Array, jax.Array]:
    """Band `band ≥ 1`: `(projection [D, dim], output rows [size, dim])`."""
    if self.tie_proj:
      proj = tied.band_weights(band)[1].T
    else:
      proj = self.tail_projections[band - 1].kernel[...]
    if self.tie_weights:
      rows = tied.band_weights(band)[0]
    else:
      rows = self.tail_outputs[band - 1].kernel[...].T
    return proj, rows

  def _head_log_probs(self, h: jax.Array, tied: AdaptiveInput | None) -> jax.Array:
    # h: [B, T, D] float32 → [B, T, cutoffs[0] + num_tails]
    logits = jnp.concatenate([h @ self._head_words(tied), h @ self.head_clusters.kernel[...]],
                             axis=-1)
    return jax.nn.log_softmax(logits, axis=-1)

  # -- public API ------------------------------------------------------------------------------

  def token_nll(self, hidden: jax.Array, targets: jax.Array, *,
                tied: AdaptiveInput | None = None, deterministic: bool = True) -> jax.Array:
    """Per-token NLL `−log p(target | hidden)` without the full `[B, T, V]` logits.

    The head log-probs are dense (`[B, T, c_0 + k]`); for each tail band the target's logit is a
    gathered dot product and the band's log-normaliser a chunked logsumexp, so memory peaks at
    `[B, T, chunk_size]` per band.

    Args:
      hidden: `[B, T, D]` (any float dtype; computed in float32).
      targets: `[B, T]` int ids in `[0, vocab_size)`.
      tied: the `AdaptiveInput` whose parameters are tied in (required iff `tie_weights`).
      deterministic: disables the adaptive-softmax dropout.

    Returns:
      `[B, T]` float32.
    """
    self._check_tied(tied)
    h = self.dropout(hidden.astype(jnp.float32), deterministic=deterministic)  # [B, T, D]
    head_lp = self._head_log_probs(h, tied)                                 # [B, T, c0 + k]
    c0 = self.edges[1]
    token_lp = jnp.take_along_axis(head_lp, jnp.clip(targets, 0, c0 - 1)[..., None],
                                   axis=-1)[..., 0]                         # [B, T]
    for band in range(1, len(self.edges) - 1):
      lo, hi = self.edges[band], self.edges[band + 1]
      proj, rows = self._tail_weights(band, tied)
      p = self.dropout(h @ proj, deterministic=deterministic)               # [B, T, dim]
      target_rows = rows[jnp.clip(targets - lo, 0, hi - lo - 1)]            # [B, T, dim]
      target_logit = jnp.sum(p * target_rows, axis=-1)                      # [B, T]
      band_lp = (head_lp[..., c0 + band - 1] + target_logit
                 - _logsumexp_rows(p, rows, self.chunk_size))
      token_lp = jnp.where((targets >= lo) & (targets < hi), band_lp, token_lp)
    return -token_lp

  def log_probs(self, hidden: jax.Array, *, tied: AdaptiveInput | None = None) -> jax.Array:
    """Full `log p(· | hidden)`: `[B, T, D]` → `[B, T, V]` float32 (inspection, small vocab)."""
    self._check_tied(tied)
    h = hidden.astype(jnp.float32)
    head_lp = self._head_log_probs(h, tied)
    c0 = self.edges[1]
    parts = [head_lp[..., :c0]]
    for band in range(1, len(self.edges) - 1):
      proj, rows = self._tail_weights(band, tied)
      tail_lp = jax.nn.log_softmax((h @ proj) @ rows.T, axis=-1)             # [B, T, size]
      parts.append(head_lp[..., c0 + band - 1, None] + tail_lp)
    return jnp.concatenate(parts, axis=-1)

