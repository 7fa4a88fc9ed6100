"""The training loop: config → data → model → jitted, sharded optax step → Orbax checkpoints.

`train_and_evaluate(config, workdir)` is what `python train.py` runs; import it in a notebook to
train from Python. It works in two phases:

1. `prepare` reads and checks everything (config, attention options, data, a trace of the train
   step, the recorded config and data of the workdir, the checkpoint to resume and its
   checksums) and writes nothing, so a refused run leaves the disk as it found it;
2. `_train` creates the workdir's files and trains.

Rerunning it on the same workdir resumes from the last committed checkpoint and ends bitwise
where an uninterrupted run ends (on CPU): parameters, optimizer state, step, RNG key and the data
iterator's position are all restored, and dropout keys are a function of the step.

Faults (docs/reliability.md): a non-finite update is never applied and, with `nan_policy=stop`,
ends the run with `NonFiniteError` before anything non-finite is saved; SIGTERM / SIGINT save the
current step and raise `signals.Interrupted`; a damaged newest checkpoint is refused unless
`resume_intact=True`, which resumes from the newest intact one and moves the newer folders to
`W/set_aside/`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from attention.kernels import backend as kernel_backend
from training import builders, diagnostics, distill, distributed, evaluate, optim, progress
from training import signals, steps
from training import translate
from training import checkpoints as ckpt_lib
from training import workdir as workdir_lib
from training.metric_log import MetricLog, json_safe

SET_ASIDE = 'set_aside'  # W/set_aside/<step>: checkpoint folders a resume stepped back over


class NonFiniteError(RuntimeError):
  """Training produced a non-finite loss or gradient under `nan_policy=stop`."""

  def __init__(self, step: int, what: list[str], last_checkpoint: int | None):
    self.step, self.what, self.last_checkpoint = step, what, last_checkpoint
    kept = (f'the newest checkpoint is step {last_checkpoint}, saved before it'
            if last_checkpoint else 'no checkpoint was saved')
    super().__init__(
        f'non-finite {", ".join(what)} at step {step}; stopped without applying or saving it '
        f'({kept}). Lower the learning rate or enable gradient clipping, or rerun with '
        '--config.nan_policy=skip_update to drop such updates')


def _train_log_row(sums: dict, n_steps: int, seconds: float, tokens: int, metric: str, lr: float):
  row = evaluate.summarize(sums['loss_sum'], sums['weight'], metric)
  row.pop('tokens')
  if metric == 'accuracy':  # not computed on the training stream
    row.pop('accuracy', None)
  for key, value in sums.items():  # distillation terms: token-weighted means
    if key.endswith('_sum') and key != 'loss_sum':
      row[key[:-len('_sum')]] = value / max(sums['weight'], 1.0)
  row.update(grad_norm=sums['grad_norm'] / max(n_steps, 1), learning_rate=lr,
             tokens_per_s=tokens / max(seconds, 1e-9), steps_per_s=n_steps / max(seconds, 1e-9))
  return row


def _nonfinite_names(m: dict) -> list[str]:
  names = {'loss_sum': 'loss', 'grad_norm': 'gradient norm', 'update_norm': 'update norm'}
  bad = [label for key, label in names.items() if not math.isfinite(float(m[key]))]
  return bad or ['update']


def _abstract_batch(config, micro_rows: int, n_devices: int) -> dict:
  """Shapes of one training batch, to trace the step before anything is written."""
  accum = config.optimizer.grad_accum_steps
  if config.task == 'translation':
    shape, keys = (accum, n_devices, 16), ('source', 'target_in', 'targets')
  else:
    shape = (accum, micro_rows * jax.process_count(), config.seq_len)
    keys = ('inputs', 'targets')
  out = {k: jax.ShapeDtypeStruct(shape, jnp.int32) for k in keys}
  out['weights'] = jax.ShapeDtypeStruct(shape, jnp.float32)
  return out


@dataclasses.dataclass
class _Plan:
  """Everything `prepare` read and checked; `_train` runs it."""
  config: ml_collections.ConfigDict
  workdir: Path
  data: Any
  mesh: Any
  graphdef: Any
  rest: Any
  n_params: int
  state: Any
  start: int
  data_state: dict | None
  train_step: Any
  micro_rows: int
  teacher_note: str
  set_aside: list[int]
  notes: list[str]


def prepare(config: ml_collections.ConfigDict, workdir: Path, *,
            resume_intact: bool = False) -> _Plan:
  """Checks the run and reads what it resumes from; writes nothing (see the module docstring)."""
  config_dict = workdir_lib.config_to_dict(config)
  distributed.check_same_config(config_dict)
  mesh = distributed.make_mesh(config.mesh)
  micro_rows = builders.check_config(config, distributed.batch_shards(mesh))
  builders.check_mesh(config, mesh)
  diagnostics.check(config, jax.process_count())
  if config.task == 'translation' and distill.enabled(config):
    raise ValueError('attention distillation (attention.sea.distill) is implemented for the '
                     'language model only; set attention.sea.distill=false for translation')
  data = builders.build_data(config)
  config_dict = workdir_lib.config_to_dict(config)  # with the vocabulary sizes from the data
  workdir_lib.check_recorded(workdir, 'config', config_dict, ignore=workdir_lib.RESUMABLE_KEYS)
  workdir_lib.check_recorded(workdir, 'data', data.describe())

  model = builders.build_model(config)
  graphdef, params, rest = builders.split_model(model)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  optimizer = optim.make_optimizer(config.optimizer, config.train_steps)
  teacher, teacher_note = None, ''
  if distill.enabled(config):
    teacher = distill.load_teacher(config, data.describe(), mesh)
    # The student starts from the teacher; a resumed run restores its own state over this.
    params, copied, kept = distill.init_from_teacher(params, teacher.params)
    teacher_note = (f'Distilling from {teacher.workdir} (step {teacher.step}): {copied} '
                    f'parameter arrays copied from the teacher, {kept} new.')
  # Parameters and optimizer state placed by their logical axes (FSDP / tensor shards); a
  # model dimension that the mesh does not divide is refused here, before anything is written.
  state, shardings = distributed.place_state(builders.initial_state(config, params, optimizer),
                                             mesh)

  train_step = jax.jit(
      steps.make_train_step(graphdef, rest, optimizer,
                            grad_accum_steps=config.optimizer.grad_accum_steps,
                            label_smoothing=config.label_smoothing, teacher=teacher,
                            distill_config=config.attention.sea if teacher else None),
      out_shardings=(shardings, distributed.replicated(mesh)), donate_argnums=0)
  if teacher is not None:
    train_step = functools.partial(train_step, teacher_params=jax.device_put(
        teacher.params, distributed.param_shardings(teacher.params, mesh)))
  # Attention options that a core refuses only when it sees its mask (e.g. a prior mask on a
  # linear-time core) surface here, while nothing has been written yet.
  jax.eval_shape(train_step, ckpt_lib.abstract_like(state),
                 _abstract_batch(config, micro_rows, distributed.batch_shards(mesh)))

  start, data_state, aside, notes = 0, None, [], []
  ckpt_dir = workdir / 'checkpoints'
  if ckpt_dir.is_dir():
    checkpoints = ckpt_lib.Checkpoints(ckpt_dir, keep=config.keep_checkpoints, read_only=True)
    try:
      start, aside, notes = _resume_point(checkpoints, workdir, resume_intact)
      if start:
        state, data_state = checkpoints.restore(start, ckpt_lib.abstract_like(state))
    finally:
      checkpoints.close()
  # Every process has read the workdir before any process writes to it.
  distributed.sync('run_prepared')
  return _Plan(config, workdir, data, mesh, graphdef, rest, n_params, state, start, data_state,
               train_step, micro_rows, teacher_note, aside, notes)


def _resume_point(checkpoints: ckpt_lib.Checkpoints, workdir: Path,
                  resume_intact: bool) -> tuple[int, list[int], list[str]]:
  """(step to resume from, newer step folders to set aside, what to tell the user)."""
  steps_ = checkpoints.all_steps()
  uncommitted = checkpoints.uncommitted_steps()
  latest = steps_[-1] if steps_ else 0
  notes = []
  if latest:
    try:
      checkpoints.verify(latest)
    except ckpt_lib.DamagedCheckpointError as e:
      intact = checkpoints.newest_intact(below=latest) or 0
      fallback = f'step {intact}, the newest intact one' if intact else 'scratch (none is intact)'
      if not resume_intact:
        raise ckpt_lib.CheckpointError(
            f'{e}; nothing was changed. Rerun with --resume_intact to resume from {fallback} '
            f'(the damaged step is kept, moved to {workdir / SET_ASIDE})') from None
      notes.append(f'{e}; resuming from {fallback} (--resume_intact)')
      latest = intact
  newer = sorted(s for s in set(steps_) | set(uncommitted) if s > latest)
  if newer:
    notes.append(f'step folder(s) {newer} newer than step {latest} (uncommitted or damaged) '
                 f'moved to {workdir / SET_ASIDE}')
  return latest, newer, notes


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *,
                       resume_intact: bool = False) -> dict:
  """Trains to `config.train_steps` (resuming what the workdir holds); returns final validation.

  Raises ValueError / CheckpointError (refused; nothing written), NonFiniteError and
  signals.Interrupted (after saving).
  """
  distributed.maybe_initialize()
  with signals.StopRequest() as stop:
    plan = prepare(config, Path(workdir), resume_intact=resume_intact)
    return _train(plan, stop)


def _train(plan: _Plan, stop: signals.StopRequest) -> dict:
  config, workdir, data, mesh, state = plan.config, plan.workdir, plan.data, plan.mesh, plan.state
  if stop.before_training():  # a signal while the run was prepared: nothing written yet
    raise signals.Interrupted(stop.signum, plan.start, saved=False)
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    workdir_lib.record(workdir, 'config', workdir_lib.config_to_dict(config))
    workdir_lib.record(workdir, 'data', data.describe())
  checkpoints = ckpt_lib.Checkpoints(workdir / 'checkpoints', keep=config.keep_checkpoints,
                                     kill_before_commit=config.inject_kill_before_commit_step)
  if plan.set_aside:
    checkpoints.set_aside(plan.set_aside, workdir / SET_ASIDE)
  for note in plan.notes:
    logging.warning('%s', note)
    print(note, flush=True)
  start = plan.start
  accum = config.optimizer.grad_accum_steps
  if config.task == 'translation':
    # fairseq's --max-tokens is per device. Every process plans the same global batches (same
    # seed) and takes its own rows, so all processes step through the same shapes.
    shards = distributed.batch_shards(mesh)
    train_iter = data.train_iterator(max_tokens=config.data.max_tokens * shards,
                                     seed=config.seed, row_multiple=shards,
                                     num_micro=accum, process_index=jax.process_index(),
                                     process_count=jax.process_count())
  else:
    # Every process steps through the same global stream and reads its rows of each batch.
    train_iter = data.train_iterator(batch_size=config.batch_size, seq_len=config.seq_len,
                                     seed=config.seed, num_micro=accum,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
  if start:
    train_iter.set_state(plan.data_state)
    print(f'Resuming {workdir} from step {start}.', flush=True)
  elif plan.teacher_note:
    print(plan.teacher_note, flush=True)
  metric_log = MetricLog(workdir, resume_step=start)
  schedule = optim.learning_rate_schedule(config.optimizer, config.train_steps)
  eval_step = jax.jit(steps.make_eval_step(plan.graphdef, plan.rest,
                                           with_accuracy=data.metric == 'accuracy'))
  translator = None
  if config.task == 'translation' and config.decode.valid_sentences > 0:
    settings = translate.DecodeSettings.from_config(
        config.decode, beam_size=config.decode.valid_beam_size)
    translator = translate.Translator(plan.graphdef, plan.rest, data, settings,
                                      max_positions=config.model.max_len, mesh=mesh)

  monitor = diagnostics.Diagnostics(config, data, plan.graphdef, plan.rest)

  def validate(step: int, max_batches: int, *, log: bool = True) -> dict:
    if config.task == 'translation':
      batches = data.eval_batches('valid', **translate.eval_batching(config.data.max_tokens))
      out = evaluate.evaluate(eval_step, state['params'], batches, mesh, metric='perplexity',
                              max_batches=max_batches)
      if translator is not None:  # BLEU on the first sentences of valid (monitoring only)
        hypotheses = translator.translate(state['params'], 'valid',
                                          max_sentences=config.decode.valid_sentences)
        scores = translator.score(hypotheses, 'valid')
        detail = scores['bleu_detail']  # fairseq's BLEU line: length and unigram precision
        out.update(bleu=scores['bleu'], sacrebleu=scores['sacrebleu'],
                   bleu_sentences=len(hypotheses), bleu_hyp_len=detail['hyp_len'],
                   bleu_ref_len=detail['ref_len'], bleu_p1=detail['precisions'][0])
    else:
      batches = distributed.OwnRows(data.eval_batches('valid', batch_size=config.batch_size,
                                                      seq_len=config.seq_len))
      out = evaluate.evaluate(eval_step, state['params'], batches, mesh, metric=data.metric,
                              max_batches=max_batches)
    if log:
      metric_log.write(step, 'valid', out)
    return out

  if jax.process_index() == 0:
    layout = ' × '.join(f'{a}={n}' for a, n in mesh.shape.items())
    print(f'{plan.n_params:,} parameters; {mesh.size} device(s) ({layout}); training steps {start}..'
          f'{config.train_steps}; workdir {workdir}', flush=True)
    print(kernel_backend.describe(config.attention, config.model.get('dtype', 'float32')),
          flush=True)
  # Sums of the updates applied since the last train row (the running skip count apart).
  window = {'sums': None, 'applied': 0, 'seen': 0, 'tokens': 0, 'start': time.perf_counter(),
            'skipped': int(state['skipped_updates'])}  # the running count, read once here
  pending: list[tuple[int, dict]] = []
  last_valid, last_saved = None, start

  def log_window(step: int) -> None:
    if window['applied'] == 0:  # every update of the window was skipped
      if window['seen']:
        metric_log.write(step, 'train', {'skipped_updates': window['skipped']})
    else:
      row = _train_log_row(window['sums'], window['applied'],
                           time.perf_counter() - window['start'], window['tokens'], data.metric,
                           float(schedule(step - 1)))
      row['skipped_updates'] = window['skipped']
      metric_log.write(step, 'train', row)
      bar.set_postfix(f'loss {row["loss"]:.3f}')
    window.update(sums=None, applied=0, seen=0, tokens=0, start=time.perf_counter())

  def drain() -> None:
    """Fetches the metrics of the updates in flight, stopping at a non-finite one under
    nan_policy=stop."""
    fetched = jax.device_get([m for _, m in pending])
    at = [s for s, _ in pending]
    pending.clear()
    for s, m in zip(at, fetched):
      window['skipped'] = int(m['skipped_updates'])
      finite = m['nonfinite'] == 0
      values = {k: float(v) for k, v in m.items() if k not in ('nonfinite', 'skipped_updates')}
      window['seen'] += 1
      if finite or config.nan_policy == 'stop':
        sums = window['sums'] = window['sums'] or dict.fromkeys(values, 0.0)
        for k in sums:
          sums[k] += values[k]
        window['applied'] += 1
      if not finite and config.nan_policy == 'stop':
        log_window(s)  # the row shows the non-finite values as null
        raise NonFiniteError(s, _nonfinite_names(values), last_saved or None)

  bar = progress.Progress('train', config.train_steps, unit='steps', initial=start,
                          enabled=config.progress_bar and jax.process_index() == 0)
  step = start
  try:
    if start >= config.train_steps:  # nothing left to train: report the finished run
      last_valid = validate(step, config.eval_batches, log=False)
    while step < config.train_steps:
      local = next(train_iter)
      local = {k: v.reshape((accum, -1) + v.shape[1:]) for k, v in local.items()}
      window['tokens'] += (int(local['weights'].sum()) if config.task == 'translation'
                           else config.batch_size * config.seq_len)
      if step + 1 == config.inject_nonfinite_step:  # fault injection: this update's loss is inf
        local['weights'] = np.where(local['weights'] > 0, np.float32(np.inf), local['weights'])
      state, m = plan.train_step(state, distributed.global_batch(local, mesh, batch_axis=1))
      step += 1
      pending.append((step, m))
      bar.update(1)
      is_last = step == config.train_steps
      if step % config.log_every == 0 or is_last:
        drain()
        log_window(step)
        checkpoints.commit()  # the previous save is done by now: make it count
      valid_loss = None
      if step % config.eval_every == 0 or is_last:
        drain()
        last_valid = validate(step, config.eval_batches)
        valid_loss = last_valid['loss']
        if jax.process_index() == 0:
          bar.write(f'step {step}: valid ' + ', '.join(
              f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}'
              for k, v in last_valid.items()), file=sys.stdout)
        if not math.isfinite(valid_loss):
          if config.nan_policy == 'stop':
            raise NonFiniteError(step, ['validation loss'], last_saved or None)
          valid_loss = None  # skip_update: saved, but never the best
      if monitor.due(step, is_last):
        drain()
        metric_log.write(step, diagnostics.SPLIT, monitor.measure(state['params']))
      if step % config.checkpoint_every == 0 or valid_loss is not None or is_last:
        drain()
        checkpoints.save(step, state, train_iter.get_state(), valid_loss)
        last_saved = step
      if stop.should_stop(step):
        drain()
        if last_saved != step:
          checkpoints.save(step, state, train_iter.get_state())
        checkpoints.commit()
        raise signals.Interrupted(stop.signum, step)
  finally:
    bar.close()
    checkpoints.close()
    metric_log.close()

  summary = json_safe({'step': step, 'split': 'valid', 'parameters': int(plan.n_params),
                       'skipped_updates': window['skipped'], **last_valid})
  if jax.process_index() == 0:
    workdir_lib.atomic_write_json(workdir / 'final.json', summary)
    print('final ' + json.dumps(summary, allow_nan=False), flush=True)
  return summary
