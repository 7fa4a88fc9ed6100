"""Byte-level language modelling on enwik8; the metric is bits per character (BPC).

    python train.py --config=configs/enwik8.py:size=paper --config.data.dir=DATA/enwik8
    python eval.py --workdir=W --split=test

`data.dir` holds the official 100,000,000-byte `enwik8` (or Matt Mahoney's `enwik8.zip`), split
90M/5M/5M by byte offset as Transformer-XL's `prep_enwik8.py` does, or separate
`train.txt/valid.txt/test.txt` byte files for smaller corpora. Presets:
`size=tiny|cpu|small|paper`, `attention=<kind>`, `steps=<N>`.

size=paper mirrors the 12-layer Transformer-XL recipe (Dai et al. 2019, "Transformer-XL:
Attentive Language Models Beyond a Fixed-Length Context", arXiv:1901.02860; the authors'
`run_enwik8_base.sh`), which reached **1.06 test BPC with 41M parameters**: 12 layers,
d_model 512, 8 heads × 64, FFN 2048, dropout 0.1, attention dropout 0; Adam lr 2.5e-4, no
warmup, cosine decay to 0 over 400k steps, gradient clipping 0.25; 512-byte segments, batch 22.
That 1.06 relies on Transformer-XL's recurrent memory and relative positions, which this
fixed-context LM does not have: the fair reference for it is the 12-layer vanilla character
Transformer of Al-Rfou et al. 2018 ("Character-Level Language Modeling with Deeper
Self-Attention", arXiv:1808.04444), **1.11 BPC with 44M parameters** (fixed 512-byte context,
with auxiliary losses we do not use). Evaluation here slides 512-byte windows scoring the last
64 bytes of each (`eval_context_window` 448).
size=small: 4 layers × 256, 256-byte segments. size=tiny: 2 layers × 128, a smoke test.
size=cpu: 2 layers × 64 (2 heads, FFN 256), 128-byte segments, batch 32, 1,250 updates: 5.12M
bytes per run, the model of the CPU byte-level comparison (`--sweep=kinds`, evaluated on
non-overlapping 128-byte windows, context window 0).

Sweeps (`python -m training.sweep --config=configs/enwik8.py:size=... --sweep=NAME`):
  dagpam  softmax, parameter-matched softmax, daGPAM (fixed and trainable λ), DIFF. The daGPAM
          paper (Heo & Choi 2024, arXiv:2410.15578) reports an average gain of about
          **−0.0055 BPC** on enwik8 (absolute numbers not recovered; one run each).
  lambda  daGPAM over a fixed (λ⁺, λ⁻) grid.
  kinds   every kind on the same model and token budget; the CPU byte-level comparison is
          `--config=configs/enwik8.py:size=cpu --sweep=kinds --set=data.dir=WIKITEXT2` (its
          train.txt/valid.txt/test.txt read as bytes, an enwik8 stand-in).
"""

from configs import common
from configs import sweeps as sweeps_lib
import data


def get_config(arg: str | None = None):
  args = common.parse_arg(arg, size='small', attention='', steps=0)
  c = common.base_config()
  c.data = data.lm_data_config('enwik8')
  m, o = c.model, c.optimizer
  m.tie_embeddings, m.positions = True, 'sinusoidal'
  if args.size == 'paper':
    m.num_layers, m.d_model, m.num_heads, m.d_ff = 12, 512, 8, 2048
    m.dropout = 0.1
    m.max_len = 512
    o.name, o.learning_rate, o.b1, o.b2 = 'adam', 2.5e-4, 0.9, 0.999
    o.schedule, o.warmup_steps, o.min_lr, o.grad_clip_norm = 'cosine', 0, 0.0, 0.25
    c.seq_len, c.batch_size, c.train_steps = 512, 22, 400000
    c.eval_context_window = 448
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_batches = 200, 4000, 4000, 200
  elif args.size == 'small':
    m.num_layers, m.d_model, m.num_heads, m.d_ff = 4, 256, 4, 1024
    m.dropout = 0.1
    m.max_len = 256
    o.name, o.learning_rate, o.schedule, o.warmup_steps = 'adam', 1e-3, 'cosine', 200
    o.grad_clip_norm = 0.25
    c.seq_len, c.batch_size, c.train_steps = 256, 16, 4000
    c.eval_context_window = 192
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_batches = 50, 500, 500, 50
  elif args.size == 'tiny':
    m.num_layers, m.d_model, m.num_heads, m.d_ff = 2, 128, 2, 256
    m.max_len = 128
    o.name, o.learning_rate, o.schedule, o.warmup_steps = 'adam', 2e-3, 'cosine', 20
    c.seq_len, c.batch_size, c.train_steps = 128, 16, 200
    c.eval_context_window = 64
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_batches = 25, 100, 100, 20
  elif args.size == 'cpu':
    m.num_layers, m.d_model, m.num_heads, m.d_ff = 2, 64, 2, 256
    m.max_len = 128
    o.name, o.learning_rate, o.schedule, o.warmup_steps = 'adam', 2e-3, 'cosine', 50
    o.grad_clip_norm = 1.0
    c.seq_len, c.batch_size, c.train_steps = 128, 32, 1250    # 5.12M bytes seen
    c.eval_context_window = 0
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_batches = 50, 250, 250, 20
  else:
    raise ValueError(f'size={args.size!r}: expected tiny, cpu, small or paper')
  common.apply_common_args(c, args)
  return c


DAGPAM_DOC = ('daGPAM comparison on enwik8 (reported: an average gain of about −0.0055 BPC; one run '
              'each, no variances).')



def get_sweep(arg: str | None = None):
  """The papers' comparisons on this task (module docstring); `arg` as for `get_config`."""
  return {**sweeps_lib.dagpam_sweeps(get_config(arg), DAGPAM_DOC), 'kinds': _kinds_sweep()}


def _kinds_sweep() -> dict:
  rows = [{'name': kind, 'attention.kind': kind, **options}
          for kind, options in (('softmax', {}), ('dagpam', {}), ('diff', {}),
                                ('performer', {}),
                                ('topk', {'attention.topk.k': 32}),
                                ('sea', {'attention.sea.distill': False,
                                         'attention.sea.predictor_length': 64,
                                         'attention.sea.k': 32}),
                                ('non', {}), ('nap', {}), ('coda', {}))]
  return {'doc': 'Every kind on one model and token budget, byte-level; BPC on the test split.',
          'rows': rows, 'evals': sweeps_lib.TEST}
