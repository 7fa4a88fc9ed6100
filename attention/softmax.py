"""Softmax attention (Vaswani et al. 2017, eq. 1): softmax(q·kᵀ/√H + prior, masked)·v.

`attention.kind=softmax`, with two implementations (`attention.impl`):

- `xla`: the plain einsum formulation, also the reference the other cores and kernels are
  tested against. Logits, softmax and the weighted sum of v are computed in
  `accumulation_dtype(q, k, v)` (attention/registry.py): float32 for bfloat16/float16/float32
  inputs, float64 for float64 inputs.
- `cudnn`: cuDNN flash attention through `jax.nn.dot_product_attention(implementation='cudnn')`,
  with the mask and additive priors materialised densely. NVIDIA GPUs only; bfloat16/float16
  inputs; no attention dropout and no multiplicative score mods.
- `pallas`: our flash-attention kernel (attention/kernels/flash.py): empty tiles of the mask
  are skipped, full ones unmasked, ALiBi-type priors computed in the kernel. Triton on GPU,
  Mosaic on TPU, the interpreter on CPU (tests only: slow). No attention dropout and no
  multiplicative score mods; tile sizes `attention.block_q` / `attention.block_k`.
- `tokamax`: `tokamax.dot_product_attention` (an optional dependency, the GPU install line of
  the README), the strongest public JAX attention kernel; GPU or TPU. The mask is mapped from
  the mask library: `causal()` → `is_causal`, one `local_window` → `local_window_size`, every
  other term (padding, segments, priors) as a dense boolean mask; additive score mods as a
  dense bias. No attention dropout and no multiplicative score mods.
- `auto`: per backend, the fastest of these that supports the call (CPU: xla; GPU: cudnn for
  bfloat16/float16 without dropout, else pallas without dropout, else xla; TPU: pallas without
  dropout, else xla), chosen when the layer is first traced and logged once.

On CPU the `xla` path runs query block by query block over only the keys each block's mask
lets it see (`query_block_spans`), when the mask leaves whole tiles empty (a causal mask does)
and neither attention dropout nor sown weights need the full `[T, S]` matrix: the same
arithmetic per row, with the tiles above a causal diagonal skipped (attention/cpu_paths.py).

Conventions shared by every core (attention/registry.py): the mask is applied after the score
mod, and a query row with nothing to attend to (e.g. a padded query) outputs exact zeros with
finite gradients, never the uniform average or NaN.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from attention import cpu_paths
from attention.biases import ScoreMod
from attention.kernels import backend as kernel_backend
from attention.kernels import flash
from attention.masks import EMPTY, Mask
from attention.registry import accumulation_dtype, check_implementation, check_shapes, register

IMPLEMENTATIONS = ('xla', 'cudnn', 'pallas', 'tokamax', 'auto')


def attention_weights(q: jnp.ndarray, k: jnp.ndarray, mask: Mask | None = None,
                      score_mod: ScoreMod | None = None, *,
                      scores_hook: Callable[[jnp.ndarray], jnp.ndarray] | None = None
                      ) -> jnp.ndarray:
  """Softmax attention weights `[B, N, T, S]` for `q: [B, T, N, H]`, `k: [B, S, N, H]`.

  In `accumulation_dtype(q, k)`: float32 for bfloat16/float16/float32 inputs, float64 for
  float64. Rows sum to 1 where the mask lets the query see at least one key, and are all zero
  where it sees none: `jax.nn.softmax(where=mask)` normalises over the allowed keys only, so a
  fully masked row has no denominator to divide by zero and its gradient is zero, not NaN.
  `scores_hook` sees the scaled, score-modded scores `[B, N, T, S]` before the mask and returns
  what the softmax uses (a core passes `perturb` there to expose ∂loss/∂scores, capture.py).
  """
  s = scaled_scores(q, k, score_mod, scores_hook=scores_hook)
  m = None if mask is None else mask.dense(q.shape[1], k.shape[1])
  return jax.nn.softmax(s, axis=-1, where=m)


def scaled_scores(q: jnp.ndarray, k: jnp.ndarray, score_mod: ScoreMod | None = None, *,
                  scores_hook: Callable[[jnp.ndarray], jnp.ndarray] | None = None,
                  q_offset: int = 0, kv_offset: int = 0) -> jnp.ndarray:
  """s = q·kᵀ/√H (+ score mod) `[B, N, T, S]` in `accumulation_dtype(q, k)`, before any mask.

  The scores every dense core starts from; `scores_hook` as in `attention_weights`. The
  offsets place `q` and `k` in the sequence for the score mod (a block of a longer call).
  """
  scale = q.shape[-1] ** -0.5
  # At least float32 logits, even for bfloat16 inputs: the products of bf16 numbers are exact
  # in fp32, so only the accumulation rounds. float64 inputs keep float64 throughout.
  s = jnp.einsum('btnh,bsnh->bnts', q, k,
                 preferred_element_type=accumulation_dtype(q, k)) * scale
  if score_mod is not None:
    s = score_mod(s, q_offset=q_offset, kv_offset=kv_offset)
  if scores_hook is not None:
    s = scores_hook(s)
  return s


def scores_probe(core: nnx.Module, sow_weights: bool, name: str = 'scores'):
  """A `scores_hook` that marks the scores with `core.perturb(name, ·)` when sowing, else None.

  Under `nnx.capture` with perturbations (attention/capture.py `score_gradients`) the gradient
  with respect to the perturbation is ∂loss/∂scores; otherwise `perturb` returns its input.
  Outside `nnx.capture` (a test popping the sown values itself) there is nothing to perturb,
  and `perturb` would leave a variable on the module, so the hook is None there too.
  """
  if not sow_weights or not hasattr(core, '__captures__'):
    return None
  return lambda s: core.perturb(name, s)


def weighted_values(w: jnp.ndarray, v: jnp.ndarray, dtype) -> jnp.ndarray:
  """context_i = Σ_j w_ij v_j: `w: [B, N, T, S]`, `v: [B, S, N, H]` → `[B, T, N, H]` in v's
  dtype, accumulated in `dtype`."""
  out = jnp.einsum('bnts,bsnh->btnh', w.astype(v.dtype), v, preferred_element_type=dtype)
  return out.astype(v.dtype)


def cpu_query_block(q_len: int) -> int:
  """Query rows per block of the CPU path: 64, or q_len / 8 when longer (at most 8 blocks)."""
  # Measured on 2 CPU cores (docs/benchmarks.md): 64 is the fastest block at T ≤ 512; beyond,
  # more and smaller blocks cost more in per-op overhead than they save in skipped tiles.
  return max(64, -(-q_len // 8))


def query_block_spans(mask: Mask | None, q_len: int, kv_len: int, block: int
                      ) -> list[tuple[int, int, int, int]] | None:
  """`(q0, q1, k0, k1)` per block of `block` queries: the keys `[k0, k1)` the mask lets
  queries `[q0, q1)` see, in tiles of `block` keys; None when no block can skip a key tile
  (no mask, one block, or a mask only known at run time), where blocking would only add work.

  Tiles come from `mask.block_summary`, exact for static masks and conservative for dynamic
  parts (padding), so a skipped key is one the mask forbids: its weight would be exactly 0.
  A block that sees no key at all keeps one masked tile, so that its output is zeros.
  """
  if mask is None or q_len <= block:
    return None
  spans = []
  for i, row in enumerate(mask.block_summary(q_len, kv_len, block, block)):
    seen = np.flatnonzero(row != EMPTY)
    k0, k1 = (seen[0] * block, (seen[-1] + 1) * block) if seen.size else (0, block)
    spans.append((i * block, min((i + 1) * block, q_len), int(k0), int(min(k1, kv_len))))
  if all(k0 == 0 and k1 == kv_len for _, _, k0, k1 in spans):
    return None
  return spans


def attention_in_query_blocks(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: Mask,
                              score_mod: ScoreMod | None,
                              spans: list[tuple[int, int, int, int]]) -> jnp.ndarray:
  """Softmax attention `[B, T, N, H]` of each query block over its key span only
  (`query_block_spans`): each row's scores, softmax and weighted sum are those of the full
  `[T, S]` computation, without the keys its mask forbids."""
  allowed = mask.dense(q.shape[1], k.shape[1])
  dtype = accumulation_dtype(q, k, v)
  out = []
  for q0, q1, k0, k1 in spans:
    s = scaled_scores(q[:, q0:q1], k[:, k0:k1], score_mod, q_offset=q0, kv_offset=k0)
    w = jax.nn.softmax(s, axis=-1, where=allowed[..., q0:q1, k0:k1])
    out.append(weighted_values(w, v[:, k0:k1], dtype))
  return jnp.concatenate(out, axis=1)


class DenseMapCore(nnx.Module):
  """A core whose output is an explicit map times V (NON, NAP, CoDA): a subclass sets `kind`,
  `num_heads`, `head_dim` and `dropout`, and defines `weights(q, k, mask, score_mod, *, probe)`
  → `[B, N, T, S]`. The call checks shapes, sows the map, applies dropout and multiplies V."""

  kind: str = ''

  def __call__(self, q, k, v, mask: Mask | None = None, *, score_mod: ScoreMod | None = None,
               deterministic: bool = True, sow_weights: bool = False):
    check_shapes(self.kind, self.num_heads, self.head_dim, q, k, v)
    w = self.weights(q, k, mask, score_mod, probe=sow_weights)
    if sow_weights:
      self.sow(nnx.Intermediate, 'attention_weights', w)
    w = self.dropout(w, deterministic=deterministic)
    return weighted_values(w, v, accumulation_dtype(q, k, v))


@register('softmax')
class SoftmaxAttention(nnx.Module):
  """Multi-head softmax attention core: `core(q, k, v, mask, *, score_mod, deterministic)`.

  Shapes: `q: [B, T, N, H]`, `k, v: [B, S, N, H]` → `[B, T, N, H]` in `v`'s dtype, computed
  in `accumulation_dtype(q, k, v)` (xla). Reads
  `config.impl` (xla | cudnn | pallas | auto), `config.dropout` (on the attention weights, xla
  only) and, for pallas, `config.block_q` / `config.block_k` (0: the kernel's default).
  """

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict()

  # Attention over a key-padding mask equals the causal attention at that position, so a
  # decoder may cache keys/values and feed one query per step (models/seq2seq.py).
  supports_decode_cache = True

  def __init__(self, *, num_heads: int, head_dim: int, config, rngs: nnx.Rngs,
               layer_index: int = 0, max_len: int = 0):
    del layer_index, max_len  # unused
    impl = check_implementation(config, 'softmax', IMPLEMENTATIONS)
    if impl in ('cudnn', 'tokamax'):
      if config.dropout > 0:
        raise ValueError(f'attention.dropout={config.dropout} is not supported with '
                         f'attention.impl={impl}; set attention.dropout=0 or use '
                         'attention.impl=xla')
      backend = jax.default_backend()
      devices = ('gpu',) if impl == 'cudnn' else ('gpu', 'tpu')
      if backend not in devices:
        raise ValueError(f'attention.impl={impl} needs '
                         f'{"an NVIDIA GPU" if impl == "cudnn" else "a GPU or a TPU"}; this '
                         f'backend is {backend}; use attention.impl=xla (or pallas)')
      if impl == 'tokamax':
        try:
          import tokamax  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        except ImportError:
          raise ValueError('attention.impl=tokamax needs the optional package tokamax '
                           '(pip install tokamax); or use attention.impl=pallas') from None
    self.impl = impl
    self.kernel_options = flash.kernel_options(config, head_dim, impl)
    self.dropout_rate = config.dropout
    self.num_heads, self.head_dim = num_heads, head_dim
    self.dropout = nnx.Dropout(config.dropout, rngs=rngs)

  def _resolve(self, q, score_mod) -> str:
    if self.impl != 'auto':
      return self.impl
    return kernel_backend.auto_implementation(
        'softmax', q.dtype, dropout=self.dropout_rate, cudnn=True,
        additive=score_mod is None or score_mod.additive)

  def __call__(self, q, k, v, mask: Mask | None = None, *, score_mod: ScoreMod | None = None,
               deterministic: bool = True, sow_weights: bool = False):
    impl = self._resolve(q, score_mod)
    if impl in ('cudnn', 'pallas', 'tokamax'):
      if impl == 'cudnn':
        out = self._cudnn(q, k, v, mask, score_mod)
      elif impl == 'tokamax':
        out = tokamax_attention(q, k, v, mask, score_mod)
      else:
        out, _ = flash.flash_attention(q, k, v, mask, score_mod, **dict(self.kernel_options))
      if sow_weights:
        # The kernels do not return their weights; recompute them (analysis only).
        self.sow(nnx.Intermediate, 'attention_weights', attention_weights(q, k, mask, score_mod))
      return out
    if cpu_paths.enabled() and not sow_weights and (deterministic or not self.dropout_rate):
      # XLA:CPU computes every tile of the [T, S] scores, masked or not, where PyTorch's CPU
      # flash attention skips those above a causal diagonal; skipping them here made the causal
      # LM's attention 1.4× faster (forward + backward) at T = 256 and 2× at T = 1024.
      # Accelerators keep the single [T, S] computation (or their kernels).
      spans = query_block_spans(mask, q.shape[1], k.shape[1], cpu_query_block(q.shape[1]))
      if spans is not None:
        return attention_in_query_blocks(q, k, v, mask, score_mod, spans)
    w = attention_weights(q, k, mask, score_mod, scores_hook=scores_probe(self, sow_weights))
    if sow_weights:
      self.sow(nnx.Intermediate, 'attention_weights', w)
    w = self.dropout(w, deterministic=deterministic)
    return weighted_values(w, v, accumulation_dtype(q, k, v))

  def _cudnn(self, q, k, v, mask, score_mod):
    """cuDNN flash attention with a dense mask and a dense additive bias."""
    if q.dtype not in (jnp.bfloat16, jnp.float16):
      raise ValueError(f'attention.impl=cudnn needs bfloat16 or float16 q/k/v, got {q.dtype}; '
                       'set model.dtype=bfloat16 or use attention.impl=xla')
    q_len, kv_len = q.shape[1], k.shape[1]
    bias = None
    if score_mod is not None:
      if not score_mod.additive:
        raise ValueError('attention.bias: multiplicative score mods are not supported with '
                         'attention.impl=cudnn (cuDNN only adds a bias); use attention.impl=xla')
      # cuDNN adds the bias in the input dtype, so the prior is rounded to bf16/fp16 here.
      bias = score_mod.dense(q_len, kv_len, q.shape[2]).astype(q.dtype)
    m = None if mask is None else mask.dense(q_len, kv_len)
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=m, implementation='cudnn')
    if m is not None:
      # cuDNN turns the mask into a large negative bias, so a fully masked row gets the mean of
      # v; zero it to keep the convention of the xla path.
      sees_any = jnp.transpose(jnp.any(m, axis=-1), (0, 2, 1))[..., None]  # [B|1, T, N|1, 1]
      out = jnp.where(sees_any, out, jnp.zeros((), out.dtype))
    return out


def tokamax_arguments(mask: Mask | None, q_len: int, kv_len: int) -> dict:
  """`tokamax.dot_product_attention` keywords for a mask of the mask library.

  The top-level AND terms `causal()` and one `local_window(left, right)` become `is_causal` and
  `local_window_size` (which tokamax's kernels exploit); the remaining terms are AND-ed into a
  dense boolean `mask` `[B | 1, N | 1, T, S]`.
  """
  from attention import masks as masks_lib  # pylint: disable=import-outside-toplevel
  terms = masks_lib.and_terms(mask)
  out, rest = {'is_causal': False}, None
  for m in terms:
    if isinstance(m, masks_lib._Causal) and m.offset == 0 and not out['is_causal']:  # pylint: disable=protected-access
      out['is_causal'] = True
    elif (isinstance(m, masks_lib._LocalWindow)  # pylint: disable=protected-access
          and 'local_window_size' not in out):
      out['local_window_size'] = (kv_len if m.left is None else m.left,
                                  q_len if m.right is None else m.right)
    else:
      rest = m if rest is None else rest & m
  if rest is not None:
    out['mask'] = rest.dense(q_len, kv_len)
  return out


def tokamax_attention(q, k, v, mask: Mask | None, score_mod: ScoreMod | None):
  """Softmax attention by `tokamax.dot_product_attention` (`attention.impl=tokamax`)."""
  import tokamax  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    # tokamax reads its settings from absl flags, which a notebook or a test never parses
    # (train.py and eval.py do); use their defaults rather than parse this process's argv.
    flags.FLAGS.mark_as_parsed()
  q_len, kv_len = q.shape[1], k.shape[1]
  kwargs = tokamax_arguments(mask, q_len, kv_len)
  if score_mod is not None:
    if not score_mod.additive:
      raise ValueError('attention.bias: multiplicative score mods are not supported with '
                       'attention.impl=tokamax; use attention.impl=xla')
    kwargs['bias'] = score_mod.dense(q_len, kv_len, q.shape[2]).astype(jnp.float32)
  out = tokamax.dot_product_attention(q, k, v, **kwargs)
  if mask is not None:
    # A row the mask leaves empty gets zeros, as in every core (tokamax would average v).
    sees_any = jnp.transpose(jnp.any(mask.dense(q_len, kv_len), axis=-1), (0, 2, 1))[..., None]
    out = jnp.where(sees_any, out, jnp.zeros((), out.dtype))
  return out.astype(v.dtype)
