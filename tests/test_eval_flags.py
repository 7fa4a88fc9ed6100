"""eval.py checks its flags against the workdir's task before it loads anything.

The workdirs here hold only `config.json`, with a data folder that does not exist: a flag error
that came after loading would be a data error instead, so the flag's own message proves the
order. Each refusal is one line on stderr and exit code 2, and writes nothing.
"""

from __future__ import annotations

import importlib

import pytest

from tests.test_faults import _tree
from tests.test_train import run


def _workdir(tmp_path, config_name: str, arg: str):
  from training import workdir as wd  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f'configs.{config_name}').get_config(arg)
  config.data.dir = str(tmp_path / 'no-data-here')
  workdir = tmp_path / config_name
  workdir.mkdir()
  wd.atomic_write_json(workdir / 'config.json', wd.config_to_dict(config))
  return workdir


LM, MT = ('wikitext103', 'size=tiny'), ('iwslt14', 'size=tiny')


@pytest.mark.parametrize('task, flags, named', [
    (LM, ['--beam=5'], '--beam'),
    (LM, ['--lenpen=1.0'], '--lenpen'),
    (LM, ['--max_len_b=10'], '--max_len_b'),
    (LM, ['--batch_size=0'], '--batch_size=0'),
    (LM, ['--batch_size=-3'], '--batch_size=-3'),
    (LM, ['--context_window=128'], 'seq_len (128)'),    # size=tiny trains on 128-token blocks
    (LM, ['--context_window=-1'], '--context_window=-1'),
    (LM, ['--average_last=0'], '--average_last=0'),
    (LM, ['--average_last=2', '--checkpoint=last'], '--average_last=N or --checkpoint'),
    (MT, ['--context_window=4'], '--context_window'),
    (MT, ['--batch_size=8'], '--batch_size'),
    (MT, ['--beam=0'], '--beam=0'),
    (MT, ['--lenpen=1', '--alpha=0.6'], 'not both'),
    (MT, ['--max_len_a=-1'], '--max_len_a=-1'),
    (LM, ['--override=model.d_model=64'], 'model.d_model cannot change after training'),
    (LM, ['--override=attention.sea.k=8'], 'attention.sea.* has no effect'),  # a softmax LM
    (MT, ['--override=attention.topk.k'], 'expected KEY=VALUE'),
])
def test_flags_are_checked_before_loading(tmp_path, task, flags, named):
  workdir = _workdir(tmp_path, *task)
  before = _tree(tmp_path)
  proc = run('eval.py', f'--workdir={workdir}', *flags, check=False)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert named in lines[0] and 'no-data-here' not in lines[0]
  assert _tree(tmp_path) == before


def test_missing_workdir_and_bad_flag_values_are_one_line(tmp_path):
  for flags, named in ((['--workdir=' + str(tmp_path / 'none')], 'config.json'),
                       (['--workdir=' + str(tmp_path), '--split=train'], '--split'),
                       (['--workdir=' + str(tmp_path), '--beam=many'], '--beam'),
                       ([], '--workdir')):
    proc = run('eval.py', *flags, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert named in lines[0]
