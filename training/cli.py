"""What train.py and eval.py share as command lines: one-line errors and their exit codes.

    app.run(main, flags_parser=cli.parse_flags)       # bad flags: one line, exit 2
    with cli.user_errors(): ...                       # refused input: one line, exit 2

Exit codes: 0 done; 2 the input was refused (a flag, the config, the data, the workdir or a
checkpoint), and nothing was written; 3 training stopped on a non-finite loss or gradient
(training/loop.py); 130 / 143 interrupted by SIGINT / SIGTERM after saving (training/signals.py).
This module imports nothing heavy, so `--help` stays fast.
"""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path

from absl import flags

EXIT_REFUSED = 2
EXIT_NONFINITE = 3


def fail(message: str, code: int = EXIT_REFUSED) -> None:
  """Prints `error: <message>` (first lines only, no traceback) and exits."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


def task_config_files(repo: Path) -> list[str]:
  """`configs/<task>.py` for every task config (not the shared helpers)."""
  return [f'configs/{p.name}' for p in sorted((repo / 'configs').glob('*.py'))
          if p.name not in ('__init__.py', 'common.py', 'sweeps.py')]


def _check_config_file(argv: list[str], repo: Path) -> None:
  """A missing --config file would otherwise surface as 'unknown flag --config.<key>'."""
  for arg in argv[1:]:
    if arg.startswith('--config='):
      path = arg[len('--config='):].split(':', 1)[0]
      if not (Path(path).is_file() or (repo / path).is_file()):
        fail(f'--config={path}: no such config file; the task configs are: '
             f'{", ".join(task_config_files(repo))}')


def _one_line(e: Exception, argv: list[str]) -> str:
  lookup = isinstance(e, (KeyError, AttributeError))
  inner = e
  while lookup and inner.args and isinstance(inner.args[0], BaseException):
    inner = inner.args[0]  # ml_collections raises AttributeError(KeyError(message))
  message = str(inner.args[0] if lookup and inner.args else e).strip()
  if 'Traceback (most recent call last)' in message:
    # An error inside the config file's get_config (a bad preset): its flag and its last line.
    flag = message.split(': Error whilst parsing config file', 1)[0]
    last = [l.strip() for l in message.splitlines() if l.strip()][-1]
    return f'{flag.removeprefix("flag ")}: {last}'
  if lookup:
    # ml_collections: "'modle'\nDid you mean "model" instead of "modle"?"
    lines = [l.strip() for l in message.splitlines() if l.strip()]
    key = lines[0].strip('\'"') if lines else '?'
    hint = f'; {lines[-1][0].lower()}{lines[-1][1:].rstrip("?")}?' if len(lines) > 1 else ''
    given = [a.split('=', 1)[0] for a in argv if a.startswith('--config.')
             and re.search(rf'\.{re.escape(key)}(\.|=|$)', a.split('=', 1)[0])]
    where = given[0] if given else '--config'
    return f'{where}: unknown config key {key!r}{hint} (--show_config lists every key)'
  return ' '.join(message.split('\n', 1)[0].split()).removeprefix('flag ')


def define_config_file(name: str, default: str, help_text: str):
  """`config_flags.DEFINE_config_file` (locked). With no --config given, ml_collections applies
  the --config.<key> overrides to the default config right here, at definition."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  repo = Path(__file__).resolve().parents[1]
  _check_config_file(sys.argv, repo)
  try:
    return config_flags.DEFINE_config_file(name, default, help_text, lock_config=True)
  except (flags.Error, KeyError, ValueError, TypeError, AttributeError) as e:
    fail(_one_line(e, sys.argv))


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing whose errors are one line and exit 2 (app.run's `flags_parser`); a
  --config file is checked where the flag is defined (`define_config_file`)."""
  try:
    rest = flags.FLAGS(argv)
  except (flags.Error, KeyError, ValueError, TypeError, AttributeError) as e:
    fail(_one_line(e, argv))
  if len(rest) > 1:
    fail(f'unexpected arguments: {" ".join(rest[1:])} (flags are --name=value; see --help)')
  return rest


@contextlib.contextmanager
def user_errors():
  """Turns the errors that mean "your input was refused" into one line and exit 2."""
  try:
    yield
  except (ValueError, FileNotFoundError) as e:
    fail(str(e))
  except RuntimeError as e:
    # A CheckpointError can only come from an imported training.checkpoints; importing it here
    # would cost every refusal made before anything is loaded the JAX import (seconds).
    checkpoints = sys.modules.get('training.checkpoints')
    if checkpoints is None or not isinstance(e, checkpoints.CheckpointError):
      raise
    fail(str(e))
  except KeyboardInterrupt:
    print('interrupted before anything was written', file=sys.stderr)
    sys.exit(130)
