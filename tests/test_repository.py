"""The repository stands alone: every repository path that code, configs and docs cite exists.

A path is cited when it starts with one of the project's top-level folders (`attention/`,
`configs/`, `docs/`, …) and is not part of a longer path (`../x/data/…`, `W/…` are not ours).
Placeholders (`configs/<task>.py`, `W/eval/*.json`, `{train,valid}.txt`) are cut before the
placeholder and the folder before them must exist. Notes kept outside the repository may not be
cited at all.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ('attention', 'benchmarks', 'configs', 'data', 'docs', 'models', 'tests', 'training',
           '.ci')
_PATH = re.compile(r'(?<![\w./~-])((?:%s)/[\w./<>{}*,-]*)' % '|'.join(map(re.escape, FOLDERS)))
_OUTSIDE_NOTES = re.compile(r'references/\w+\.md|anchors\.md|shared/docs')


def _tracked_text_files() -> list[Path]:
  out = subprocess.run(['git', 'ls-files'], cwd=REPO, capture_output=True, text=True,
                       check=True).stdout.split()
  files = [REPO / f for f in out if f.endswith(('.py', '.md', '.ini', '.txt')) or f == '.ci/run']
  return [f for f in files if f.exists()]


def cited_paths(text: str) -> list[str]:
  """Repository paths in `text`, cut before any placeholder and trailing punctuation."""
  out = []
  for match in _PATH.finditer(text):
    path, *cut = re.split(r'[<{*]', match.group(1))
    if cut and not path.endswith('/'):
      path = path.rsplit('/', 1)[0] + '/'  # `decode-<platform>.json`: its folder must exist
    path = path.rstrip('.,:;)-')
    if path.count('/') >= 1 and not path.endswith('/'):
      out.append(path)
    elif path.endswith('/') and len(path) > 1:
      out.append(path.rstrip('/'))
  return out


def test_the_path_finder_sees_what_it_should():
  text = ('see attention/softmax.py, `docs/results.md`; configs/<task>.py and W/eval/x.json, '
          '../shared/data/wikitext-2 and data/tfds_builders/ (and data/{a,b}.txt), '
          'benchmarks/results/decode-<platform>.json.')
  assert cited_paths(text) == ['attention/softmax.py', 'docs/results.md', 'configs',
                               'data/tfds_builders', 'data', 'benchmarks/results']


def test_every_cited_repository_path_exists():
  missing = []
  for f in _tracked_text_files():
    for n, line in enumerate(f.read_text(encoding='utf-8', errors='replace').splitlines(), 1):
      for path in cited_paths(line):
        if not (REPO / path).exists():
          missing.append(f'{f.relative_to(REPO)}:{n}: {path}')
  assert not missing, 'cited paths that are not in the repository:\n' + '\n'.join(missing)


def test_no_notes_from_outside_the_repository_are_cited():
  cited = []
  for f in _tracked_text_files():
    if f == Path(__file__).resolve():
      continue
    for n, line in enumerate(f.read_text(encoding='utf-8', errors='replace').splitlines(), 1):
      if _OUTSIDE_NOTES.search(line):
        cited.append(f'{f.relative_to(REPO)}:{n}: {line.strip()}')
  assert not cited, 'citations of notes outside the repository:\n' + '\n'.join(cited)
