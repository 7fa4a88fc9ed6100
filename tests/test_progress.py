"""training/progress.py: a bar on a terminal, plain lines elsewhere, driven by a fake clock."""

import io

import pytest

from training import progress as progress_lib
from training.progress import Progress, format_duration


class FakeClock:
  def __init__(self, t: float = 1000.0):
    self.t = t

  def __call__(self) -> float:
    return self.t

  def advance(self, seconds: float) -> None:
    self.t += seconds


class Terminal(io.StringIO):
  def isatty(self) -> bool:
    return True


def _lines(stream: io.StringIO) -> list[str]:
  return stream.getvalue().splitlines()


def test_a_terminal_gets_a_tqdm_bar_and_anything_else_plain_lines():
  term, log = Terminal(), io.StringIO()
  with Progress('decode test', 10, unit='sentences', stream=term) as bar:
    assert bar.mode == 'bar'
    bar.update(10)
  # tqdm's rendering ('decode test:   0%|   | 0/10 [...]'), not our plain lines.
  assert '| 0/10 [' in term.getvalue() and ' sentences/s' in term.getvalue()
  assert 'decode test: 10/10' not in term.getvalue()
  with Progress('decode test', 10, unit='sentences', stream=log, clock=FakeClock()) as p:
    assert p.mode == 'lines'
    p.update(10)
  assert _lines(log) == ['decode test: 10/10 sentences in 0.0s']


def test_disabled_writes_nothing_on_either_kind_of_stream():
  for stream in (Terminal(), io.StringIO()):
    with Progress('eval', 3, stream=stream, enabled=False) as p:
      p.update(3)
    assert p.mode == 'off' and p.count == 3 and stream.getvalue() == ''


def test_the_default_stream_is_stderr_at_construction(capsys):
  with Progress('eval valid', None, unit='batches', clock=FakeClock()) as p:
    p.update(2)
  captured = capsys.readouterr()
  assert captured.out == '' and captured.err == 'eval valid: 2 batches in 0.0s\n'


def test_at_most_one_line_per_interval_then_a_final_line():
  clock, log = FakeClock(), io.StringIO()
  p = Progress('decode test', 3003, unit='sentences', stream=log, interval=30, clock=clock)
  clock.advance(29.9)
  p.update(100)
  assert _lines(log) == []                      # not 30 s yet
  clock.advance(0.1)
  p.update(100)                                 # t = 30: the first line
  clock.advance(10)
  p.update(100)                                 # t = 40: too soon after the last one
  clock.advance(25)
  p.update(100)                                 # t = 65: 35 s after the last line
  clock.advance(1)
  p.update(100)                                 # t = 66
  assert len(_lines(log)) == 2
  assert _lines(log)[0].startswith('decode test: 200/3003 sentences (6%)')
  assert _lines(log)[1].startswith('decode test: 400/3003 sentences (13%)')
  p.close()
  p.close()                                     # idempotent
  assert _lines(log)[2:] == ['decode test: 500/3003 sentences in 1m06s (7.6 sentences/s)']


def test_the_interval_is_an_argument():
  clock, log = FakeClock(), io.StringIO()
  with Progress('eval', None, stream=log, interval=5, clock=clock) as p:
    for _ in range(12):
      clock.advance(1)
      p.update()
  assert len(_lines(log)) == 2 + 1              # at t = 5, 10, then the final line


def test_rate_eta_and_percentage():
  clock, log = FakeClock(), io.StringIO()
  p = Progress('decode test', 3003, unit='sentences', stream=log, interval=30, clock=clock)
  assert p.rate() is None and p.eta() is None   # no time has passed
  clock.advance(97.5)
  p.update(1200)                                # 1200 / 97.5 s = 12.31 sentences/s
  assert p.rate() == pytest.approx(1200 / 97.5)
  assert p.eta() == pytest.approx(1803 / (1200 / 97.5))   # 146.5 s
  # 1200/3003 = 39.96%: rounded down, so 100% means done.
  assert _lines(log) == ['decode test: 1200/3003 sentences (39%), 12.3 sentences/s, ETA 2m26s']
  clock.advance(147.5)                          # 245 s in all
  p.update(1803)
  p.close()
  assert _lines(log)[-1] == 'decode test: 3003/3003 sentences in 4m05s (12.3 sentences/s)'


def test_an_unknown_total_has_no_percentage_nor_eta():
  clock, log = FakeClock(), io.StringIO()
  with Progress('eval valid', None, unit='batches', stream=log, interval=30, clock=clock) as p:
    clock.advance(40)
    p.update(500)
    assert p.eta() is None
  assert _lines(log) == ['eval valid: 500 batches, 12.5 batches/s',
                         'eval valid: 500 batches in 40s (12.5 batches/s)']


def test_eta_is_unknown_before_the_first_item():
  clock, log = FakeClock(), io.StringIO()
  p = Progress('decode test', 10, unit='sentences', stream=log, interval=30, clock=clock)
  clock.advance(30)
  p.update(0)
  assert _lines(log) == ['decode test: 0/10 sentences (0%), 0.00 sentences/s, ETA ?']


@pytest.mark.parametrize('seconds, text', [(0, '0.0s'), (7.44, '7.4s'), (42.4, '42s'),
                                           (147, '2m27s'), (245, '4m05s'), (3723, '1h02m03s')])
def test_durations(seconds, text):
  assert format_duration(seconds) == text


def test_rates():
  assert [progress_lib.format_rate(r) for r in (1234.5, 12.34, 0.254)] == ['1234', '12.3', '0.25']


def test_evaluate_reports_batches_and_knows_the_total_from_len(capsys):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from training import evaluate  # pylint: disable=g-import-not-at-top

  def eval_step(params, batch):
    del params
    return {'loss_sum': np.float32(batch['x'].sum()), 'weight': np.float32(batch['x'].size)}

  from training import distributed

  mesh = distributed.data_mesh()
  rows = jax.device_count()
  batches = [{'x': np.ones((rows, 2), np.float32)} for _ in range(3)]
  out = evaluate.evaluate(eval_step, None, batches, mesh, metric='perplexity', progress=True,
                          desc='eval valid', max_batches=2)
  assert out['tokens'] == 4 * rows
  assert capsys.readouterr().err.startswith('eval valid: 2/2 batches in ')
  evaluate.evaluate(eval_step, None, iter(batches), mesh, metric='perplexity', progress=True,
                    desc='eval valid')
  assert capsys.readouterr().err.startswith('eval valid: 3 batches in ')
  evaluate.evaluate(eval_step, None, batches, mesh, metric='perplexity', progress=False)
  assert capsys.readouterr().err == ''


def test_translate_reports_sentences_not_filling_rows(capsys):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from training import distributed, translate  # pylint: disable=g-import-not-at-top

  rows = 2 * jax.device_count()

  class Data:  # two batches, 3 sentences in all: the last row of the second one is filling
    pad_id, bos_id, eos_id = 1, 2, 2

    def num_examples(self, split):
      return 3

    def eval_batches(self, split, *, limit, **unused):
      ids = np.arange(2 * rows, dtype=np.int32).reshape(2, rows)
      ids[ids >= limit] = -1
      return [{'source': np.full((rows, 4), 5, np.int32), 'ids': i} for i in ids]

    def postprocess(self, tokens):
      return ' '.join(map(str, tokens))

  translator = translate.Translator(None, None, Data(), translate.DecodeSettings(),
                                    max_positions=16, mesh=distributed.data_mesh())
  translator._search = lambda params, source, max_lens, *, max_len: (  # pylint: disable=protected-access
      np.full((source.shape[0], max_len), 7, np.int32), np.full((source.shape[0],), 3))
  assert translator.translate(None, 'test', progress=True) == ['7 7'] * 3
  assert capsys.readouterr().err.startswith('decode test: 3/3 sentences in ')
  assert translator.translate(None, 'test', progress=False) == ['7 7'] * 3
  assert capsys.readouterr().err == ''


def test_a_resumed_count_starts_at_initial_and_rates_only_new_work():
  clock, log = FakeClock(), io.StringIO()
  p = Progress('train', 1000, unit='steps', stream=log, interval=30, clock=clock, initial=600)
  clock.advance(40.0)
  p.set_postfix('loss 2.500')
  p.update(200)                   # 200 new steps in 40 s: 5 steps/s, 200 left: ETA 40 s
  assert p.rate() == pytest.approx(5.0) and p.eta() == pytest.approx(40.0)
  assert _lines(log) == ['train: 800/1000 steps (80%), 5.0 steps/s, ETA 40s, loss 2.500']


@pytest.mark.parametrize('enabled', [True, False])
def test_messages_are_written_in_every_mode(enabled):
  log, out = io.StringIO(), io.StringIO()
  p = Progress('train', 10, stream=log, enabled=enabled)
  p.write('step 5: valid loss 1.0', file=out)
  assert _lines(out) == ['step 5: valid loss 1.0'] and _lines(log) == []
