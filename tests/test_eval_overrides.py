"""eval.py --override: one trained SEA checkpoint evaluated at several k without retraining.

Properties: an override at the trained value scores exactly what no override scores; another k
changes the scores; every line records its overrides and peak memory, and every setting has
its own file; a key that is not an inference-time setting, or a value of the wrong type or out
of range, is one line on stderr and exit code 2, and writes nothing.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.test_faults import _args, _strict_json, _tree
from tests.test_train import REPO, _env, run
from training import eval_overrides

TRAINED_K = 4
# One layer, two updates: the checkpoint only has to exist; eval.py scores all 16 examples.
SEA = ['--config.attention.kind=sea', '--config.attention.sea.distill=false',
       '--config.attention.sea.predictor_length=8', f'--config.attention.sea.k={TRAINED_K}',
       '--config.model.num_layers=1', '--config.model.dropout=0.0',
       '--config.train_steps=2', '--config.log_every=1',
       '--config.eval_every=2', '--config.eval_batches=1', '--config.checkpoint_every=2',
       '--config.data.num_valid_examples=16']


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp('sea') / 'run'
  run('train.py', *_args(*SEA), f'--workdir={path}')
  return path


def _evaluate_concurrently(workdir, settings: dict[str, list[str]]) -> dict[str, dict]:
  """{name: the JSON line} of one eval.py per setting, run side by side (they are mostly
  single-threaded start-up and tracing, and the CI machine has two cores)."""
  procs = {name: subprocess.Popen([sys.executable, 'eval.py', f'--workdir={workdir}', *flags],
                                  cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
           for name, flags in settings.items()}
  out = {}
  for name, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, f'{name}: {stderr[-4000:]}'
    lines = [l for l in stdout.splitlines() if l.strip()]
    assert len(lines) == 1, stdout
    out[name] = _strict_json(lines[0])
  return out


def test_one_checkpoint_evaluated_at_two_k(workdir):
  # One test, so that a parallel run (pytest -n) trains the workdir once.
  results = _evaluate_concurrently(workdir, {
      'none': [],
      'trained': [f'--override=attention.sea.k={TRAINED_K}'],
      'other': ['--override=attention.sea.k=1'],
  })
  none, trained, other = results['none'], results['trained'], results['other']
  # The trained k scores exactly what no override scores; another k reaches the model.
  assert trained['loss'] == none['loss'] and trained['value'] == none['value']
  assert other['loss'] != none['loss']
  assert other['tokens'] == trained['tokens'] == none['tokens'] > 0
  # Each line records its overrides and the peak memory (null on CPU).
  assert none['overrides'] == {}
  assert trained['overrides'] == {'attention.sea.k': TRAINED_K}
  assert other['overrides'] == {'attention.sea.k': 1}
  for result in results.values():
    assert result['peak_memory_bytes'] is None or result['peak_memory_bytes'] > 0
  # Each setting has its own file; without overrides the name is as before.
  step = none['step']
  files = {p.name: _strict_json(p.read_text()) for p in (workdir / 'eval').glob('*.json')}
  assert files == {f'valid-{step}-cw0.json': none,
                   f'valid-{step}-cw0-sea.k={TRAINED_K}.json': trained,
                   f'valid-{step}-cw0-sea.k=1.json': other}


@pytest.fixture
def config_only(tmp_path):
  """A SEA LM's workdir holding only config.json, with a data folder that does not exist: a
  refusal that came after loading would be a data error instead."""
  from configs import wikitext103  # pylint: disable=g-import-not-at-top
  from training import workdir as wd  # pylint: disable=g-import-not-at-top
  config = wikitext103.get_config('size=tiny,attention=sea')
  config.model.vocab_size = 64  # train.py records the data's
  config.data.dir = str(tmp_path / 'no-data-here')
  path = tmp_path / 'sea'
  path.mkdir()
  wd.atomic_write_json(path / 'config.json', wd.config_to_dict(config))
  return path


@pytest.mark.parametrize('override, named', [
    ('model.d_model=64', 'model.d_model cannot change after training'),
    ('attention.sea.predictor_length=16', 'attention.sea.predictor_length cannot change'),
    ('attention.topk.k=4', 'attention.topk.* has no effect'),
    ('attention.sea.k=four', 'expected an int for attention.sea.k'),
    ('attention.sea.query_chunk_size=4', 'acts only with attention.sea.inference=chunked'),
    ('attention.sea.k=0', 'attention.sea.k=0 is not supported'),  # the kind's own range check
])
def test_refused_override_is_one_line_and_writes_nothing(config_only, override, named):
  before = _tree(config_only.parent)
  proc = run('eval.py', f'--workdir={config_only}', f'--override={override}', check=False)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert f'--override={override}' in lines[0] and named in lines[0]
  assert 'no-data-here' not in lines[0]
  if 'cannot change' in named:
    assert 'accepted: ' + eval_overrides.accepted() in lines[0]
  assert _tree(config_only.parent) == before


def test_eval_docstring_lists_every_accepted_key():
  doc = ast.get_docstring(ast.parse((REPO / 'eval.py').read_text()))
  assert all(key in doc for key in eval_overrides.INFERENCE_KEYS)


def test_file_tag_does_not_depend_on_the_order_of_the_flags():
  a = {'attention.sea.k': 16, 'attention.impl': 'pallas'}
  b = dict(reversed(a.items()))
  assert eval_overrides.file_tag(a) == eval_overrides.file_tag(b) == '-impl=pallas-sea.k=16'
  assert eval_overrides.file_tag({}) == ''
