"""Evaluates a checkpoint of a training workdir and prints one JSON line.

Usage:
  python eval.py --workdir=W [--checkpoint=best|last|STEP] [--split=valid|test]
                 [--context_window=N] [--batch_size=B]

Perplexity for word-level data, bits per character for byte-level data, accuracy for the
synthetic task. Windows of the training sequence length are scored with fairseq's
`--context-window` semantics: each window starts with up to N tokens of context that are not
scored, and every token of the split is scored exactly once. The default N is the config's
`eval_context_window`. The line names the split, the metric, the token count, the protocol and
the checkpoint step; it is also written to W/eval/<split>-<step>-cw<N>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir (holds config.json and checkpoints/).',
                               required=True)
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best',
                                  'best (lowest validation loss), last, or a step number.')
_SPLIT = flags.DEFINE_enum('split', 'valid', ['valid', 'test'], 'Which split to score.')
_CONTEXT = flags.DEFINE_integer('context_window', None,
                                'Tokens of context before each scored window (fairseq '
                                '--context-window); default: the config\'s eval_context_window.')
_BATCH = flags.DEFINE_integer('batch_size', None, 'Windows per batch; default: the config\'s batch_size.')


def run(workdir: Path, checkpoint: str, split: str, context_window: int | None,
        batch_size: int | None) -> dict:
  import jax  # pylint: disable=g-import-not-at-top (keeps --help fast)
  from training import checkpoints as ckpt_lib, distributed, evaluate, steps, workdir as wd
  from training import loop

  config = wd.load_config(workdir)
  data = loop.build_data(config)
  wd.record_or_check(workdir, 'data', data.describe())  # refuse scoring other data
  model = loop.build_model(config)
  graphdef, params, rest = steps.split_model(model)
  mesh = distributed.data_mesh()
  ckpts = ckpt_lib.Checkpoints(workdir / 'checkpoints', keep=max(config.keep_checkpoints, 1),
                               read_only=True)
  step = ckpts.resolve(checkpoint)
  state, _ = ckpts.restore(step, loop.abstract_state(config, params, mesh), with_data=False)
  cw = config.eval_context_window if context_window is None else context_window
  bs = batch_size or config.batch_size
  bs -= bs % mesh.size  # whole rows per device
  if bs <= 0:
    raise ValueError(f'--batch_size must be at least the number of devices ({mesh.size})')
  eval_step = jax.jit(steps.make_eval_step(graphdef, rest, with_accuracy=data.metric == 'accuracy'))
  batches = data.eval_batches(split, batch_size=bs, seq_len=config.seq_len, context_window=cw)
  out = evaluate.evaluate(eval_step, state['params'], batches, mesh, metric=data.metric,
                          progress=sys.stderr.isatty(), desc=f'eval {split}')
  result = {'split': split, 'metric': data.metric, 'value': out.get(data.metric, out['loss']),
            **out, 'checkpoint': checkpoint, 'step': step,
            'protocol': {'seq_len': config.seq_len, 'context_window': cw,
                         'stride': config.seq_len - cw, 'data': config.data.name}}
  out_dir = workdir / 'eval'
  out_dir.mkdir(exist_ok=True)
  (out_dir / f'{split}-{step}-cw{cw}.json').write_text(json.dumps(result, indent=2) + '\n')
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:  # Orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  from training.checkpoints import CheckpointError  # pylint: disable=g-import-not-at-top
  try:
    result = run(Path(_WORKDIR.value), _CHECKPOINT.value, _SPLIT.value, _CONTEXT.value, _BATCH.value)
  except (ValueError, FileNotFoundError, CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  app.run(main)
