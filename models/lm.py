"""The shared decoder-only transformer language model.

A fairseq-style `transformer_lm` (Vaswani et al. 2017; Baevski & Auli 2019): token embeddings
(plain, or adaptive input) scaled by √D, absolute positions, embedding dropout, `num_layers`
`DecoderBlock`s whose attention core comes from the `attention/` registry, an optional final
LayerNorm (pre-LN only), and an output layer: the transposed embedding matrix (tied, Press & Wolf
2017), a separate bias-free projection, or the adaptive softmax (Grave et al. 2017).

    model = TransformerLM(config.model, config.attention, rngs=nnx.Rngs(params=0, dropout=1))
    hidden = model(tokens, valid=valid, deterministic=False)      # [B, T, D]
    nll = model.token_nll(hidden, targets, deterministic=False)   # [B, T] float32

The trainer reseeds dropout each step with `nnx.reseed(model, dropout=key)`. Parameters are
float32; `model.dtype = 'bfloat16'` runs the transformer in bfloat16 and keeps logits and losses
in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from attention import masks as masks_lib
from models import adaptive
from models import positions as positions_lib
from models import transformer

DTYPES = transformer.DTYPES


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the offending `model.*` option."""
  if config.vocab_size <= 0:
    raise ValueError(f'model.vocab_size={config.vocab_size} must be positive; it is set from the '
                     'data (the tokenizer / dictionary size)')
  if config.num_layers < 0:
    raise ValueError(f'model.num_layers={config.num_layers} must be ≥ 0')
  transformer.validate_block_options(config)
  if config.positions == 'learned' and config.max_len <= 0:
    raise ValueError(f'model.max_len={config.max_len} must be positive with learned positions')
  if not 0.0 <= config.adaptive_softmax_dropout < 1.0:
    raise ValueError(f'model.adaptive_softmax_dropout={config.adaptive_softmax_dropout} must '
                     'lie in [0, 1)')
  if config.adaptive_input or config.adaptive_softmax:
    edges = adaptive.band_edges(config.adaptive_cutoffs, config.vocab_size)
    adaptive.band_dims(config.d_model, config.adaptive_factor, len(edges) - 1)
  if config.tie_embeddings and config.adaptive_input != config.adaptive_softmax:
    raise ValueError(
        'model.tie_embeddings=True needs model.adaptive_input and model.adaptive_softmax both on '
        '(tied adaptive weights and projections) or both off (tied embedding matrix); got '
        f'adaptive_input={config.adaptive_input}, adaptive_softmax={config.adaptive_softmax}. '
        'Set model.tie_embeddings=False to untie.')


class TransformerLM(nnx.Module):
  """Decoder-only transformer LM; see the module docstring."""

  def __init__(self, model_config: ml_collections.ConfigDict,
               attention_config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    """Builds the model.

    Args:
      model_config: `config.model` (configs/common.py `model_config()`), `vocab_size` filled in.
      attention_config: `config.attention` (configs/common.py `attention_config()`).
      rngs: `params` (or `default`) for initialisation, `dropout` for the dropout streams.
    """
    c = model_config
    validate_config(c)
    self.dtype = DTYPES[c.dtype]
    self.d_model = c.d_model
    self.vocab_size = c.vocab_size
    self.max_len = c.max_len
    self.positions_kind = c.positions
    self.embed_scale = math.sqrt(c.d_model) if c.scale_embeddings else 1.0
    self.tie_embeddings = bool(c.tie_embeddings)
    cutoffs = tuple(c.adaptive_cutoffs)

    if c.adaptive_input:
      self.embed = adaptive.AdaptiveInput(c.vocab_size, c.d_model, cutoffs,
                                          factor=c.adaptive_factor, dtype=self.dtype, rngs=rngs)
    else:
      # fairseq's Embedding: N(0, D^-1/2), so √D-scaled embeddings have unit variance.
      self.embed = nnx.Embed(c.vocab_size, c.d_model, dtype=self.dtype, param_dtype=jnp.float32,
                             embedding_init=nnx.initializers.normal(stddev=c.d_model**-0.5),
                             rngs=rngs)
    self.positions = positions_lib.create(c.positions, d_model=c.d_model, max_len=c.max_len,
                                          dtype=self.dtype, rngs=rngs)
    self.embed_dropout = nnx.Dropout(c.dropout, rngs=rngs)
    self.layers = nnx.List([
        transformer.DecoderBlock(
            c.d_model, c.num_heads, c.d_ff, attention_config, max_len=c.max_len,
            activation=c.activation, dropout=c.dropout,
            activation_dropout=c.activation_dropout, pre_norm=c.pre_norm, dtype=self.dtype,
            layer_index=i, rngs=rngs)
        for i in range(c.num_layers)
    ])
    if c.pre_norm and c.final_norm:
      self.final_norm = nnx.LayerNorm(c.d_model, epsilon=transformer.LAYER_NORM_EPS,
                                      dtype=self.dtype, param_dtype=jnp.float32, rngs=rngs)
    else:
      self.final_norm = None

    if c.adaptive_softmax:
      self.adaptive_softmax = adaptive.AdaptiveSoftmax(
          c.vocab_size, c.d_model, cutoffs, factor=c.adaptive_factor,
          dropout=c.adaptive_softmax_dropout, tie_weights=self.tie_embeddings,
          tie_proj=self.tie_embeddings, rngs=rngs)
    else:
      self.adaptive_softmax = None
    if c.adaptive_softmax or self.tie_embeddings:
      self.output = None
    else:
      self.output = nnx.Linear(c.d_model, c.vocab_size, use_bias=False, param_dtype=jnp.float32,
                               kernel_init=nnx.initializers.normal(stddev=c.d_model**-0.5),
                               rngs=rngs)

  def __call__(self, tokens: jax.Array, *, valid: jax.Array | None = None,
               positions: jax.Array | None = None, deterministic: bool = True,
               sow_weights: bool = False) -> jax.Array:
    """Runs the decoder.

    Args:
      tokens: `[B, T]` int32 token ids.
      valid: `[B, T]` bool, False at padding; padded queries and keys are masked out
        (`causal() & padding(valid, valid)`). None: every token is valid.
      positions: `[B, T]` int positions; default `0 … T−1` in every row. With learned positions
        they must lie in `[0, model.max_len)` (not checkable under jit).
      deterministic: disables every dropout.
      sow_weights: every layer's core sows its attention weights `[B, N, T, T]` (and its
        self-attention layer the context), and the model sows each layer's output as
        `hidden_states` (a tuple, one `[B, T, D]` per layer); read them with
        `nnx.pop(model, nnx.Intermediate)`.

    Returns:
      hidden `[B, T, D]` in the compute dtype.
    """
    b, t = tokens.shape
    if self.positions_kind == 'learned' and t > self.max_len:
      raise ValueError(f'sequence length {t} exceeds model.max_len={self.max_len}, the size of '
                       'the learned position table; raise model.max_len or shorten the sequence')
    x = self.embed(tokens)                                                  # [B, T, D]
    x = x * jnp.asarray(self.embed_scale, x.dtype)
    if self.positions is not None:
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
      x = x + self.positions(positions).astype(x.dtype)
    x = self.embed_dropout(x, deterministic=deterministic)

    mask = masks_lib.causal()
    if valid is not None:
      mask = mask & masks_lib.padding(valid, valid)
    for layer in self.layers:
      x = layer(x, mask, deterministic=deterministic, sow_weights=sow_weights)
      if sow_weights:
        self.sow(nnx.Intermediate, 'hidden_states', x)
    if self.final_norm is not None:
      x = self.final_norm(x)
    return x

  def _tied_input(self) -> adaptive.AdaptiveInput | None:
    return self.embed if self.tie_embeddings else None

  def logits(self, hidden: jax.Array) -> jax.Array:
    """`hidden: [B, T, D]` → `[B, T, V]` float32 (not for the adaptive softmax: use log_probs)."""
    if self.adaptive_softmax is not None:
      raise ValueError('TransformerLM.logits is undefined with model.adaptive_softmax; use '
                       'log_probs (full distribution) or token_nll')
    h = hidden.astype(jnp.float32)
    if self.tie_embeddings:
      return jnp.einsum('btd,vd->btv', h, self.embed.embedding[...])
    return h @ self.output.kernel[...]

  def log_probs(self, hidden: jax.Array) -> jax.Array:
    """`log p(· | hidden)`: `[B, T, D]` → `[B, T, V]` float32."""
    if self.adaptive_softmax is not None:
      return self.adaptive_softmax.log_probs(hidden, tied=self._tied_input())
    return jax.nn.log_softmax(self.logits(hidden), axis=-1)

  def token_nll(self, hidden: jax.Array, targets: jax.Array, label_smoothing: float = 0.0, *,
                deterministic: bool = True) -> jax.Array:
    """Per-token loss `[B, T]` float32 (padding is not masked here: the caller weights it).

    With `label_smoothing = ε > 0` this is fairseq's `label_smoothed_nll_loss`
    (`transformer.label_smoothed_nll`); with ε = 0 the plain NLL.

    Args:
      hidden: `[B, T, D]` from `__call__`.
      targets: `[B, T]` int ids.
      label_smoothing: ε in [0, 1); must be 0 with the adaptive softmax.
      deterministic: disables the adaptive-softmax dropout (pass False when training).
    """
    if not 0.0 <= label_smoothing < 1.0:
      raise ValueError(f'label_smoothing={label_smoothing} must lie in [0, 1)')
    if self.adaptive_softmax is not None:
      if label_smoothing:
        raise ValueError('label_smoothing > 0 is not supported with model.adaptive_softmax '
                         '(fairseq neither: its adaptive_loss has no smoothing); set '
                         'label_smoothing=0')
      return self.adaptive_softmax.token_nll(hidden, targets, tied=self._tied_input(),
                                             deterministic=deterministic)
    return transformer.label_smoothed_nll(self.logits(hidden), targets, label_smoothing)
