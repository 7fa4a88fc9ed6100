"""The training loop: config → data → model → jitted, sharded optax step → Orbax checkpoints.

`train_and_evaluate(config, workdir)` is what `python train.py` runs; import it in a notebook to
train from Python. Rerunning it on the same workdir resumes from the last checkpoint and ends
bitwise where an uninterrupted run ends (on CPU): parameters, optimizer state, step, RNG key
and the data iterator's position are all restored, and dropout keys are a function of the step.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from flax import nnx
from tqdm import tqdm

import data as data_lib
from models.lm import TransformerLM
from models.seq2seq import EncoderDecoder
from training import checkpoints as ckpt_lib
from training import distill, distributed, evaluate, optim, steps, translate
from training import workdir as workdir_lib
from training.metric_log import MetricLog


TASKS = ('lm', 'translation')


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


def initial_state(config, params, optimizer) -> steps.TrainState:
  return {
      'params': params,
      'opt_state': optimizer.init(params),
      'step': jnp.asarray(0, jnp.int32),
      'rng': jax.random.PRNGKey(config.seed + 2),
  }


def abstract_state(config, params, mesh) -> steps.TrainState:
  """Shapes, dtypes and shardings of a run's state, without allocating it (restore target)."""
  optimizer = optim.make_optimizer(config.optimizer, config.train_steps)
  shapes = jax.eval_shape(lambda p: initial_state(config, p, optimizer), params)
  sharding = distributed.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def _check_batching(config, n_devices: int) -> int:
  """Rows per micro-batch on this process; a clear error when the batch does not divide."""
  accum = config.optimizer.grad_accum_steps
  if config.task == 'translation':  # batches by token count: the data layer sizes them
    if config.data.max_tokens < 1:
      raise ValueError(f'data.max_tokens={config.data.max_tokens} must be positive')
    return 0
  n_proc = jax.process_count()
  if config.batch_size % (accum * n_devices) or config.batch_size % (accum * n_proc):
    raise ValueError(f'batch_size={config.batch_size} must be divisible by '
                     f'optimizer.grad_accum_steps ({accum}) × devices ({n_devices})')
  return config.batch_size // accum // n_proc


def _train_log_row(sums: dict, n_steps: int, seconds: float, tokens: int, metric: str, lr: float):
  row = evaluate.summarize(sums['loss_sum'], sums['weight'], metric)
  row.pop('tokens')
  if metric == 'accuracy':  # not computed on the training stream
    row.pop('accuracy', None)
  for key, value in sums.items():  # distillation terms: token-weighted means
    if key.endswith('_sum') and key != 'loss_sum':
      row[key[:-len('_sum')]] = value / max(sums['weight'], 1.0)
  row.update(grad_norm=sums['grad_norm'] / n_steps, learning_rate=lr,
             tokens_per_s=tokens / max(seconds, 1e-9), steps_per_s=n_steps / max(seconds, 1e-9))
  return row


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  """Trains to `config.train_steps` (resuming what the workdir holds); returns final validation."""
  distributed.maybe_initialize()
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  data = build_data(config)
  workdir_lib.record_or_check(workdir, 'config', workdir_lib.config_to_dict(config),
                              ignore=workdir_lib.RESUMABLE_KEYS)
  workdir_lib.record_or_check(workdir, 'data', data.describe())

  mesh = distributed.data_mesh()
  micro_rows = _check_batching(config, mesh.size)
  model = build_model(config)
  graphdef, params, rest = steps.split_model(model)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  optimizer = optim.make_optimizer(config.optimizer, config.train_steps)
  teacher = None
  if config.task == 'translation' and distill.enabled(config):
    raise ValueError('attention distillation (attention.sea.distill) is implemented for the '
                     'language model only; set attention.sea.distill=false for translation')
  if distill.enabled(config):
    teacher = distill.load_teacher(config, data.describe(), mesh)
    teacher_params = jax.device_put(teacher.params, distributed.replicated(mesh))
    # The student starts from the teacher; a resumed run restores its own state over this.
    params, copied, kept = distill.init_from_teacher(params, teacher.params)
  state = jax.device_put(initial_state(config, params, optimizer), distributed.replicated(mesh))
  schedule = optim.learning_rate_schedule(config.optimizer, config.train_steps)

  if config.task == 'translation':
    # fairseq's --max-tokens is per device. Every process plans the same global batches (same
    # seed) and takes its own rows, so all processes step through the same shapes.
    train_iter = data.train_iterator(max_tokens=config.data.max_tokens * mesh.size,
                                     seed=config.seed, row_multiple=mesh.size,
                                     num_micro=config.optimizer.grad_accum_steps,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
  else:
    train_iter = data.train_iterator(batch_size=micro_rows * config.optimizer.grad_accum_steps,
                                     seq_len=config.seq_len,
                                     seed=config.seed + 1000 * jax.process_index())
  checkpoints = ckpt_lib.Checkpoints(workdir / 'checkpoints', keep=config.keep_checkpoints)
  start = checkpoints.latest_step() or 0
  if start:
    state, data_state = checkpoints.restore(start, ckpt_lib.abstract_like(state))
    train_iter.set_state(data_state)
    logging.info('resumed from step %d', start)
    print(f'Resuming {workdir} from step {start}.', flush=True)
  elif teacher is not None:
    print(f'Distilling from {teacher.workdir} (step {teacher.step}): {copied} parameter arrays '
          f'copied from the teacher, {kept} new.', flush=True)
  metric_log = MetricLog(workdir, resume_step=start)

  train_step = jax.jit(
      steps.make_train_step(graphdef, rest, optimizer,
                            grad_accum_steps=config.optimizer.grad_accum_steps,
                            label_smoothing=config.label_smoothing, teacher=teacher,
                            distill_config=config.attention.sea if teacher else None),
      donate_argnums=0)
  if teacher is not None:
    train_step = functools.partial(train_step, teacher_params=teacher_params)
  eval_step = jax.jit(steps.make_eval_step(graphdef, rest,
                                           with_accuracy=data.metric == 'accuracy'))

  translator = None
  if config.task == 'translation' and config.decode.valid_sentences > 0:
    settings = translate.DecodeSettings.from_config(
        config.decode, beam_size=config.decode.valid_beam_size)
    translator = translate.Translator(graphdef, rest, data, settings,
                                      max_positions=config.model.max_len, mesh=mesh)

  def validate(step: int, max_batches: int) -> dict:
    if config.task == 'translation':
      batches = data.eval_batches('valid', **translate.eval_batching(config.data.max_tokens))
      out = evaluate.evaluate(eval_step, state['params'], batches, mesh, metric='perplexity',
                              max_batches=max_batches)
      if translator is not None:  # BLEU on the first sentences of valid (monitoring only)
        hypotheses = translator.translate(state['params'], 'valid',
                                          max_sentences=config.decode.valid_sentences)
        scores = translator.score(hypotheses, 'valid')
        out.update(bleu=scores['bleu'], sacrebleu=scores['sacrebleu'],
                   bleu_sentences=len(hypotheses))
    else:
      batches = data.eval_batches('valid', batch_size=config.batch_size // jax.process_count(),
                                  seq_len=config.seq_len)
      out = evaluate.evaluate(eval_step, state['params'], batches, mesh, metric=data.metric,
                              max_batches=max_batches)
    metric_log.write(step, 'valid', out)
    return out

  if jax.process_index() == 0:
    print(f'{n_params:,} parameters; {mesh.size} device(s); training steps {start}..'
          f'{config.train_steps}; workdir {workdir}', flush=True)
  sums = None
  pending, window_start, window_steps, window_tokens = [], time.perf_counter(), 0, 0
  last_valid = None
  bar = tqdm(total=config.train_steps, initial=start, desc='train', unit='step',
             disable=not config.progress_bar or jax.process_index() != 0, dynamic_ncols=True)
  accum = config.optimizer.grad_accum_steps
  step = start
  try:
    while step < config.train_steps:
      local = next(train_iter)
      local = {k: v.reshape((accum, -1) + v.shape[1:]) for k, v in local.items()}
      state, m = train_step(state, distributed.global_batch(local, mesh, batch_axis=1))
      step += 1
      pending.append(m)
      window_steps += 1
      window_tokens += (int(local['weights'].sum()) if config.task == 'translation'
                        else config.batch_size * config.seq_len)
      bar.update(1)
      if step % config.log_every == 0 or step == config.train_steps:
        for mm in jax.device_get(pending):
          sums = sums or dict.fromkeys(mm, 0.0)
          for k in sums:
            sums[k] += float(mm[k])
        pending = []
        row = _train_log_row(sums, window_steps, time.perf_counter() - window_start,
                             window_tokens, data.metric, float(schedule(step - 1)))
        metric_log.write(step, 'train', row)
        bar.set_postfix(loss=f'{row["loss"]:.3f}')
        sums = None
        window_start, window_steps, window_tokens = time.perf_counter(), 0, 0
      is_last = step == config.train_steps
      valid_loss = None
      if step % config.eval_every == 0 or is_last:
        last_valid = validate(step, config.eval_batches)
        valid_loss = last_valid['loss']
        bar.write(f'step {step}: valid ' + ', '.join(
            f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}' for k, v in last_valid.items()))
      if step % config.checkpoint_every == 0 or valid_loss is not None:
        checkpoints.save(step, state, train_iter.get_state(), valid_loss)
  finally:
    bar.close()
    checkpoints.wait()
    metric_log.close()

  if last_valid is None:  # nothing left to train: report the finished run
    last_valid = validate(step, config.eval_batches)
  summary = {'step': step, 'split': 'valid', 'parameters': int(n_params), **last_valid}
  if jax.process_index() == 0:
    (workdir / 'final.json').write_text(json.dumps(summary, indent=2) + '\n')
    print('final ' + json.dumps(summary), flush=True)
  checkpoints.close()
  return summary
