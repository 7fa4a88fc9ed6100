"""Evaluates a checkpoint of a training workdir and prints one JSON line.

Usage (language models):
  python eval.py --workdir=W [--checkpoint=best|last|STEP] [--split=valid|test]
                 [--context_window=N] [--batch_size=B] [--override=KEY=VALUE ...]
Usage (translation):
  python eval.py --workdir=W --split=test [--beam=5] [--lenpen=1.0 | --alpha=0.6]
                 [--max_len_a=A --max_len_b=B] [--average_last=N | --checkpoint=...]

Language models: perplexity for word-level data, bits per character for byte-level data,
accuracy for the synthetic task. Windows of the training sequence length are scored with
fairseq's `--context-window` semantics: each window starts with up to N tokens of context that
are not scored, and every token of the split is scored exactly once. The default N is the
config's `eval_context_window`. The line names the split, the metric, the token count, the
protocol and the checkpoint step; it is also written to W/eval/<split>-<step>-cw<N>.json.

Translation: every sentence of the split is decoded (beam search, or greedy with --beam=1) with
the config's `decode` settings unless overridden; --lenpen selects fairseq's length penalty
(score / len**lenpen), --alpha the GNMT one (score / ((5 + len) / 6)**alpha). --average_last=N
averages the parameters of the N most recent checkpoints (fairseq's average_checkpoints.py).
The hypotheses are written one per line to W/eval/<split>-<checkpoint>-<protocol>.hyp, and the
line holds the three BLEUs (tokenized as multi-bleu.perl, tokenized with compound splitting,
sacreBLEU with its signature; training/bleu.py), the split's loss, and the protocol.

Inference-time settings (`--override=KEY=VALUE`, repeatable; training/eval_overrides.py): one
checkpoint evaluated at several attention settings without retraining, e.g. SEA at another k:
  python eval.py --workdir=W --override=attention.sea.k=16 [--override=attention.impl=pallas]
Accepted keys (the settings that leave every parameter's shape and meaning alone):
attention.impl, attention.block_q, attention.block_k, attention.sea.k, attention.sea.inference,
attention.sea.query_chunk_size, attention.topk.k, attention.topk.query_chunk_size,
attention.performer.chunk_size. Any other key, a value of the wrong type or out of range, or a
key of a kind the model does not use is refused before anything is loaded. The overrides are set
on the workdir's config before the model is built, recorded in the line (`overrides`, {} when
none) and in the file names, as sorted `-<key without "attention.">=<value>` suffixes
(W/eval/valid-400-cw0-sea.k=16.json), so settings never overwrite one another; without
overrides the names are as above. Every evaluation's line also holds `peak_memory_bytes`: the
most device memory the process held at once (the allocator's peak), or null where the backend
does not report one (CPU).

Analysis (`--analysis=norms|alignment|collapse|maps`, the library in analysis/): one JSON line,
and under W/analysis/ the JSON, the arrays (.npz) and the pictures (.png) of
<analysis>-<split or text>-step<N>[<override suffix>]:
  norms      the norm-based analysis of every attention layer (Kobayashi et al. 2020,
             arXiv:2004.10102): weights vs ‖α f(x)‖ per token category, mixing ratios
             (Kobayashi et al. 2021, arXiv:2109.07152), Spearman correlations, maps of example 0
  alignment  translation only: word alignment from the cross-attention, AER per layer and head,
             weights vs norms, AWO vs AWI, against gold links (--gold_file, --source_file,
             --target_file; defaults: the synthetic task's own gold, or the RWTH de-en gold in
             ../shared/data/rwth-deen-alignment for a de→en model); alignments in Pharaoh form
  collapse   rank collapse and gradient norms per layer (and the LM's pure attention stack)
  maps       every layer × head map of one sentence (the first of --split, or --text)
--num_examples limits the sequences (sentences) used; --text analyses one text instead of a
split (translation: "source ||| target", as the model's tokenizer expects it). Nothing is
written until the analysis has finished, so a refused or failed run leaves W/analysis/ as it was.

Only the parameters of a checkpoint are read, after their files are checked against the
checksums saved with them; a damaged step is named with the newest earlier step whose
parameters are intact. Flags that do not apply to the workdir's task (--beam on a language
model, --context_window on a translation model) or are out of range are refused before anything
is loaded: one line on stderr, exit code 2. Progress goes to stderr: a bar on a terminal, a
plain line every 30 s otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags, logging

from training import cli, eval_overrides

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir (holds config.json and checkpoints/).',
                               required=True)
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best',
                                  'best (lowest validation loss), last, or a step number.')
_SPLIT = flags.DEFINE_enum('split', 'valid', ['valid', 'test'], 'Which split to score.')
_CONTEXT = flags.DEFINE_integer('context_window', None,
                                'Tokens of context before each scored window (fairseq '
                                '--context-window); default: the config\'s eval_context_window.')
_BATCH = flags.DEFINE_integer('batch_size', None, 'Windows per batch; default: the config\'s batch_size.')
_BEAM = flags.DEFINE_integer('beam', None, 'Translation: beam size (1 = greedy); default: '
                             'the config\'s decode.beam_size.')
_LENPEN = flags.DEFINE_float('lenpen', None, 'Translation: fairseq length penalty, '
                             'score / len**lenpen (fairseq --lenpen).')
_ALPHA = flags.DEFINE_float('alpha', None, 'Translation: GNMT length penalty, '
                            'score / ((5 + len) / 6)**alpha (Vaswani et al.: 0.6).')
_MAX_LEN_A = flags.DEFINE_float('max_len_a', None, 'Translation: output length ≤ max_len_a · '
                                'source length + max_len_b; default: the config\'s decode.')
_MAX_LEN_B = flags.DEFINE_integer('max_len_b', None, 'Translation: see --max_len_a.')
_AVERAGE = flags.DEFINE_integer('average_last', None, 'Translation and LM: average the '
                                'parameters of the N most recent checkpoints instead of '
                                'loading --checkpoint.')
_ANALYSIS = flags.DEFINE_string('analysis', '', 'Analyse instead of evaluating: norms, '
                                'alignment, collapse or maps (see the module docstring).')
_NUM_EXAMPLES = flags.DEFINE_integer('num_examples', None, 'Analysis: sequences or sentences '
                                     'to analyse (default: 16 for norms and collapse, every '
                                     'gold sentence for alignment, 1 for maps).')
_TEXT = flags.DEFINE_string('text', None, 'Analysis: one text to analyse instead of --split '
                            '(translation: "source ||| target").')
_GOLD = flags.DEFINE_string('gold_file', None, 'Alignment: gold links, 1-based i-j (sure) and '
                            'ipj (possible), one line per sentence.')
_SOURCE = flags.DEFINE_string('source_file', None, 'Alignment: the gold source sentences, '
                              'whitespace-tokenized words (BPE tokens for a BPE model).')
_TARGET = flags.DEFINE_string('target_file', None, 'Alignment: the gold target sentences.')
_OVERRIDE = flags.DEFINE_multi_string(
    'override', [], 'KEY=VALUE: an inference-time attention setting that replaces the '
    'workdir\'s (repeatable), e.g. --override=attention.sea.k=16; recorded in the JSON line and '
    'the file names. Accepted keys: ' + eval_overrides.accepted() + '.')


LM_FLAGS = ('context_window', 'batch_size')
ANALYSIS_FLAGS = ('analysis', 'num_examples', 'text', 'gold_file', 'source_file', 'target_file')
TRANSLATION_FLAGS = ('beam', 'lenpen', 'alpha', 'max_len_a', 'max_len_b')


def check_flags(config, given: dict) -> None:
  """Refuses flags that do not apply to the workdir's task or are out of range, before loading.

  `given` maps the flags set on the command line to their values.
  """
  task = config.get('task', 'lm')
  foreign = TRANSLATION_FLAGS if task == 'lm' else LM_FLAGS
  wrong = [f'--{name}' for name in foreign if name in given]
  if wrong:
    kind = 'a language-model' if task == 'lm' else 'a translation'
    raise ValueError(f'{" ".join(wrong)} do(es) not apply to {kind} workdir; its flags are '
                     + ', '.join(f'--{n}' for n in (LM_FLAGS if task == 'lm' else TRANSLATION_FLAGS)))
  if given.get('batch_size') is not None and given['batch_size'] <= 0:
    raise ValueError(f'--batch_size={given["batch_size"]}: expected a positive number of windows')
  cw = given.get('context_window')
  if cw is not None and not 0 <= cw < config.seq_len:
    raise ValueError(f'--context_window={cw}: expected 0 ≤ N < seq_len ({config.seq_len}), so '
                     'that each window scores at least one token')
  if given.get('beam') is not None and given['beam'] < 1:
    raise ValueError(f'--beam={given["beam"]}: expected a beam size ≥ 1 (1 = greedy)')
  if given.get('lenpen') is not None and given.get('alpha') is not None:
    raise ValueError('give --lenpen (fairseq: score / len**lenpen) or --alpha (GNMT: score / '
                     '((5 + len) / 6)**alpha), not both')
  for name in ('max_len_a', 'max_len_b'):
    if given.get(name) is not None and given[name] < 0:
      raise ValueError(f'--{name}={given[name]}: expected a value ≥ 0')
  analysis = given.get('analysis')
  if analysis:
    from analysis.report import ANALYSES  # pylint: disable=g-import-not-at-top
    if analysis not in ANALYSES:
      raise ValueError(f'--analysis={analysis!r} is not an analysis; known: {", ".join(ANALYSES)}')
    if analysis == 'alignment' and task == 'lm':
      raise ValueError('--analysis=alignment needs a translation workdir (it reads the '
                       'encoder–decoder attention); this workdir holds a language model')
    if analysis == 'alignment' and given.get('text') is not None:
      raise ValueError('--text does not apply to --analysis=alignment, which reads gold '
                       'sentences (--source_file, --target_file, --gold_file)')
    if given.get('num_examples') is not None and given['num_examples'] < 1:
      raise ValueError(f'--num_examples={given["num_examples"]}: expected at least 1')
  else:
    stray = [f'--{n}' for n in ANALYSIS_FLAGS if n in given and n != 'analysis']
    if stray:
      raise ValueError(f'{" ".join(stray)} only apply(ies) with --analysis=...')
  if analysis and given.get('average_last') is not None:
    raise ValueError('--average_last does not apply to --analysis; give --checkpoint')
  if given.get('average_last') is not None:
    if given['average_last'] < 1:
      raise ValueError(f'--average_last={given["average_last"]}: expected a positive number '
                       'of checkpoints')
    if 'checkpoint' in given:
      raise ValueError('give --average_last=N or --checkpoint, not both')


def _load(workdir: Path, checkpoint: str, average_last: int | None, *, config=None,
          data=None):
  """(config, data, graphdef, rest, params, mesh, label, steps) of a workdir's checkpoint(s).

  Only the parameters are read (and checked against their checksums): a damaged optimizer
  state never blocks an evaluation. `config`/`data` given are used instead of loading them.
  """
  from training import builders, checkpoints as ckpt_lib, distributed, workdir as wd

  config = config or wd.load_config(workdir)
  data = data or builders.build_data(config)
  wd.check_recorded(workdir, 'data', data.describe())  # refuse scoring other data
  graphdef, params, rest = builders.split_model(builders.build_model(config))
  mesh = distributed.data_mesh()
  ckpts = ckpt_lib.Checkpoints(workdir / 'checkpoints', keep=max(config.keep_checkpoints, 1),
                               read_only=True)
  target = builders.abstract_params(params, mesh)
  try:
    if average_last:
      chosen = ckpts.last_steps(average_last)
      params = ckpts.average_params(chosen, target)
      label = f'avg{average_last}'
    else:
      chosen = [ckpts.resolve(checkpoint)]
      params = ckpts.restore_params(chosen[0], target)
      label = checkpoint
  except ckpt_lib.DamagedCheckpointError as e:
    intact = ckpts.newest_intact(below=e.step, items=('params',))
    advice = (f'evaluate an earlier intact step with --checkpoint={intact}' if intact
              else 'no earlier step has intact parameters')
    if average_last:
      advice += ', or average fewer checkpoints with --average_last'
    raise ckpt_lib.CheckpointError(f'{e}; {advice}') from None
  finally:
    ckpts.close()
  print(f'read the parameters of step(s) {chosen} (checksums verified); the optimizer state '
        'was not read', file=sys.stderr, flush=True)
  return config, data, graphdef, rest, params, mesh, label, chosen


def run(workdir: Path, checkpoint: str, split: str, context_window: int | None,
        batch_size: int | None, average_last: int | None = None, *, config=None,
        overrides: dict | None = None) -> dict:
  """Scores a language model's checkpoint on `split`; the dict eval.py prints.

  `config` (default: the workdir's) carries `overrides` already applied
  (training/eval_overrides.py); they name the output file and are recorded in the dict.
  """
  import jax  # pylint: disable=g-import-not-at-top (keeps --help fast)
  from training import distributed, evaluate, steps
  from training.metric_log import json_safe

  overrides = overrides or {}
  config, data, graphdef, rest, params, mesh, label, chosen = _load(workdir, checkpoint,
                                                                     average_last, config=config)
  step = chosen[-1]
  cw = config.eval_context_window if context_window is None else context_window
  bs = batch_size or config.batch_size
  if bs < mesh.size:
    raise ValueError(f'--batch_size={bs} must be at least the number of devices ({mesh.size})')
  bs -= bs % mesh.size  # whole rows per device
  eval_step = jax.jit(steps.make_eval_step(graphdef, rest, with_accuracy=data.metric == 'accuracy'))
  batches = distributed.OwnRows(  # every process its rows of each global batch
      data.eval_batches(split, batch_size=bs, seq_len=config.seq_len, context_window=cw))
  out = evaluate.evaluate(eval_step, params, batches, mesh, metric=data.metric,
                          progress=True, desc=f'eval {split}')
  result = {'split': split, 'metric': data.metric, 'value': out.get(data.metric, out['loss']),
            **out, 'checkpoint': label, 'step': step, 'steps': chosen,
            'protocol': {'seq_len': config.seq_len, 'context_window': cw,
                         'stride': config.seq_len - cw, 'data': config.data.name},
            'overrides': overrides, 'peak_memory_bytes': evaluate.peak_memory_bytes()}
  result = json_safe(result)
  out_dir = workdir / 'eval'
  out_dir.mkdir(exist_ok=True)
  name = f'{split}-{label if average_last else step}-cw{cw}{eval_overrides.file_tag(overrides)}'
  (out_dir / f'{name}.json').write_text(json.dumps(result, indent=2, allow_nan=False) + '\n')
  return result


def run_translation(workdir: Path, checkpoint: str, split: str, *, beam: int | None = None,
                    lenpen: float | None = None, alpha: float | None = None,
                    max_len_a: float | None = None, max_len_b: int | None = None,
                    average_last: int | None = None, config=None,
                    overrides: dict | None = None) -> dict:
  """Translates `split` with a translation checkpoint and scores it; the dict eval.py prints.

  `config` and `overrides` as in `run`.
  """
  import jax  # pylint: disable=g-import-not-at-top (keeps --help fast)
  from training import evaluate, steps, translate
  from training.metric_log import json_safe

  overrides = overrides or {}
  config, data, graphdef, rest, params, mesh, label, chosen = _load(workdir, checkpoint,
                                                                     average_last, config=config)
  settings = translate.DecodeSettings.from_config(config.decode, beam_size=beam, lenpen=lenpen,
                                                  alpha=alpha, max_len_a=max_len_a,
                                                  max_len_b=max_len_b)
  translator = translate.Translator(graphdef, rest, data, settings,
                                    max_positions=config.model.max_len, mesh=mesh)
  progress = True  # a bar on a terminal, plain lines in a log (training/progress.py)
  hypotheses = translator.translate(params, split, progress=progress)
  scores = translator.score(hypotheses, split)
  eval_step = jax.jit(steps.make_eval_step(graphdef, rest, with_accuracy=False))
  batches = data.eval_batches(split, **translate.eval_batching(config.data.max_tokens))
  loss = evaluate.evaluate(eval_step, params, batches, mesh, metric='perplexity',
                           progress=progress, desc=f'loss {split}')
  protocol = settings.describe()
  tag = (f'{split}-{label}-beam{settings.beam_size}-{settings.length_penalty.kind}'
         f'{settings.length_penalty.value:g}-a{settings.max_len_a:g}-b{settings.max_len_b}'
         f'{eval_overrides.file_tag(overrides)}')
  out_dir = workdir / 'eval'
  out_dir.mkdir(exist_ok=True)
  hyp_path = out_dir / f'{tag}.hyp'
  hyp_path.write_text(''.join(h + '\n' for h in hypotheses), encoding='utf-8')
  result = {'split': split, 'metric': 'bleu', 'value': scores['bleu'], **scores,
            'sentences': len(hypotheses), 'loss': loss['loss'],
            'perplexity': loss['perplexity'], 'hypotheses': str(hyp_path),
            'checkpoint': label, 'steps': chosen,
            'protocol': {**protocol, 'direction': f'{data.src_lang}-{data.tgt_lang}',
                         'text_level': data.text_level, 'data': config.data.name},
            'overrides': overrides, 'peak_memory_bytes': evaluate.peak_memory_bytes()}
  result = json_safe(result)
  (out_dir / f'{tag}.json').write_text(json.dumps(result, indent=2, allow_nan=False) + '\n')
  return result


def run_analysis(workdir: Path, analysis: str, checkpoint: str, split: str, *,
                 num_examples: int | None = None, text: str | None = None,
                 gold_file: str | None = None, source_file: str | None = None,
                 target_file: str | None = None, config=None,
                 overrides: dict | None = None) -> dict:
  """Runs one analysis (analysis/report.py) on a checkpoint; the dict eval.py prints.

  `config` and `overrides` as in `run`.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top (keeps --help fast)
  from analysis import inputs as inputs_lib, report
  from training import builders, workdir as wd
  from training.metric_log import json_safe

  overrides = overrides or {}
  config = config or wd.load_config(workdir)
  if 'dagpam' in eval_overrides.attention_kinds(config):
    config.attention.dagpam.sow_branches = True  # P⁺, P⁻ for the branch decomposition
  translation = config.get('task', 'lm') == 'translation'
  gold = None
  if analysis == 'alignment':
    gold = inputs_lib.read_gold(config, split, gold_file=gold_file, source_file=source_file,
                                target_file=target_file)   # checked before anything is loaded
  data = builders.build_data(config)
  info = inputs_lib.token_info(data, translation)
  if gold is not None:
    gold = inputs_lib.segment_gold(data, gold)
  if text is not None:
    batches = [inputs_lib.text_batch(data, config, text, translation)]
  else:
    count = num_examples or (1 if analysis == 'maps' else 16)
    batches = None if analysis == 'alignment' else inputs_lib.split_batches(
        data, config, split, count, translation)
  _, data, graphdef, rest, params, _, _, chosen = _load(workdir, checkpoint, None,
                                                        config=config, data=data)
  model = nnx.merge(graphdef, params, rest)
  step = chosen[-1]
  name = (report.output_name(analysis, 'text' if text is not None else split, step)
          + eval_overrides.file_tag(overrides))
  meta = {'checkpoint': checkpoint, 'step': step, 'split': None if text else split,
          'text': text, 'data': config.data.name, 'overrides': overrides}
  if analysis == 'norms':
    out = report.norms(model, batches, info, name=name, meta=meta)
  elif analysis == 'maps':
    out = report.maps(model, batches[0], info, name=name, meta=meta)
  elif analysis == 'collapse':
    out = report.collapse(model, batches, name=name, meta=meta)
  else:
    out = inputs_lib.alignment_output(model, data, gold, name=name, meta=meta,
                                      limit=num_examples)
  out.summary = json_safe(out.summary)
  files = report.write(out, workdir / 'analysis')
  return {**out.summary, 'files': files}


def main(argv):
  del argv  # cli.parse_flags refuses stray arguments
  if not flags.FLAGS['verbosity'].present:  # Orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  from training import workdir as wd  # pylint: disable=g-import-not-at-top
  workdir = Path(_WORKDIR.value)
  given = {name: flags.FLAGS[name].value for name in
           LM_FLAGS + TRANSLATION_FLAGS + ANALYSIS_FLAGS + ('average_last', 'checkpoint')
           if flags.FLAGS[name].present}
  with cli.user_errors():
    config = wd.load_config(workdir)
    check_flags(config, given)
    overrides = eval_overrides.parse(_OVERRIDE.value, config)
    eval_overrides.apply(config, overrides)
    eval_overrides.check_model(config, overrides)  # out-of-range values, before any loading
    if _ANALYSIS.value:
      result = run_analysis(workdir, _ANALYSIS.value, _CHECKPOINT.value, _SPLIT.value,
                            num_examples=_NUM_EXAMPLES.value, text=_TEXT.value,
                            gold_file=_GOLD.value, source_file=_SOURCE.value,
                            target_file=_TARGET.value, config=config, overrides=overrides)
    elif config.get('task', 'lm') == 'translation':
      result = run_translation(workdir, _CHECKPOINT.value, _SPLIT.value, beam=_BEAM.value,
                               lenpen=_LENPEN.value, alpha=_ALPHA.value,
                               max_len_a=_MAX_LEN_A.value, max_len_b=_MAX_LEN_B.value,
                               average_last=_AVERAGE.value, config=config,
                               overrides=overrides)
    else:
      result = run(workdir, _CHECKPOINT.value, _SPLIT.value, _CONTEXT.value, _BATCH.value,
                   average_last=_AVERAGE.value, config=config, overrides=overrides)
  print(json.dumps(result, allow_nan=False), flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
