"""The encoder–decoder transformer for translation, built from the shared blocks.

fairseq's `transformer` architecture (Vaswani et al. 2017, "Attention Is All You Need";
fairseq `TransformerEncoder` / `TransformerDecoder`): source and target token embeddings scaled
by √D plus absolute positions, embedding dropout, `encoder_layers` blocks of self-attention and
FFN, `decoder_layers` blocks of causal self-attention, encoder–decoder (cross-) attention and
FFN, a final LayerNorm on each side when the blocks are pre-LN (`normalize_before`), and an
output layer that is the transposed target embedding (`share_decoder_input_output_embed`), or a
separate matrix. `share_all_embeddings` also ties the source embedding to the target one (one
joint vocabulary, as WMT14 recipes use).

Each attention role takes its core from the `attention/` registry and may use its own kind
(`model.encoder_attention`, `model.decoder_attention`, `model.cross_attention`; '' = the
config's `attention.kind`). Prior masks and biases (`attention.mask`, `attention.bias`) apply to
both self-attentions, never to cross-attention, whose query and key positions are on different
axes.

    model = EncoderDecoder(config.model, config.attention, rngs=nnx.Rngs(params=0, dropout=1))
    hidden = model(source, target_in, deterministic=False)              # [B, T, D]
    nll = model.token_nll(hidden, targets, label_smoothing=0.1)         # [B, T]

Decoding (`decoder_step_fn`) runs one target position at a time. When every decoder
self-attention layer supports a key/value cache (`MultiHeadAttention.supports_decode_cache`:
cores whose attention over a key-padding mask equals their causal attention, and no prior mask
or bias) each step feeds one token per hypothesis and appends its keys and values to the cache,
whose rows beam search reorders with the hypotheses; otherwise the step recomputes the decoder
over the whole (fixed-size) prefix buffer and reads position t, which is correct for every
causal core and O(L) times slower. Cross-attention keys and values are projected from the
encoder output once per sentence in both modes.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

import attention
from attention import masks as masks_lib
from models import decoding
from models import positions as positions_lib
from models import transformer

DTYPES = transformer.DTYPES
ROLES = ('encoder', 'decoder', 'cross')
DECODE_MODES = ('auto', 'incremental', 'recompute')


def role_attention_configs(model_config: ml_collections.ConfigDict,
                           attention_config: ml_collections.ConfigDict
                           ) -> dict[str, ml_collections.ConfigDict]:
  """`config.attention` with `kind` set per role from `model.<role>_attention` ('' = unchanged)."""
  out = {}
  for role in ROLES:
    kind = model_config[f'{role}_attention'] or attention_config.kind
    attention.core_class(kind)  # an unknown kind is an error listing the known ones
    c = ml_collections.ConfigDict(attention_config.to_dict())
    c.kind = kind
    out[role] = c
  return out


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the offending `model.*` option."""
  for key in ('src_vocab_size', 'tgt_vocab_size'):
    if config[key] <= 0:
      raise ValueError(f'model.{key}={config[key]} must be positive; it is set from the data '
                       '(the dictionary or sentencepiece model size)')
  if config.encoder_layers < 0 or config.decoder_layers < 1:
    raise ValueError('model.encoder_layers must be ≥ 0 and model.decoder_layers ≥ 1; got '
                     f'{config.encoder_layers}, {config.decoder_layers}')
  transformer.validate_block_options(config)
  if config.max_len <= 0:
    raise ValueError(f'model.max_len={config.max_len} must be positive (the longest source or '
                     'target sequence, fairseq --max-source/target-positions)')
  if config.share_all_embeddings and config.src_vocab_size != config.tgt_vocab_size:
    raise ValueError(
        'model.share_all_embeddings=True needs one joint vocabulary, but the source has '
        f'{config.src_vocab_size} symbols and the target {config.tgt_vocab_size}; use a joined '
        'dictionary or sentencepiece model (data.vocab) or set model.share_all_embeddings=False')


class EncoderDecoder(nnx.Module):
  """Encoder–decoder transformer; see the module docstring."""

  def __init__(self, model_config: ml_collections.ConfigDict,
               attention_config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    """Builds the model.

    Args:
      model_config: `config.model` (configs/common.py `seq2seq_model_config()`), vocabulary
        sizes filled in from the data.
      attention_config: `config.attention`; its `kind` is the default of every role.
      rngs: `params` for initialisation, `dropout` for the dropout streams.
    """
    c = model_config
    validate_config(c)
    roles = role_attention_configs(c, attention_config)
    self.role_kinds = {role: cfg.kind for role, cfg in roles.items()}
    self.dtype = DTYPES[c.dtype]
    self.d_model = c.d_model
    self.pad_id = int(c.pad_id)
    self.max_len = int(c.max_len)
    self.positions_kind = c.positions
    self.embed_scale = math.sqrt(c.d_model) if c.scale_embeddings else 1.0
    self.share_all = bool(c.share_all_embeddings)
    self.tie_output = bool(c.share_decoder_input_output_embed or c.share_all_embeddings)

    def embedding(vocab_size):
      # fairseq's Embedding: N(0, D^-1/2), so √D-scaled embeddings have unit variance.
      return nnx.Embed(vocab_size, c.d_model, dtype=self.dtype, param_dtype=jnp.float32,
                       embedding_init=nnx.initializers.normal(stddev=c.d_model**-0.5),
                       rngs=rngs)

    def final_norm():
      if not (c.pre_norm and c.final_norm):
        return None
      return nnx.LayerNorm(c.d_model, epsilon=transformer.LAYER_NORM_EPS, dtype=self.dtype,
                           param_dtype=jnp.float32, rngs=rngs)

    self.src_embed = embedding(c.src_vocab_size)
    self.tgt_embed = None if self.share_all else embedding(c.tgt_vocab_size)
    self.positions = positions_lib.create(c.positions, d_model=c.d_model, max_len=c.max_len,
                                          dtype=self.dtype, rngs=rngs)
    self.embed_dropout = nnx.Dropout(c.dropout, rngs=rngs)
    block = dict(max_len=c.max_len, activation=c.activation, dropout=c.dropout,
                 activation_dropout=c.activation_dropout, pre_norm=c.pre_norm, dtype=self.dtype,
                 rngs=rngs)
    self.encoder_layers = nnx.List([
        transformer.DecoderBlock(c.d_model, c.num_heads, c.d_ff, roles['encoder'],
                                 layer_index=i, **block)
        for i in range(c.encoder_layers)])
    self.encoder_norm = final_norm()
    self.decoder_layers = nnx.List([
        transformer.DecoderBlock(c.d_model, c.num_heads, c.d_ff, roles['decoder'],
                                 cross_attention=True, cross_attention_config=roles['cross'],
                                 layer_index=i, **block)
        for i in range(c.decoder_layers)])
    self.decoder_norm = final_norm()
    if self.tie_output:
      self.output = None
    else:
      self.output = nnx.Linear(c.d_model, c.tgt_vocab_size, use_bias=False,
                               param_dtype=jnp.float32,
                               kernel_init=nnx.initializers.normal(stddev=c.d_model**-0.5),
                               rngs=rngs)

  # ----------------------------------------------------------------------------- embeddings
  def _target_embedding(self) -> nnx.Embed:
    return self.src_embed if self.share_all else self.tgt_embed

  def _embed(self, table: nnx.Embed, tokens: jax.Array, positions: jax.Array, *,
             deterministic: bool) -> jax.Array:
    if self.positions_kind == 'learned' and tokens.shape[1] > self.max_len:
      raise ValueError(f'sequence length {tokens.shape[1]} exceeds model.max_len={self.max_len}, '
                       'the size of the learned position table')
    x = table(tokens) * jnp.asarray(self.embed_scale, self.dtype)            # [B, T, D]
    if self.positions is not None:
      x = x + self.positions(positions).astype(x.dtype)
    return self.embed_dropout(x, deterministic=deterministic)

  @staticmethod
  def _arange(tokens: jax.Array) -> jax.Array:
    b, t = tokens.shape
    return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))

  # ------------------------------------------------------------------------------- forward
  def encode(self, source: jax.Array, *, deterministic: bool = True,
             sow_weights: bool = False) -> tuple[jax.Array, jax.Array]:
    """`source: [B, S]` ids (padded with `pad_id`) → memory `[B, S, D]`, valid `[B, S]` bool.

    With `sow_weights` every layer sows its attention internals (models/transformer.py) and
    this model each layer's output as 'encoder_hidden_states' (`decode`: 'decoder_hidden_states').
    """
    valid = source != self.pad_id
    x = self._embed(self.src_embed, source, self._arange(source), deterministic=deterministic)
    mask = masks_lib.padding(valid, valid)
    for layer in self.encoder_layers:
      x = layer(x, mask, deterministic=deterministic, sow_weights=sow_weights)
      if sow_weights:
        self.sow(nnx.Intermediate, 'encoder_hidden_states', x)
    if self.encoder_norm is not None:
      x = self.encoder_norm(x)
    return x, valid

  def decode(self, target_in: jax.Array, memory: jax.Array, source_valid: jax.Array, *,
             deterministic: bool = True, sow_weights: bool = False) -> jax.Array:
    """Teacher-forced decoder: `target_in: [B, T]` (bos + target[:-1]) → hidden `[B, T, D]`.

    Padding sits only at the end of a target, so the causal mask alone keeps every real
    position from seeing it; padded positions carry weight 0 in the loss.
    """
    x = self._embed(self._target_embedding(), target_in, self._arange(target_in),
                    deterministic=deterministic)
    memory_mask = masks_lib.padding(None, source_valid)
    for layer in self.decoder_layers:
      x = layer(x, masks_lib.causal(), memory=memory, memory_mask=memory_mask,
                deterministic=deterministic, sow_weights=sow_weights)
      if sow_weights:
        self.sow(nnx.Intermediate, 'decoder_hidden_states', x)
    if self.decoder_norm is not None:
      x = self.decoder_norm(x)
    return x

  def __call__(self, source: jax.Array, target_in: jax.Array, *, deterministic: bool = True,
               sow_weights: bool = False) -> jax.Array:
    """`source: [B, S]`, `target_in: [B, T]` → decoder hidden states `[B, T, D]`."""
    memory, valid = self.encode(source, deterministic=deterministic, sow_weights=sow_weights)
    return self.decode(target_in, memory, valid, deterministic=deterministic,
                       sow_weights=sow_weights)

  # -------------------------------------------------------------------------------- output
  def logits(self, hidden: jax.Array) -> jax.Array:
    """`hidden: [..., D]` → `[..., V_tgt]` float32."""
    h = hidden.astype(jnp.float32)
    if self.tie_output:
      return jnp.einsum('...d,vd->...v', h, self._target_embedding().embedding[...])
    return h @ self.output.kernel[...]

  def log_probs(self, hidden: jax.Array) -> jax.Array:
    return jax.nn.log_softmax(self.logits(hidden), axis=-1)

  def token_nll(self, hidden: jax.Array, targets: jax.Array, label_smoothing: float = 0.0, *,
                deterministic: bool = True) -> jax.Array:
    """Per-token (label-smoothed) NLL `[B, T]`; `transformer.label_smoothed_nll`."""
    del deterministic  # no dropout in the output layer
    return transformer.label_smoothed_nll(self.logits(hidden), targets, label_smoothing)

  # ------------------------------------------------------------------------------ decoding
  @property
  def supports_decode_cache(self) -> bool:
    """Whether every decoder self-attention layer can decode with a key/value cache."""
    return all(layer.self_attention.supports_decode_cache for layer in self.decoder_layers)

  def resolve_decode_mode(self, mode: str) -> str:
    """'incremental' or 'recompute' for `mode` ∈ DECODE_MODES; refuses an impossible request."""
    if mode not in DECODE_MODES:
      raise ValueError(f'decode mode {mode!r}: expected one of {", ".join(DECODE_MODES)}')
    if mode == 'auto':
      return 'incremental' if self.supports_decode_cache else 'recompute'
    if mode == 'incremental' and not self.supports_decode_cache:
      raise ValueError(
          f'incremental decoding needs a key/value cache, which the decoder self-attention '
          f'(attention.kind={self.role_kinds["decoder"]}, with attention.mask/bias) does not '
          'support; use decode mode auto or recompute')
    return mode

  def decoder_step_fn(self, memory: jax.Array, source_valid: jax.Array, *, max_len: int,
                      beam_size: int = 1, mode: str = 'auto') -> tuple[Callable, Any]:
    """A step function for `models/decoding.py` and its initial cache.

    Args:
      memory: encoder output `[B, S, D]`, once per sentence (not repeated per beam).
      source_valid: `[B, S]` bool.
      max_len: L, the decoder-input buffer length (bos + at most L − 1 output tokens).
      beam_size: K, hypotheses per sentence (1 for greedy search).
      mode: 'incremental' (key/value cache), 'recompute' (the prefix every step) or 'auto'.

    Returns:
      `(step_fn, cache)` with `step_fn(tokens: [B·K, L], t, cache) -> (log_probs [B·K, V],
      cache)`, rows b·K … b·K + K − 1 the hypotheses of sentence b (the order of
      `decoding.expand_for_beam`): the distribution of output position t given decoder inputs
      `tokens[:, :t + 1]`.

    The incremental cache is one `MultiHeadAttention.init_cache` per decoder layer, B·K rows;
    beam search reorders its rows with the hypotheses. The cross-attention keys and values are
    projected once per sentence and stay out of the cache.
    """
    mode = self.resolve_decode_mode(mode)
    b, k_beams = memory.shape[0], int(beam_size)
    if mode == 'recompute':
      memory, source_valid = decoding.expand_for_beam((memory, source_valid), k_beams)

      def recompute_step(tokens, t, cache):
        hidden = self.decode(tokens, memory, source_valid, deterministic=True)   # [N, L, D]
        h_t = jax.lax.dynamic_index_in_dim(hidden, t, axis=1, keepdims=False)    # [N, D]
        return self.log_probs(h_t), cache
      return recompute_step, ()

    memory_mask = masks_lib.padding(None, source_valid)
    memory_kv = [layer.cross_attention.project_memory(memory) for layer in self.decoder_layers]
    cache = [layer.self_attention.init_cache(b * k_beams, max_len)
             for layer in self.decoder_layers]

    def incremental_step(tokens, t, cache):
      token = jax.lax.dynamic_slice_in_dim(tokens, t, 1, axis=1)                # [B·K, 1]
      position = jnp.full_like(token, t, dtype=jnp.int32)
      x = self._embed(self._target_embedding(), token, position, deterministic=True)
      new_cache = []
      for layer, kv, layer_cache in zip(self.decoder_layers, memory_kv, cache):
        x, c = layer.decode_step(x, layer_cache, t, memory_kv=kv, memory_mask=memory_mask)
        new_cache.append(c)
      if self.decoder_norm is not None:
        x = self.decoder_norm(x)
      return self.log_probs(x[:, 0]), new_cache

    return incremental_step, cache
