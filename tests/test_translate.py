"""Translation end to end: train.py and eval.py on a small parallel corpus, as a user runs them.

Properties:
- a run stopped after a checkpoint and rerun ends with parameters bitwise equal to an
  uninterrupted run's (the token-count batch iterator resumes mid-epoch);
- eval.py translates every test sentence, writes one hypothesis per line in the test file's
  order, and prints one JSON line with the three BLEUs, the sacreBLEU signature and the protocol;
- `--average_last=N` scores the element-wise mean of the N most recent checkpoints;
- the hypotheses do not depend on how sentences are batched (ids put them back in order);
- bad input (misaligned files, contradictory length penalties) exits 2 with a message.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_train import flatten_params, read_params, run

WORDS_DE = 'ich du er sie es wir ihr haus baum katze hund sieht mag hat ein eine der die das'.split()
WORDS_EN = 'i you he she it we they house tree cat dog sees likes has a an the the the'.split()


def _write_corpus(directory: Path, n_train=120, n_valid=12, n_test=9, seed=0) -> None:
  """A word-for-word 'translation' task, BPE-free, with lines of 2–9 words."""
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True, exist_ok=True)
  for split, n in (('train', n_train), ('valid', n_valid), ('test', n_test)):
    de, en = [], []
    for _ in range(n):
      idx = rng.integers(0, len(WORDS_DE), size=rng.integers(2, 10))
      de.append(' '.join(WORDS_DE[i] for i in idx))
      en.append(' '.join(WORDS_EN[i] for i in idx))
    (directory / f'{split}.de').write_text('\n'.join(de) + '\n')
    (directory / f'{split}.en').write_text('\n'.join(en) + '\n')


def _args(data_dir: Path, steps: int = 12) -> list[str]:
  return ['--config=configs/iwslt14.py:size=tiny', f'--config.data.dir={data_dir}',
          '--config.model.d_model=32', '--config.model.d_ff=64', '--config.model.max_len=64',
          '--config.data.max_tokens=256', f'--config.train_steps={steps}',
          '--config.log_every=3', '--config.eval_every=6', '--config.checkpoint_every=3',
          '--config.keep_checkpoints=5', '--config.decode.valid_sentences=4',
          '--config.progress_bar=false', '--config.model.dropout=0.1']


@pytest.fixture(scope='module')
def corpus(tmp_path_factory) -> Path:
  d = tmp_path_factory.mktemp('corpus')
  _write_corpus(d)
  return d


@pytest.fixture(scope='module')
def trained(tmp_path_factory, corpus) -> Path:
  workdir = tmp_path_factory.mktemp('run')
  run('train.py', *_args(corpus), f'--workdir={workdir}')
  return workdir


def test_stopped_run_resumes_bitwise(trained, corpus, tmp_path):
  workdir = tmp_path / 'resumed'
  run('train.py', *_args(corpus, steps=6), f'--workdir={workdir}')
  run('train.py', *_args(corpus, steps=12), f'--workdir={workdir}')
  a, b = read_params(trained, 12), read_params(workdir, 12)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  valid = [r for r in rows if r.get('split') == 'valid']
  assert valid and all('bleu' in r and 'sacrebleu' in r for r in valid)


def test_eval_translates_every_sentence_in_order(trained, corpus):
  proc = run('eval.py', f'--workdir={trained}', '--split=test', '--beam=3', '--lenpen=1.0',
             '--max_len_a=1.2', '--max_len_b=5', '--checkpoint=last')
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1
  result = json.loads(lines[0])
  for key in ('bleu', 'bleu_compound_split', 'sacrebleu', 'sacrebleu_signature', 'loss'):
    assert key in result
  assert 'tok:13a' in result['sacrebleu_signature']
  assert result['sentences'] == 9
  assert result['protocol']['beam'] == 3 and result['protocol']['length_penalty'] == 'fairseq'
  hyps = Path(result['hypotheses']).read_text().split('\n')
  assert hyps[-1] == '' and len(hyps) == 10   # one line per test sentence
  for h in hyps[:-1]:
    assert all(w in WORDS_EN for w in h.split()), h


def test_average_last_is_the_mean_of_the_checkpoints(trained, tmp_path):
  from training import builders, checkpoints as ckpt_lib, workdir as wd
  config = wd.load_config(trained)
  model = builders.build_model(config)
  _, params, _ = builders.split_model(model)
  from training import distributed
  ckpts = ckpt_lib.Checkpoints(trained / 'checkpoints', keep=5, read_only=True)
  chosen = ckpts.last_steps(3)
  assert chosen == [6, 9, 12]
  avg = ckpts.average_params(chosen, builders.abstract_params(params, distributed.data_mesh()))
  flat = flatten_params(avg)
  saved = [read_params(trained, s) for s in chosen]
  for k, v in flat.items():
    expected = np.mean([np.asarray(p[k], np.float64) for p in saved], axis=0)
    np.testing.assert_allclose(v, expected, rtol=1e-6, atol=1e-7, err_msg=k)
  with pytest.raises(ckpt_lib.CheckpointError, match=r'holds 4 checkpoint\(s\) \[3, 6, 9, 12\]'):
    ckpts.last_steps(5)
  proc = run('eval.py', f'--workdir={trained}', '--split=valid', '--beam=1',
             '--average_last=3')
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result['checkpoint'] == 'avg3' and result['steps'] == [6, 9, 12]


def test_hypotheses_do_not_depend_on_batching(trained):
  from training import builders, checkpoints as ckpt_lib, distributed, translate
  from training import workdir as wd
  config = wd.load_config(trained)
  data = builders.build_data(config)
  graphdef, params, rest = builders.split_model(builders.build_model(config))
  mesh = distributed.data_mesh()
  ckpts = ckpt_lib.Checkpoints(trained / 'checkpoints', keep=5, read_only=True)
  params = ckpts.restore_params(12, builders.abstract_params(params, mesh))
  outs = []
  for max_tokens in (16, 4096):   # one sentence per batch vs. all in one
    settings = translate.DecodeSettings(beam_size=2, max_len_a=1.0, max_len_b=3,
                                        max_tokens=max_tokens)
    translator = translate.Translator(graphdef, rest, data, settings,
                                      max_positions=config.model.max_len, mesh=mesh)
    outs.append(translator.translate(params, 'test'))
  assert outs[0] == outs[1]
  assert len(outs[0]) == data.num_examples('test') == 9


def test_both_length_penalties_is_an_error(trained):
  proc = run('eval.py', f'--workdir={trained}', '--split=test', '--lenpen=1', '--alpha=0.6',
             check=False)
  assert proc.returncode == 2
  assert '--lenpen' in proc.stderr and '--alpha' in proc.stderr


def test_misaligned_files_are_refused(tmp_path):
  d = tmp_path / 'bad'
  _write_corpus(d)
  lines = (d / 'train.en').read_text().splitlines()
  (d / 'train.en').write_text('\n'.join(lines[:-1]) + '\n')
  workdir = tmp_path / 'w'
  proc = run('train.py', *_args(d), f'--workdir={workdir}', check=False)
  assert proc.returncode == 2
  assert 'train.de' in proc.stderr and 'train.en' in proc.stderr
  assert '120' in proc.stderr and '119' in proc.stderr
  assert not (workdir / 'checkpoints').exists()
