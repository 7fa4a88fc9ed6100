"""The encoder–decoder model: per-role attention kinds, masking, and cached decoding.

Properties checked against the model's own full (teacher-forced) forward pass, which the LM
tests already compare with float64 references layer by layer:
- decoding one position at a time (key/value cache, or recomputing the prefix) gives the full
  pass's log-probabilities at every position, for every kind in every role;
- the beam-search cache, reordered as hypotheses are re-selected, gives what recomputing each
  re-selected prefix gives;
- source padding changes nothing for the real tokens, future target tokens change nothing for
  the past (no causal leak);
- embedding sharing ties exactly the arrays it says.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention
from configs import common
from models import decoding
from models import seq2seq

PAD, BOS = 1, 2


def _config(kind='softmax', *, pre_norm=False, encoder='', decoder='', cross='', **model):
  c = common.translation_base_config()
  c.attention.kind = kind
  m = c.model
  m.encoder_layers, m.decoder_layers, m.d_model, m.num_heads, m.d_ff = 2, 2, 32, 4, 64
  m.src_vocab_size, m.tgt_vocab_size, m.max_len = 23, 19, 64
  m.pre_norm = pre_norm
  m.encoder_attention, m.decoder_attention, m.cross_attention = encoder, decoder, cross
  for k, v in model.items():
    m[k] = v
  # Small options so every kind runs on short sequences.
  c.attention.topk.k = 4
  c.attention.performer.num_features = 16
  return c


def _model(c, seed=0):
  return seq2seq.EncoderDecoder(c.model, c.attention, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def _batch(rng, b=2, s=7, t=6, src_vocab=23, tgt_vocab=19):
  source = rng.integers(4, src_vocab, size=(b, s)).astype(np.int32)
  source[0, s - 2:] = PAD   # a padded sentence
  target = rng.integers(4, tgt_vocab, size=(b, t)).astype(np.int32)
  target_in = np.concatenate([np.full((b, 1), BOS, np.int32), target[:, :-1]], axis=1)
  return jnp.asarray(source), jnp.asarray(target_in)


def _stepwise_log_probs(model, source, target_in, mode):
  memory, valid = model.encode(source)
  length = target_in.shape[1]
  step_fn, cache = model.decoder_step_fn(memory, valid, max_len=length, mode=mode)
  step_fn = jax.jit(step_fn)
  out = []
  for t in range(length):
    # Positions after t hold garbage: a correct step never looks at them.
    tokens = target_in.at[:, t + 1:].set(7)
    lp, cache = step_fn(tokens, jnp.int32(t), cache)
    out.append(lp)
  return jnp.stack(out, axis=1)


CACHED_KINDS = [k for k in attention.known_kinds()
                if getattr(attention.core_class(k), 'supports_decode_cache', False)]


@pytest.mark.parametrize('kind,pre_norm', [(k, False) for k in sorted(attention.known_kinds())]
                         + [('softmax', True), ('performer', True)])
def test_stepwise_decoding_equals_full_pass(kind, pre_norm):
  c = _config(kind if kind != 'sea' else 'softmax', pre_norm=pre_norm,
              decoder=kind, cross='softmax' if kind == 'sea' else '')
  if kind == 'sea':
    c.attention.sea.variant = 'causal'
  model = _model(c)
  source, target_in = _batch(np.random.default_rng(0))
  full = model.log_probs(model(source, target_in))
  modes = ['recompute'] + (['incremental'] if kind in CACHED_KINDS else [])
  # NAP divides each query's centred scores by σ + ε (ε = 1e-3): where a query's few scores
  # are nearly equal, it amplifies the float32 rounding that differs between this eager full
  # pass and the jitted steps by up to 1/ε (the eager and the jitted full pass differ as much).
  atol = 1e-3 if kind == 'nap' else 2e-5
  for mode in modes:
    np.testing.assert_allclose(_stepwise_log_probs(model, source, target_in, mode), full,
                               atol=atol, err_msg=f'{kind} {mode}')
  assert model.resolve_decode_mode('auto') == modes[-1]


@pytest.mark.parametrize('kind', CACHED_KINDS)
def test_beam_cache_follows_reordered_hypotheses(kind):
  """Beam search re-selects hypotheses between steps and reorders the key/value cache with them.
  Drive the step with random re-selections and compare every step with the recomputed prefix,
  which has no cache to get wrong."""
  c = _config(kind, pre_norm=kind == 'softmax')
  model = _model(c)
  rng = np.random.default_rng(3)
  b, k, length = 2, 3, 6
  source, _ = _batch(rng, b=b)
  memory, valid = model.encode(source)
  tokens = jnp.asarray(rng.integers(4, 19, size=(b * k, length)).astype(np.int32))
  cached_fn, cache = model.decoder_step_fn(memory, valid, max_len=length, beam_size=k,
                                           mode='incremental')
  recompute_fn, _ = model.decoder_step_fn(memory, valid, max_len=length, beam_size=k,
                                          mode='recompute')
  cached_fn, recompute_fn = jax.jit(cached_fn), jax.jit(recompute_fn)
  moved = 0
  for t in range(length):
    # Positions after t hold garbage: a correct step never looks at them.
    buffer = tokens.at[:, t + 1:].set(7)
    lp, cache = cached_fn(buffer, jnp.int32(t), cache)
    atol = 1e-3 if kind == 'nap' else 2e-5   # as in test_stepwise_decoding_equals_full_pass
    np.testing.assert_allclose(lp, recompute_fn(buffer, jnp.int32(t), ())[0], atol=atol,
                               err_msg=f'{kind} step {t}')
    # Re-select: each slot continues a random hypothesis of its own sentence, as beam search
    # does; the prefix moves with it and the next token is new.
    parents = rng.integers(0, k, size=(b, k))
    moved += int((parents != np.arange(k)).sum())
    rows = jnp.asarray((np.arange(b)[:, None] * k + parents).reshape(-1), jnp.int32)
    cache = decoding.reorder_cache(cache, rows)
    tokens = tokens[rows].at[:, t + 1:].set(
        jnp.asarray(rng.integers(4, 19, size=(b * k, length - t - 1)), jnp.int32))
  assert moved > 0


def test_beam_search_cached_equals_recomputed():
  """The whole search: identical hypotheses and scores with and without the cache."""
  model = _model(_config('softmax'))
  source, _ = _batch(np.random.default_rng(4), b=3)
  memory, valid = model.encode(source)
  out = {}
  for mode in ('incremental', 'recompute'):
    step_fn, cache = model.decoder_step_fn(memory, valid, max_len=9, beam_size=4, mode=mode)
    out[mode] = decoding.beam_search(
        step_fn, cache, batch_size=3, beam_size=4, max_len=9, max_lens=np.full(3, 8),
        bos_id=BOS, eos_id=BOS, pad_id=PAD,
        length_penalty=decoding.LengthPenalty('fairseq', 1.0))
  np.testing.assert_array_equal(out['incremental'].tokens, out['recompute'].tokens)
  np.testing.assert_allclose(out['incremental'].scores, out['recompute'].scores, atol=1e-5)


def test_incremental_refused_where_no_cache():
  model = _model(_config('softmax', decoder='sea'))
  with pytest.raises(ValueError, match='incremental decoding needs a key/value cache'):
    model.resolve_decode_mode('incremental')
  # A prior mask shifts query positions in a one-query call: fall back too.
  c = _config('softmax')
  c.attention.mask = 'local_window(3)'
  assert _model(c).resolve_decode_mode('auto') == 'recompute'


@pytest.mark.parametrize('kind', ['softmax', 'dagpam', 'diff', 'topk', 'performer', 'non', 'nap',
                                  'coda'])
def test_every_role_takes_its_kind(kind):
  c = _config('softmax', encoder=kind, decoder=kind, cross=kind)
  model = _model(c)
  assert model.role_kinds == {'encoder': kind, 'decoder': kind, 'cross': kind}
  assert type(model.encoder_layers[0].self_attention.core) is attention.core_class(kind)
  assert type(model.decoder_layers[0].cross_attention.core) is attention.core_class(kind)
  source, target_in = _batch(np.random.default_rng(1))
  hidden = model(source, target_in)
  assert np.isfinite(np.asarray(hidden)).all()


@pytest.mark.parametrize('kind', ['softmax', 'dagpam', 'performer', 'non', 'nap', 'coda'])
def test_source_padding_and_future_targets_are_invisible(kind):
  model = _model(_config(kind))
  rng = np.random.default_rng(2)
  source, target_in = _batch(rng)
  base = model(source, target_in)
  # More padding at the end of every source changes nothing.
  longer = jnp.concatenate([source, jnp.full((2, 3), PAD, jnp.int32)], axis=1)
  np.testing.assert_allclose(model(longer, target_in), base, atol=2e-5)
  # Changing the last target input changes nothing before it.
  changed = target_in.at[:, -1].set(5)
  np.testing.assert_allclose(model(source, changed)[:, :-1], base[:, :-1], atol=1e-6)


def test_all_padding_source_is_finite():
  model = _model(_config('softmax'))
  source = jnp.full((1, 5), PAD, jnp.int32)
  target_in = jnp.asarray([[BOS, 4, 5]], jnp.int32)
  nll = model.token_nll(model(source, target_in), jnp.asarray([[4, 5, 2]]))

  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params):
    m = nnx.merge(graphdef, params, rest)
    return jnp.sum(m.token_nll(m(source, target_in), jnp.asarray([[4, 5, 2]])))

  grads = jax.jit(jax.grad(loss))(params)
  assert np.isfinite(np.asarray(nll)).all()
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_embedding_sharing():
  separate = _model(_config(share_decoder_input_output_embed=False))
  assert separate.output is not None and separate.tgt_embed is not None
  tied = _model(_config())
  assert tied.output is None
  h = jnp.ones((1, 2, 32))
  # A float64 reference: the output layer is the target embedding, transposed. The atol covers
  # float32 rounding of a 32-term sum whose terms nearly cancel.
  reference = np.asarray(h, np.float64) @ np.asarray(tied.tgt_embed.embedding[...], np.float64).T
  np.testing.assert_allclose(tied.logits(h), reference, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='share_all_embeddings=True needs one joint vocabulary'):
    _model(_config(share_all_embeddings=True))
  joint = _model(_config(share_all_embeddings=True, tgt_vocab_size=23))
  assert joint.tgt_embed is None
  params = nnx.state(joint, nnx.Param)
  n = sum(x.size for x in jax.tree.leaves(params))
  n_sep = sum(x.size for x in jax.tree.leaves(nnx.state(
      _model(_config(tgt_vocab_size=23)), nnx.Param)))
  assert n_sep - n == 23 * 32  # exactly one embedding table fewer


def test_label_smoothing_matches_reference():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(3, 4, 11))
  targets = rng.integers(0, 11, size=(3, 4))
  eps = 0.1
  from models import transformer
  got = transformer.label_smoothed_nll(jnp.asarray(logits, jnp.float32), jnp.asarray(targets),
                                       eps)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  q = np.full(logits.shape, eps / 10)
  np.put_along_axis(q, targets[..., None], 1 - eps, axis=-1)
  np.testing.assert_allclose(got, -(q * logp).sum(-1), rtol=1e-5)


def test_unknown_role_kind_lists_known():
  with pytest.raises(ValueError, match='softmax'):
    _model(_config(cross='softmx'))


@pytest.mark.parametrize('task', ['iwslt14', 'wmt14'])
@pytest.mark.parametrize('size', ['tiny', 'small', 'paper'])
def test_translation_configs_build(task, size):
  import importlib
  c = importlib.import_module(f'configs.{task}').get_config(f'size={size}')
  assert c.task == 'translation'
  c.model.src_vocab_size = c.model.tgt_vocab_size = 64
  model = nnx.eval_shape(lambda: seq2seq.EncoderDecoder(c.model, c.attention,
                                                        rngs=nnx.Rngs(0)))
  assert len(model.encoder_layers) == c.model.encoder_layers


def test_iwslt_paper_size_has_fairseqs_parameter_count():
  """fairseq's `transformer_iwslt_de_en` on prepare-iwslt14.sh data (dictionaries of 8,848 de
  and 6,632 en types, shared decoder input/output embedding) logs 39,469,056 parameters."""
  from configs import iwslt14
  c = iwslt14.get_config('size=paper')
  c.model.src_vocab_size, c.model.tgt_vocab_size = 8848, 6632
  model = nnx.eval_shape(lambda: seq2seq.EncoderDecoder(c.model, c.attention,
                                                        rngs=nnx.Rngs(0)))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert n == 39_469_056
