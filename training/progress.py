"""Progress of training, evaluation and decoding: a tqdm bar on a terminal, plain lines in a log.

    with Progress('decode test', total=3003, unit='sentences') as p:
      for batch in batches:
        ...
        p.update(len(batch))

Where the output goes (`stream`, default `sys.stderr` at construction) decides the form:

* a terminal (`stream.isatty()`): a tqdm bar, removed when done (`leave=False`);
* anything else (a file, a pipe, a batch scheduler's log): plain lines, at most one every
  `interval` seconds (default 30), written when `update` is called (so nothing appears while
  one step runs longer than that), and always one final line on `close()`:

      decode test: 1200/3003 sentences (39%), 12.3 sentences/s, ETA 2m27s
      decode test: 3003/3003 sentences in 4m05s (12.3 sentences/s)

  With an unknown total (`total=None`) there is no percentage nor ETA:

      eval valid: 1200 batches, 12.3 batches/s
      eval valid: 3003 batches in 4m05s (12.3 batches/s)

  The rate is the average since the reporter was made (count / elapsed, first steps' compilation
  included); the ETA is (total − count) / rate. The percentage is rounded down, so 100% means
  done. Durations read `7.4s`, `42s`, `2m27s`, `1h02m03s`.

`enabled=False` reports nothing. `clock` (default `time.monotonic`) is injectable so that tests
can drive the cadence and the arithmetic without sleeping. No dependency besides tqdm.
"""

from __future__ import annotations

from collections.abc import Callable
import sys
import time
from typing import TextIO

from tqdm import tqdm

DEFAULT_INTERVAL = 30.0


def format_duration(seconds: float) -> str:
  """`7.4s` below 10 s, `42s` below a minute, then `2m27s`, `1h02m03s`."""
  seconds = max(float(seconds), 0.0)
  if seconds < 10:
    return f'{seconds:.1f}s'
  s = int(round(seconds))
  if s < 60:
    return f'{s}s'
  h, rest = divmod(s, 3600)
  m, s = divmod(rest, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def format_rate(rate: float) -> str:
  """`1234`, `12.3`, `0.25`: about three significant digits, never scientific notation."""
  if rate >= 100:
    return f'{rate:.0f}'
  if rate >= 1:
    return f'{rate:.1f}'
  return f'{rate:.2f}'


def is_terminal(stream) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):  # no isatty, or a closed file
    return False


class Progress:
  """Counts work done towards an optional total and reports it (see the module docstring).

  Args:
    desc: what is being done, the start of every line ('decode test').
    total: the count when done, or None when unknown.
    unit: what is counted, plural ('sentences', 'batches').
    enabled: False reports nothing (the counting still works).
    stream: where to report; `sys.stderr` when None.
    interval: the least number of seconds between two plain lines.
    clock: seconds as a float, monotonic.
    initial: the count already done before this reporter (a resumed run's first step); the
      rate and ETA count only what is done from here.
  """

  def __init__(self, desc: str, total: int | None = None, *, unit: str = 'it',
               enabled: bool = True, stream: TextIO | None = None,
               interval: float = DEFAULT_INTERVAL, clock: Callable[[], float] = time.monotonic,
               initial: int = 0):
    self.desc, self.total, self.unit = desc, total, unit
    self.interval = float(interval)
    self.count = self.initial = initial
    self.postfix = ''
    self._clock = clock
    self._stream = sys.stderr if stream is None else stream
    self._start = self._last = clock()
    self._closed = False
    self._bar = None
    if not enabled:
      self.mode = 'off'
    elif is_terminal(self._stream):
      self.mode = 'bar'
      self._bar = tqdm(total=total, desc=desc, unit=f' {unit}', file=self._stream, leave=False,
                       dynamic_ncols=True, initial=initial)
    else:
      self.mode = 'lines'

  def elapsed(self) -> float:
    return self._clock() - self._start

  def rate(self, now: float | None = None) -> float | None:
    """(count − initial) / elapsed seconds, None before any time has passed."""
    elapsed = (self._clock() if now is None else now) - self._start
    return (self.count - self.initial) / elapsed if elapsed > 0 else None

  def eta(self, now: float | None = None) -> float | None:
    """Seconds left at the average rate; None without a total or a rate."""
    rate = self.rate(now)
    if self.total is None or not rate:
      return None
    return max(self.total - self.count, 0) / rate

  def status_line(self, now: float | None = None) -> str:
    """The periodic line: count (of total, percentage), rate, ETA."""
    now = self._clock() if now is None else now
    rate, eta = self.rate(now), self.eta(now)
    if self.total is None:
      line = f'{self.desc}: {self.count} {self.unit}'
    else:
      percent = 100 * self.count // self.total if self.total > 0 else 100
      line = f'{self.desc}: {self.count}/{self.total} {self.unit} ({percent}%)'
    line += f', {format_rate(rate)} {self.unit}/s' if rate is not None else ''
    if self.total is not None:
      line += f', ETA {format_duration(eta)}' if eta is not None else ', ETA ?'
    return line + (f', {self.postfix}' if self.postfix else '')

  def final_line(self, now: float | None = None) -> str:
    """The closing line: count (of total) and the time it took, with the average rate."""
    now = self._clock() if now is None else now
    done = f'{self.count}' if self.total is None else f'{self.count}/{self.total}'
    line = f'{self.desc}: {done} {self.unit} in {format_duration(now - self._start)}'
    rate = self.rate(now)
    return line + (f' ({format_rate(rate)} {self.unit}/s)' if rate is not None else '')

  def update(self, n: int = 1) -> None:
    """Adds `n` to the count; in plain mode writes a line if `interval` seconds have passed."""
    self.count += n
    if self._bar is not None:
      self._bar.update(n)
    elif self.mode == 'lines':
      now = self._clock()
      if now - self._last >= self.interval:
        self._last = now
        self._write(self.status_line(now))

  def set_postfix(self, text: str) -> None:
    """A short status (e.g. 'loss 2.345') shown after the bar or at the end of the next line."""
    self.postfix = text
    if self._bar is not None:
      self._bar.set_postfix_str(text)

  def write(self, line: str, file: TextIO | None = None) -> None:
    """A message of its own to `file` (default: the stream), in every mode; on a terminal the
    bar is cleared first and redrawn below it."""
    file = self._stream if file is None else file
    if self._bar is not None:
      self._bar.write(line, file=file)
    else:
      file.write(line + '\n')
      file.flush()

  def close(self) -> None:
    """Ends the report: the bar goes away, or the final line is written. Idempotent."""
    if self._closed:
      return
    self._closed = True
    if self._bar is not None:
      self._bar.close()
    elif self.mode == 'lines':
      self._write(self.final_line())

  def _write(self, line: str) -> None:
    self._stream.write(line + '\n')
    self._stream.flush()

  def __enter__(self) -> 'Progress':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
