"""Trains a language model on a task config; rerunning the same command resumes it.

Usage:
  python train.py                                   # synthetic recall task, < 1 min on 2 CPUs
  python train.py --config=configs/wikitext103.py:size=tiny \\
      --config.data.dir=../shared/data/wikitext-2 --workdir=runs/wt2-tiny
  python train.py --config=configs/enwik8.py:size=small --config.attention.bias='alibi()'

--config names a Python file under configs/ and, after a colon, its preset arguments
(`size=tiny|small|paper` and the task's others; see the file's docstring). Any key of the config
can then be overridden with --config.<key>=<value>, e.g. --config.attention.kind=softmax,
--config.optimizer.learning_rate=5e-4, --config.model.dtype=bfloat16. Configs are locked: a
misspelled key is an error. --show_config prints the resolved config and exits; every key is
explained where it is defined, in configs/common.py and data/__init__.py.

The workdir receives config.json and data.json (what the run was), checkpoints/ (the last
`keep_checkpoints` and the best on validation), metrics.jsonl and tensorboard/ (training and
validation metrics; `tensorboard --logdir <workdir>/tensorboard`), and final.json. Running the
same command again continues from the last checkpoint; a different config in the same workdir
is refused (change only train_steps or the logging/eval/checkpoint intervals).
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_REPO = Path(__file__).resolve().parent
_CONFIG = config_flags.DEFINE_config_file(
    'config', str(_REPO / 'configs' / 'default.py'),
    'Task config file, optionally with presets: configs/<task>.py[:key=value,...]. '
    'Override any key with --config.<key>=<value>.', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None,
    'Directory for checkpoints, metrics and the recorded config. Reusing it resumes the run. '
    'Default: workdirs/<config file name>.')
_SHOW_CONFIG = flags.DEFINE_bool('show_config', False, 'Print the resolved config and exit.')


def default_workdir(config_flag_value: str) -> Path:
  path, _, arg = config_flag_value.partition(':')
  name = Path(path).stem + (('-' + arg.replace('=', '').replace(',', '-')) if arg else '')
  return Path('workdirs') / name


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:  # Orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  if _SHOW_CONFIG.value:
    print(config)
    return
  from training import loop  # pylint: disable=g-import-not-at-top (keeps --help fast)
  from training.checkpoints import CheckpointError  # pylint: disable=g-import-not-at-top
  workdir = (Path(_WORKDIR.value) if _WORKDIR.value
             else default_workdir(config_flags.get_config_filename(flags.FLAGS['config'])))
  try:
    loop.train_and_evaluate(config, workdir)
  except (ValueError, FileNotFoundError, CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
