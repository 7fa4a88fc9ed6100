"""Sweeps: a paper's comparison as one command, on local processes or SLURM (through submitit).

    python -m training.sweep --config=configs/default.py --sweep=mqar_pairs --seeds=3
    python -m training.sweep --config=configs/wikitext103.py:size=small --sweep=dagpam \\
        --launcher=slurm --slurm_partition=gpu --slurm_gpus_per_node=1 --seeds=3
    python -m training.sweep report --root=sweeps/default-mqar_pairs

**Definitions live beside the configs** (as big_vision does): a task config may define
`get_sweep(arg)`, with `arg` the same preset string as `get_config(arg)`, returning
`{sweep name: sweep}`. A sweep is a dict:

    {'doc': 'what it compares, and what the paper reports',
     'rows': [{'name': 'softmax', 'attention.kind': 'softmax'},        # override sets
              {'name': 'dagpam', 'attention.kind': 'dagpam', 'group': 'dagpam', 'x': 8}],
     'evals': [{'name': 'test', 'flags': ['--split=test']}],           # eval.py runs per job
     'x_label': 'key-value pairs'}                                      # optional, for plots

A row maps config keys (as `--config.<key>`) to values; `name` names its folder (default: the
overrides, `kind=dagpam,k=8`), and the optional `group` / `x` place it on a plot's curve (one
curve per group, x along the axis). An eval's own `x` (e.g. an inference-time SEA k) does the
same for the metric of one checkpoint evaluated at several settings. Every row is run once per
seed (`--seeds=N` sets `config.seed` to 0 … N−1).

**Jobs.** A job is one `train.py` run in its own workdir `<root>/<row name>/seed<s>`, then its
`eval.py` runs. Its bookkeeping is in `<workdir>/sweep/`: `job.json` (the commands), the logs,
`eval-<name>.json` (each evaluation's JSON line, kept once written) and `done.json` (written
last). A rerun of the same sweep command skips finished jobs and resumes the others from their
checkpoints (train.py resumes by itself), so a killed sweep loses at most the unsaved steps of
its running jobs; nothing finished is ever overwritten. The jobs share JAX's persistent
compilation cache in `<root>/compilation_cache` (unless `JAX_COMPILATION_CACHE_DIR` is set):
the seeds of a row run the same programs, so only the first compiles them.

**Launchers** (no home-made scheduler):

- `local`: `--parallel=N` jobs at a time as subprocesses (default 1). A TPU is held by one
  process, so on a TPU VM it refuses N > 1. SIGTERM / Ctrl-C is passed to the running jobs,
  which save a checkpoint and stop; rerunning the command resumes them.
- `slurm`: a submitit job array (`--slurm_*` flags: partition, GPUs, CPUs, memory, time limit,
  array parallelism; logs under `<root>/slurm/`). Before the time limit or on preemption SLURM
  signals the job, which tells train.py to save, and submitit requeues it; the requeued job
  resumes where it stopped. `--slurm_cluster=local|debug` runs the same path without a cluster
  (submitit's local and in-process executors; used by the tests).

Multi-host TPU pods are not a launcher: every host runs the same `train.py` command, e.g.
`gcloud compute tpus tpu-vm ssh NAME --worker=all --command "cd attention-lab && python
train.py ..."`, and `jax.distributed.initialize()` in train.py joins them.

Everything is checked before any job starts: an unknown sweep name (the known ones are listed),
an override key the config does not have, a value of the wrong type, a row whose config
train.py would refuse (e.g. more MQAR queries than pairs), two jobs that would share
a workdir, a job folder whose recorded commands differ from this sweep's; each is one line on
stderr with exit code 2. `--dry_run` prints every job's commands and runs nothing.

Reports: `report --root=DIR` (training/sweep_report.py) writes `DIR/report.md`, `report.json`
and plots: mean ± standard deviation over seeds, with the protocol and the commands of each row.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import glob
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from training import cli
from training.workdir import atomic_write_json

try:
  import submitit
except ImportError:  # only --launcher=slurm needs it
  submitit = None

REPO = Path(__file__).resolve().parents[1]
ROW_META = ('name', 'group', 'x', 'after', 'evals')   # row keys that are not config overrides
NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._=,+-]*$')
COMPILATION_CACHE = 'compilation_cache'  # <root>/compilation_cache: shared by the sweep's jobs


class SweepError(ValueError):
  """Refused input: the message is one line for the user."""


# ----------------------------------------------------------------------------- definitions


@dataclasses.dataclass(frozen=True)
class Eval:
  name: str
  flags: tuple[str, ...]
  x: float | None = None


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  overrides: tuple[tuple[str, Any], ...]
  group: str
  x: float | None = None
  after: str | None = None                # a row whose job of the same seed must finish first
  evals: tuple[str, ...] | None = None    # the evals this row runs (None: all)


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  doc: str
  rows: tuple[Row, ...]
  evals: tuple[Eval, ...]
  x_label: str = ''


def split_config_spec(spec: str) -> tuple[Path, str | None]:
  """`configs/enwik8.py:size=tiny` → (path, 'size=tiny'); the path resolved from here or the repo."""
  path, _, arg = spec.partition(':')
  candidates = [Path(path), REPO / path]
  found = next((p for p in candidates if p.is_file()), None)
  if found is None:
    raise SweepError(f'--config={path}: no such config file; the task configs are: '
                     f'{", ".join(cli.task_config_files(REPO))}')
  return found.resolve(), (arg or None)


@functools.lru_cache(maxsize=None)
def _import_config_module(path: Path):
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
  module_spec = importlib.util.spec_from_file_location(f'_sweep_config_{path.stem}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def _format_value(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return ','.join(_format_value(v) for v in value)
  return str(value)


def _default_row_name(overrides: Sequence[tuple[str, Any]]) -> str:
  if not overrides:
    return 'base'
  return ','.join(f'{key.rsplit(".", 1)[-1]}={_format_value(value)}' for key, value in overrides)


def _parse_row(raw: Any, where: str) -> Row:
  if not isinstance(raw, dict):
    raise SweepError(f'{where}: a row is a dict of config keys to values, got {raw!r}')
  overrides = tuple((k, v) for k, v in raw.items() if k not in ROW_META)
  for key, _ in overrides:
    if key == 'seed':
      raise SweepError(f'{where}: a row may not set seed (--seeds sets it per job)')
  name = str(raw.get('name') or _default_row_name(overrides))
  if not NAME_RE.match(name) or name in ('sweep', 'slurm'):
    raise SweepError(f'{where}: row name {name!r} is not a folder name (letters, digits and '
                     '._=,+- only); give the row a "name"')
  x, evals = raw.get('x'), raw.get('evals')
  return Row(name=name, overrides=overrides, group=str(raw.get('group', name)),
             x=None if x is None else float(x), after=raw.get('after'),
             evals=None if evals is None else tuple(evals))


def _parse_eval(raw: Any, index: int, where: str) -> Eval:
  if isinstance(raw, (list, tuple)):
    raw = {'flags': list(raw)}
  if not isinstance(raw, dict) or not isinstance(raw.get('flags', []), (list, tuple)):
    raise SweepError(f'{where}: an eval is {{"name": ..., "flags": [eval.py flags]}}, got {raw!r}')
  flags = tuple(str(f) for f in raw.get('flags', ()))
  bad = [f for f in flags if not f.startswith('--') or f.startswith('--workdir')]
  if bad:
    raise SweepError(f'{where}: eval flags must be --name=value and may not set --workdir: {bad}')
  name = str(raw.get('name') or f'eval{index}')
  if not NAME_RE.match(name):
    raise SweepError(f'{where}: eval name {name!r} is not a file name')
  x = raw.get('x')
  return Eval(name=name, flags=flags, x=None if x is None else float(x))


def load_sweep(config_spec: str, name: str) -> Sweep:
  """The sweep `name` of the config file in `config_spec`, checked."""
  path, arg = split_config_spec(config_spec)
  module = _import_config_module(path)
  get_sweep = getattr(module, 'get_sweep', None)
  if get_sweep is None:
    raise SweepError(f'{path.name} defines no sweeps (no get_sweep); configs with sweeps: '
                     f'{", ".join(configs_with_sweeps()) or "none"}')
  sweeps = get_sweep(arg)
  if name not in sweeps:
    raise SweepError(f'unknown sweep {name!r} in {path.name}; its sweeps are: '
                     f'{", ".join(sorted(sweeps))}')
  raw = sweeps[name]
  where = f'{path.name} sweep {name!r}'
  rows = tuple(_parse_row(r, f'{where} row {i}') for i, r in enumerate(raw.get('rows', ())))
  if not rows:
    raise SweepError(f'{where}: no rows')
  evals = tuple(_parse_eval(e, i, f'{where} eval {i}') for i, e in enumerate(raw.get('evals', ())))
  names = [e.name for e in evals]
  if len(set(names)) != len(names):
    raise SweepError(f'{where}: two evals share a name: {names}')
  row_names = [r.name for r in rows]
  for r in rows:
    if r.after is not None and (r.after not in row_names or r.after == r.name):
      raise SweepError(f'{where} row {r.name!r}: after={r.after!r} is not another row '
                       f'({", ".join(row_names)})')
    unknown = sorted(set(r.evals or ()) - set(names))
    if unknown:
      raise SweepError(f'{where} row {r.name!r}: unknown evals {unknown}; the evals are {names}')
  return Sweep(name=name, doc=str(raw.get('doc', '')), rows=rows, evals=evals,
               x_label=str(raw.get('x_label', '')))


def configs_with_sweeps() -> list[str]:
  return [p for p in cli.task_config_files(REPO)
          if 'def get_sweep' in (REPO / p).read_text(encoding='utf-8')]


def _coerce(current: Any, text: str, key: str) -> Any:
  """`text` (from --set) as the type of the config's current value."""
  try:
    if isinstance(current, bool):
      if text.lower() not in ('true', 'false', '1', '0'):
        raise ValueError('expected true or false')
      return text.lower() in ('true', '1')
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, tuple):
      return tuple(t for t in text.split(',') if t)
  except ValueError as e:
    raise SweepError(f'--set={key}={text}: {e} (the config\'s value is {current!r})') from e
  return text


def with_common_overrides(config_spec: str, sweep: Sweep, sets: Sequence[str]) -> Sweep:
  """`sweep` with `--set=key=value` overrides added to every row (typed as the config's)."""
  if not sets:
    return sweep
  path, arg = split_config_spec(config_spec)
  config = _import_config_module(path).get_config(arg)
  common = []
  for item in sets:
    key, sep, text = item.partition('=')
    if not sep or not key:
      raise SweepError(f'--set={item}: expected --set=<config key>=<value>')
    parent, leaf = _config_key(config, key, config_spec, f'--set={item}')
    common.append((key, _coerce(parent[leaf], text, key)))
  rows = []
  for row in sweep.rows:
    clash = sorted({k for k, _ in common} & {k for k, _ in row.overrides})
    if clash:
      raise SweepError(f'--set {", ".join(clash)}: row {row.name!r} of sweep {sweep.name!r} '
                       'sets it too')
    rows.append(dataclasses.replace(row, overrides=(*common, *row.overrides)))
  return dataclasses.replace(sweep, rows=tuple(rows))


def _config_key(config, key: str, config_spec: str, where: str):
  """(the ConfigDict holding `key`, its last name), or a SweepError naming `where`."""
  *parents, leaf = key.split('.')
  node = config
  for part in parents:
    node = node[part] if hasattr(node, 'keys') and part in node else None
  if not hasattr(node, 'keys') or leaf not in node:
    raise SweepError(f'{where}: the config has no key {key!r} (python train.py '
                     f'--config={config_spec} --show_config lists every key)')
  return node, leaf


def check_overrides(config_spec: str, sweep: Sweep) -> None:
  """Every row's overrides exist in the config and have its types, and every row's config
  passes the checks `train.py` makes before it reads data (nothing is run)."""
  # pylint: disable-next=g-import-not-at-top (jax and the models only when checking a sweep)
  from training import builders
  path, arg = split_config_spec(config_spec)
  module = _import_config_module(path)
  for row in sweep.rows:
    config = module.get_config(arg)
    where = f'sweep {sweep.name!r} row {row.name!r}'
    for key, value in row.overrides:
      parent, leaf = _config_key(config, key, config_spec, where)
      try:
        parent[leaf] = value
      except (TypeError, ValueError) as e:
        raise SweepError(f'{where}: {key}={value!r}: {str(e).splitlines()[0]}') from e
    try:
      builders.check_config(config, 1, process_count=1)
    except ValueError as e:
      raise SweepError(f'{where}: {str(e).splitlines()[0]}') from e


# ---------------------------------------------------------------------------------------- jobs


@dataclasses.dataclass(frozen=True)
class Job:
  row: Row
  seed: int
  workdir: Path
  train: tuple[str, ...]                 # argv after the interpreter, run in the repo
  evals: tuple[tuple[Eval, tuple[str, ...]], ...]

  @property
  def state_dir(self) -> Path:
    return self.workdir / 'sweep'

  @property
  def done(self) -> bool:
    return (self.state_dir / 'done.json').exists()

  @property
  def compilation_cache(self) -> Path:
    return self.workdir.parents[1] / COMPILATION_CACHE  # <root>/<row>/seed<s> → <root>/...

  def record(self) -> dict:
    return {'row': self.row.name, 'group': self.row.group, 'x': self.row.x, 'seed': self.seed,
            'after': self.row.after,
            'overrides': [[k, v] for k, v in self.row.overrides],
            'train': list(self.train),
            'evals': [{'name': e.name, 'x': e.x, 'command': list(c)} for e, c in self.evals]}


def make_jobs(config_spec: str, sweep: Sweep, seeds: int, root: Path) -> list[Job]:
  jobs, seen = [], {}
  for row in sweep.rows:
    for seed in range(seeds):
      workdir = (root / row.name / f'seed{seed}').resolve()
      if workdir in seen:
        raise SweepError(f'two jobs would share the workdir {workdir}: rows {seen[workdir]!r} '
                         f'and {row.name!r}; give the rows distinct "name"s')
      seen[workdir] = row.name
      fill = lambda v: (v.format(root=root.resolve(), seed=seed) if isinstance(v, str) else v)
      train = ('train.py', f'--config={config_spec}',
               *(f'--config.{k}={_format_value(fill(v))}' for k, v in row.overrides),
               f'--config.seed={seed}', '--config.progress_bar=false', f'--workdir={workdir}')
      evals = tuple((e, ('eval.py', f'--workdir={workdir}', *e.flags)) for e in sweep.evals
                    if row.evals is None or e.name in row.evals)
      jobs.append(Job(row, seed, workdir, train, evals))
  return jobs


def check_recorded_jobs(jobs: Sequence[Job]) -> None:
  """A job folder that holds another sweep's job is refused before anything runs."""
  for job in jobs:
    path = job.state_dir / 'job.json'
    if path.exists():
      recorded = json.loads(path.read_text())
      if recorded.get('train') != list(job.train):
        raise SweepError(f'{job.workdir} holds a job with other training flags '
                         f'({shlex.join(recorded.get("train", []))}); use another --root')


def shell_line(argv: Sequence[str]) -> str:
  return shlex.join(['python', *argv])


def machine() -> str:
  """A short description of the machine a job ran on, for the report."""
  parts = [f'{os.cpu_count()} CPU cores ({platform.machine()})']
  if shutil.which('nvidia-smi'):
    out = subprocess.run(['nvidia-smi', '--query-gpu=name', '--format=csv,noheader'],
                         capture_output=True, text=True, check=False).stdout.split('\n')
    gpus = [g.strip() for g in out if g.strip()]
    if gpus:
      parts.append(f'{len(gpus)}× {gpus[0]}')
  if glob.glob('/dev/accel*'):
    parts.append('TPU')
  return ', '.join(parts)


class Runner:
  """Runs jobs as subprocesses; `stop()` passes SIGTERM to the running ones (they save)."""

  def __init__(self):
    self._lock = threading.Lock()
    self._running: set[subprocess.Popen] = set()
    self.stopping = False

  def stop(self, signum: int = signal.SIGTERM) -> None:
    self.stopping = True
    with self._lock:
      for proc in self._running:
        if proc.poll() is None:
          proc.send_signal(signum)

  def wait(self, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
      with self._lock:
        if not any(p.poll() is None for p in self._running):
          return
      time.sleep(0.5)

  def _call(self, argv: Sequence[str], log: Path, cache: Path) -> subprocess.CompletedProcess:
    # The jobs of a sweep share JAX's persistent compilation cache: the seeds of a row run the
    # same programs (the seed is data, not code), so only the first seed compiles. A cache hit
    # runs exactly the executable a fresh compile would give.
    env = dict(os.environ)
    env.setdefault('JAX_COMPILATION_CACHE_DIR', str(cache))
    with open(log, 'a', encoding='utf-8') as out:
      out.write(f'$ {shell_line(argv)}\n')
      out.flush()
      with self._lock:
        if self.stopping:
          return subprocess.CompletedProcess(argv, 143, '', '')
        proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=out, text=True, env=env)
        self._running.add(proc)
      try:
        stdout, _ = proc.communicate()
      finally:
        with self._lock:
          self._running.discard(proc)
      out.write(stdout)
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, '')

  def run(self, job: Job) -> str:
    """Runs what is missing of `job`: 'done', 'skipped' (finished before), 'stopped' or
    'failed (...)'."""
    if job.done:
      return 'skipped'
    job.state_dir.mkdir(parents=True, exist_ok=True)
    if not (job.state_dir / 'job.json').exists():
      atomic_write_json(job.state_dir / 'job.json', job.record())
    start = time.time()
    final = job.workdir / 'final.json'
    if not final.exists():            # written once, when training has finished
      train = self._call(job.train, job.state_dir / 'train.log', job.compilation_cache)
      if train.returncode in (130, 143) or self.stopping:
        return 'stopped'
      if train.returncode != 0:
        return f'failed (train.py exit {train.returncode}; see {job.state_dir / "train.log"})'
    train_seconds = time.time() - start
    for ev, argv in job.evals:
      path = job.state_dir / f'eval-{ev.name}.json'
      if path.exists():
        continue
      result = self._call(argv, job.state_dir / f'eval-{ev.name}.log', job.compilation_cache)
      if result.returncode in (130, 143) or self.stopping:
        return 'stopped'
      lines = [l for l in result.stdout.splitlines() if l.startswith('{')]
      if result.returncode != 0 or not lines:
        return (f'failed (eval.py {ev.name} exit {result.returncode}; see '
                f'{job.state_dir / f"eval-{ev.name}.log"})')
      atomic_write_json(path, {'name': ev.name, 'x': ev.x, 'command': list(argv),
                          'result': json.loads(lines[-1])})
    atomic_write_json(job.state_dir / 'done.json', {
        'final': json.loads(final.read_text()), 'machine': machine(),
        'seconds': round(train_seconds, 1), 'finished': time.strftime('%Y-%m-%dT%H:%M:%S')})
    return 'done'


# ----------------------------------------------------------------------------------- launchers


def on_tpu_vm() -> bool:
  return bool(glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'))


def stages(jobs: Sequence[Job]) -> list[list[Job]]:
  """Jobs in waves: a row with `after` runs in the wave after that row's."""
  by_row = {j.row.name: j.row for j in jobs}
  depth = {}

  def level(name: str, seen=()) -> int:
    if name not in depth:
      after = by_row[name].after
      if after in seen:
        raise SweepError(f'rows {", ".join(seen)} wait for each other (after=)')
      depth[name] = 0 if after is None else 1 + level(after, (*seen, name))
    return depth[name]

  waves: dict[int, list[Job]] = {}
  for job in jobs:
    waves.setdefault(level(job.row.name), []).append(job)
  return [waves[k] for k in sorted(waves)]


def _prerequisite(job: Job, jobs: Sequence[Job]) -> Job | None:
  if job.row.after is None:
    return None
  return next(j for j in jobs if j.row.name == job.row.after and j.seed == job.seed)


def check_launcher(launcher: str, parallel: int, cluster: str) -> None:
  """Refuses a launch this machine cannot make (before anything is written)."""
  if launcher == 'local' and parallel > 1 and on_tpu_vm():
    raise SweepError(f'--parallel={parallel}: one process holds a TPU; use --parallel=1')
  if launcher == 'slurm' and cluster == 'slurm' and shutil.which('sbatch') is None:
    raise SweepError('--launcher=slurm: sbatch is not on this machine (no SLURM here); use '
                     '--launcher=local')
  if launcher == 'slurm' and submitit is None:
    raise SweepError('--launcher=slurm needs submitit (pip install submitit)')


class _Tally:
  """Counts outcomes by their first word and prints one line per finished job."""

  def __init__(self, total: int, out):
    self.counts: dict[str, int] = {}
    self.finished, self.total, self.out = 0, total, out

  def add(self, job: Job, outcome: str) -> None:
    self.finished += 1
    word = outcome.split(' ')[0]
    self.counts[word] = self.counts.get(word, 0) + 1
    print(f'[{self.finished}/{self.total}] {job.row.name} seed{job.seed}: {outcome}',
          file=self.out, flush=True)


def launch_local(jobs: Sequence[Job], parallel: int, *, out=sys.stdout) -> dict[str, int]:
  """Runs the jobs, `parallel` at a time, wave after wave; returns the count of each outcome
  (`check_launcher` first)."""
  runner = Runner()
  previous = {s: signal.signal(s, lambda signum, _: runner.stop(signum))
              for s in (signal.SIGTERM, signal.SIGINT)}
  tally = _Tally(len(jobs), out)

  def run(job: Job) -> str:
    before = _prerequisite(job, jobs)
    if before is not None and not before.done and not job.done:
      return f'failed (row {before.row.name} seed{before.seed}, which it needs, did not finish)'
    return runner.run(job)

  try:
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
      for wave in stages(jobs):
        futures = {pool.submit(run, job): job for job in wave}
        for future in concurrent.futures.as_completed(futures):
          tally.add(futures[future], future.result())
        if runner.stopping:
          break
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  return tally.counts


_SLURM_RUNNER = Runner()   # the runner of the SLURM task running in this process


def job_from_record(record: dict) -> Job:
  evals = tuple((Eval(e['name'], (), e['x']), tuple(e['command'])) for e in record['evals'])
  row = Row(record['row'], tuple(tuple(o) for o in record['overrides']), record['group'],
            record['x'], record.get('after'))
  return Job(row, record['seed'], Path(record['workdir']), tuple(record['train']), evals)


class SlurmTask(submitit.helpers.Checkpointable if submitit else object):
  """One task of the job array. Before a timeout or on preemption submitit calls `checkpoint`:
  train.py is told to save (SIGTERM) and the task is requeued with the same record; rerun, the
  job resumes from that checkpoint."""

  def __call__(self, record: dict) -> str:
    return _SLURM_RUNNER.run(job_from_record(record))

  def checkpoint(self, record: dict):
    _SLURM_RUNNER.stop(signal.SIGTERM)
    _SLURM_RUNNER.wait(timeout=300)
    return super().checkpoint(record)


def launch_slurm(jobs: Sequence[Job], root: Path, *, cluster: str, parameters: dict,
                 out=sys.stdout) -> dict[str, int]:
  """Submits the unfinished jobs as one submitit array; waits for them when they run here
  (cluster local/debug) and otherwise prints the SLURM job ids (`check_launcher` first)."""
  todo = [j for j in jobs if not j.done]
  tally = _Tally(len(todo), out)
  tally.counts['skipped'] = len(jobs) - len(todo)
  if not todo:
    return tally.counts
  executor = submitit.AutoExecutor(folder=str(root / 'slurm' / '%j'), cluster=cluster)
  executor.update_parameters(**parameters)
  previous_id = None
  for wave in stages(todo):
    if previous_id is not None and cluster == 'slurm':
      executor.update_parameters(slurm_additional_parameters={'dependency':
                                                              f'afterany:{previous_id}'})
    records = [dict(j.record(), workdir=str(j.workdir)) for j in wave]
    submitted = executor.map_array(SlurmTask(), records)
    previous_id = submitted[0].job_id.split('_')[0]
    if cluster == 'slurm':
      print(f'submitted {len(submitted)} jobs as array {previous_id} (logs in '
            f'{root / "slurm"}); rerun this command to see what is finished', file=out)
      tally.counts['submitted'] = tally.counts.get('submitted', 0) + len(submitted)
      continue
    for job, handle in zip(wave, submitted):
      tally.add(job, handle.result())
  return tally.counts


# ----------------------------------------------------------------------------------------- CLI


def default_root(config_spec: str, sweep: str) -> Path:
  path, _, arg = config_spec.partition(':')
  tag = ('-' + arg.replace('=', '').replace(',', '-')) if arg else ''
  return Path('sweeps') / f'{Path(path).stem}{tag}-{sweep}'


def record_sweep(root: Path, config_spec: str, sweep: Sweep, seeds: int, command: str) -> None:
  """`<root>/sweep.json`: what the folder holds. Another config or sweep there is refused."""
  path = root / 'sweep.json'
  spec = {'config': config_spec, 'sweep': sweep.name, 'doc': sweep.doc, 'seeds': seeds,
          'rows': [r.name for r in sweep.rows], 'x_label': sweep.x_label, 'command': command}
  if path.exists():
    old = json.loads(path.read_text())
    if (old.get('config'), old.get('sweep')) != (config_spec, sweep.name):
      raise SweepError(f'{root} holds sweep {old.get("sweep")!r} of {old.get("config")}; use '
                       'another --root')
    spec['seeds'] = max(seeds, old.get('seeds', 0))
  root.mkdir(parents=True, exist_ok=True)
  atomic_write_json(path, spec)


def _flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags
  f.DEFINE_string('config', None, 'Task config with presets, as for train.py: '
                  'configs/<task>.py[:key=value,...]. Its get_sweep(arg) defines the sweeps.')
  f.DEFINE_string('sweep', None, 'Name of the sweep in the config (an unknown name lists them).')
  f.DEFINE_multi_string('set', [], 'key=value: a config override for every job of the sweep '
                        '(e.g. --set=data.dir=DATA/wikitext-103); repeat for several.')
  f.DEFINE_integer('seeds', 3, 'Seeds per row: config.seed = 0 … seeds−1.', lower_bound=1)
  f.DEFINE_string('root', None, 'Folder of the sweep (one workdir per row and seed). Default: '
                  'sweeps/<config>-<presets>-<sweep>. Report: the folder to report on.')
  f.DEFINE_enum('launcher', 'local', ['local', 'slurm'], 'local: subprocesses on this machine; '
                'slurm: a submitit job array.')
  f.DEFINE_integer('parallel', 1, 'local: jobs at a time (1 on a TPU VM).', lower_bound=1)
  f.DEFINE_bool('dry_run', False, 'Print every job\'s commands and run nothing.')
  f.DEFINE_enum('slurm_cluster', 'slurm', ['slurm', 'local', 'debug'],
                'slurm: submit with sbatch; local / debug: submitit\'s executors on this machine '
                '(subprocesses / in this process), to try the SLURM path without a cluster.')
  f.DEFINE_string('slurm_partition', None, 'slurm: partition.')
  f.DEFINE_integer('slurm_gpus_per_node', 0, 'slurm: GPUs per job.')
  f.DEFINE_integer('slurm_cpus_per_task', 4, 'slurm: CPUs per job.')
  f.DEFINE_integer('slurm_mem_gb', 32, 'slurm: memory per job (GB).')
  f.DEFINE_integer('slurm_timeout_min', 24 * 60, 'slurm: time limit per job; a job that reaches '
                   'it saves, is requeued and resumes.')
  f.DEFINE_integer('slurm_array_parallelism', 16, 'slurm: jobs of the array running at once.')
  f.DEFINE_string('update_doc', None, 'report: also replace (or append) this sweep\'s block in a '
                  'Markdown file, e.g. docs/results.md, with its figures beside it.')
  return flags


def main(argv: Sequence[str]) -> int:
  from absl import flags  # pylint: disable=g-import-not-at-top
  FLAGS = flags.FLAGS
  action = argv[1] if len(argv) > 1 else 'run'
  if len(argv) > 2 or action not in ('run', 'report'):
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])} (actions: run (default), report)')
  try:
    if action == 'report':
      from training import sweep_report  # pylint: disable=g-import-not-at-top
      if not FLAGS.root:
        raise SweepError('report needs --root=<sweep folder>')
      root = Path(FLAGS.root)
      if not root.is_dir():
        raise SweepError(f'--root={root}: no such folder')
      try:
        report = sweep_report.write(root, Path(FLAGS.update_doc) if FLAGS.update_doc else None)
      except sweep_report.ReportError as e:
        raise SweepError(str(e)) from e
      print(json.dumps({'report': str(root / 'report.md'), 'rows': len(report['rows']),
                        'jobs': sum(len(r['seeds']) for r in report['rows']),
                        'primary_metric': report['primary_metric']}))
      return 0
    if not FLAGS.config or not FLAGS.sweep:
      raise SweepError('--config and --sweep are required (configs with sweeps: '
                       f'{", ".join(configs_with_sweeps()) or "none"})')
    sweep = with_common_overrides(FLAGS.config, load_sweep(FLAGS.config, FLAGS.sweep), FLAGS.set)
    check_overrides(FLAGS.config, sweep)
    root = Path(FLAGS.root) if FLAGS.root else default_root(FLAGS.config, FLAGS.sweep)
    jobs = make_jobs(FLAGS.config, sweep, FLAGS.seeds, root)
    stages(jobs)  # refuses rows that wait for each other
    check_recorded_jobs(jobs)
    check_launcher(FLAGS.launcher, FLAGS.parallel, FLAGS.slurm_cluster)
    if FLAGS.dry_run:
      for job in jobs:
        state = 'finished' if job.done else 'to run'
        print(f'# {job.row.name} seed{job.seed} ({state})')
        print(shell_line(job.train))
        for _, argv_ in job.evals:
          print(shell_line(argv_))
      return 0
    command = shlex.join(['python', '-m', 'training.sweep', *sys.argv[1:]])
    record_sweep(root, FLAGS.config, sweep, FLAGS.seeds, command)
    if FLAGS.launcher == 'local':
      counts = launch_local(jobs, FLAGS.parallel)
    else:
      parameters = {'timeout_min': FLAGS.slurm_timeout_min, 'name': f'sweep-{sweep.name}'}
      if FLAGS.slurm_cluster == 'slurm':
        parameters.update(
            slurm_partition=FLAGS.slurm_partition, slurm_gpus_per_node=FLAGS.slurm_gpus_per_node,
            slurm_cpus_per_task=FLAGS.slurm_cpus_per_task, slurm_mem_gb=FLAGS.slurm_mem_gb,
            slurm_array_parallelism=FLAGS.slurm_array_parallelism, slurm_signal_delay_s=180)
      counts = launch_slurm(jobs, root, cluster=FLAGS.slurm_cluster, parameters=parameters)
  except SweepError as e:
    cli.fail(str(e))
  print('sweep ' + json.dumps({'root': str(root), 'jobs': len(jobs), **counts}), flush=True)
  if counts.get('failed'):
    return 1
  if counts.get('stopped'):
    return 143
  return 0


def _parse(argv: list[str]) -> list[str]:
  """absl flags (one-line errors, training/cli.py) plus the optional action word."""
  words = [a for a in argv[1:] if not a.startswith('-')]
  cli.parse_flags([argv[0], *(a for a in argv[1:] if a.startswith('-'))])
  return [argv[0], *words]


def run_cli() -> None:
  from absl import app  # pylint: disable=g-import-not-at-top
  _flags()
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=_parse)


if __name__ == '__main__':
  # Through the importable module, so that SLURM tasks pickle as training.sweep.SlurmTask.
  from training import sweep as _sweep  # pylint: disable=g-import-not-at-top,import-self
  _sweep.run_cli()
