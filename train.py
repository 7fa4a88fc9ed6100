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

Everything is checked before anything is written: a refused run (exit code 2, one line on
stderr) leaves the disk as it was. SIGTERM or Ctrl-C saves the current step and exits 143 / 130
(a second signal exits at once); a non-finite loss or gradient stops the run with exit code 3
(`--config.nan_policy=skip_update` drops such updates instead). Checkpoints are verified by
checksums when a run resumes; see docs/reliability.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from training import cli

_REPO = Path(__file__).resolve().parent
_CONFIG = cli.define_config_file(
    'config', str(_REPO / 'configs' / 'default.py'),
    'Task config file, optionally with presets: configs/<task>.py[:key=value,...]. '
    'Override any key with --config.<key>=<value>.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None,
    'Directory for checkpoints, metrics and the recorded config. Reusing it resumes the run. '
    'Default: workdirs/<config file name>.')
_SHOW_CONFIG = flags.DEFINE_bool('show_config', False, 'Print the resolved config and exit.')
_RESUME_INTACT = flags.DEFINE_bool(
    'resume_intact', False,
    'If the newest checkpoint is damaged (its files do not match their checksums), resume from '
    'the newest intact one instead of stopping; the damaged step folders are moved to '
    '<workdir>/set_aside/, never deleted, and the choice is printed.')


def default_workdir(config_flag_value: str) -> Path:
  path, _, arg = config_flag_value.partition(':')
  name = Path(path).stem + (('-' + arg.replace('=', '').replace(',', '-')) if arg else '')
  return Path('workdirs') / name


def main(argv):
  del argv  # cli.parse_flags refuses stray arguments
  if not flags.FLAGS['verbosity'].present:  # Orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  if _SHOW_CONFIG.value:
    print(config)
    with cli.user_errors():
      # pylint: disable-next=g-import-not-at-top (keeps --help fast)
      from attention.kernels import backend as kernel_backend
      print('# ' + kernel_backend.describe(config.attention, config.model.get('dtype', 'float32')))
    return
  workdir = (Path(_WORKDIR.value) if _WORKDIR.value
             else default_workdir(config_flags.get_config_filename(flags.FLAGS['config'])))
  with cli.user_errors():
    # pylint: disable-next=g-import-not-at-top (keeps --help fast)
    from training import cpu_settings, loop, signals
    cpu_settings.configure()
    try:
      loop.train_and_evaluate(config, workdir, resume_intact=_RESUME_INTACT.value)
    except loop.NonFiniteError as e:
      cli.fail(str(e), cli.EXIT_NONFINITE)
    except signals.Interrupted as e:
      print(str(e), file=sys.stderr, flush=True)
      sys.exit(e.exit_code)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
