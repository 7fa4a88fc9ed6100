"""What a run is built from: config checks, the data, the model and its initial state.

Shared by the training loop, eval.py, distillation (the teacher) and the benchmarks, so none of
them reaches into the loop for it. Nothing here writes to disk.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

import attention
import data as data_lib
from data import synthetic
from models.lm import TransformerLM
from models.seq2seq import EncoderDecoder
from training import distributed

TASKS = ('lm', 'translation')
NAN_POLICIES = ('stop', 'skip_update')


def check_config(config: ml_collections.ConfigDict, n_devices: int,
                 process_count: int | None = None) -> int:
  """The checks that need neither data nor a model; rows per micro-batch on this process.

  `n_devices`: how many parts a batch is split into (the mesh's data × fsdp devices);
  `process_count`: the processes sharing a batch (default `jax.process_count()`, which starts
  the backend: a sweep launcher checking its jobs passes 1 so as not to hold a TPU).
  """
  if config.task not in TASKS:
    raise ValueError(f'unknown task {config.task!r}; known: {", ".join(TASKS)}')
  attention.core_class(config.attention.kind)  # unknown kind: the error lists the known ones
  if config.task == 'translation':
    for role in ('encoder_attention', 'decoder_attention', 'cross_attention'):
      if config.model[role]:
        try:
          attention.core_class(config.model[role])
        except ValueError as e:
          raise ValueError(f'model.{role}: {e}') from None
  if config.nan_policy not in NAN_POLICIES:
    raise ValueError(f'nan_policy={config.nan_policy!r}; expected one of: '
                     f'{", ".join(NAN_POLICIES)}')
  for key in ('train_steps', 'log_every', 'eval_every', 'checkpoint_every', 'keep_checkpoints'):
    if config[key] < 1:
      raise ValueError(f'{key}={config[key]} must be at least 1')
  accum = config.optimizer.grad_accum_steps
  if accum < 1:
    raise ValueError(f'optimizer.grad_accum_steps={accum} must be at least 1')
  if config.task == 'translation':  # batches by token count: the data layer sizes them
    if config.data.max_tokens < 1:
      raise ValueError(f'data.max_tokens={config.data.max_tokens} must be positive')
    return 0
  if config.task == 'lm' and config.data.name == 'mqar':
    synthetic.check_options(
        seq_len=config.seq_len, num_kv_pairs=config.data.num_kv_pairs,
        num_queries=config.data.num_queries, key_vocab_size=config.data.key_vocab_size,
        value_vocab_size=config.data.value_vocab_size, pair_tokens=config.data.pair_tokens)
  n_proc = jax.process_count() if process_count is None else process_count
  if config.batch_size < 1 or config.seq_len < 1:
    raise ValueError(f'batch_size={config.batch_size} and seq_len={config.seq_len} must be '
                     'positive')
  if config.batch_size % (accum * n_devices) or config.batch_size % (accum * n_proc):
    raise ValueError(f'batch_size={config.batch_size} must be divisible by '
                     f'optimizer.grad_accum_steps ({accum}) × batch shards ({n_devices}, the '
                     'mesh\'s data × fsdp devices)')
  return config.batch_size // accum // n_proc


def check_mesh(config: ml_collections.ConfigDict, mesh) -> None:
  """What tensor parallelism needs of the model: whole heads and FFN columns per device, and
  attention computed by XLA (which GSPMD partitions over heads)."""
  tensor = mesh.shape.get('tensor', 1)
  if tensor == 1:
    return
  m = config.model
  for key in ('num_heads', 'd_ff'):
    if m[key] % tensor:
      raise ValueError(f'model.{key}={m[key]} is not divisible by mesh.tensor={tensor}; '
                       'tensor parallelism gives each device whole heads and FFN columns')
  if config.attention.impl != 'xla':
    raise ValueError(
        f'mesh.tensor={tensor} splits attention heads across devices, but attention.impl='
        f'{config.attention.impl} runs fused kernels (Pallas / cuDNN) that are not partitioned '
        'over heads yet; use attention.impl=xla with tensor parallelism')


def _fill_from_data(config: ml_collections.ConfigDict, key: str, value: int, what: str) -> None:
  if config.model[key] == -1:
    config.model[key] = value
  elif config.model[key] != value:
    raise ValueError(f'model.{key}={config.model[key]} but the data has {value} {what}; leave '
                     f'model.{key}=-1 to take it from the data')


def build_data(config: ml_collections.ConfigDict):
  """The task's data, and the model's vocabulary sizes filled in from it."""
  if config.task not in TASKS:
    raise ValueError(f'unknown task {config.task!r}; known: {", ".join(TASKS)}')
  if config.task == 'translation':
    data = data_lib.build_translation_data(config.data, max_positions=config.model.max_len)
    _fill_from_data(config, 'src_vocab_size', len(data.src_vocab),
                    f'{data.src_lang} (source) symbols')
    _fill_from_data(config, 'tgt_vocab_size', len(data.tgt_vocab),
                    f'{data.tgt_lang} (target) symbols')
    if config.model.pad_id != data.pad_id:
      raise ValueError(f'model.pad_id={config.model.pad_id} but the data pads with id '
                       f'{data.pad_id}')
    return data
  data = data_lib.build_lm_data(config.data, seed=config.seed)
  _fill_from_data(config, 'vocab_size', data.vocab_size, 'types')
  return data


def build_model(config: ml_collections.ConfigDict) -> nnx.Module:
  model_cls = EncoderDecoder if config.task == 'translation' else TransformerLM
  return model_cls(config.model, config.attention,
                   rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))


def split_model(model: nnx.Module):
  """(graphdef, params as a pure dict, rest of the NNX state): how the loop holds a model."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, nnx.to_pure_dict(params), rest


def initial_state(config, params, optimizer) -> dict:
  """A fresh run's state (training/steps.py `TrainState`)."""
  return {
      'params': params,
      'opt_state': optimizer.init(params),
      'step': jnp.asarray(0, jnp.int32),
      'rng': jax.random.PRNGKey(config.seed + 2),
      'skipped_updates': jnp.asarray(0, jnp.int32),
  }


def abstract_params(params, mesh):
  """The restore target of parameters alone (eval.py, a distillation teacher), placed on
  `mesh` by their logical axes (training/distributed.py `param_shardings`)."""
  shardings = distributed.param_shardings(params, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params,
                      shardings)
