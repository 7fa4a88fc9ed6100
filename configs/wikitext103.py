"""Word-level language modelling on WikiText-103 (or WikiText-2, with the same loader).

    python train.py --config=configs/wikitext103.py:size=paper --config.data.dir=DATA/wikitext-103
    python train.py --config=configs/wikitext103.py:size=tiny \\
        --config.data.dir=../shared/data/wikitext-2 --workdir=runs/wt2-tiny
    python eval.py --workdir=runs/wt2-tiny --split=test

`data.dir` holds `wiki.{train,valid,test}.tokens` (the official `wikitext-103-v1.zip` from the
Salesforce research release) or `train.txt/valid.txt/test.txt`. fairseq semantics: every line
ends with `</s>`, vocabulary from train sorted by frequency; the WikiText-103 test set is 245,569
tokens. Presets: `size=tiny|small|paper`, `attention=<kind>`, `steps=<N>`.

size=paper mirrors Baevski & Auli (ICLR 2019, "Adaptive Input Representations for Neural
Language Modeling", arXiv:1809.10853), fairseq `transformer_lm_wiki103`, which reached
**18.7 test perplexity** (17.97 valid) with 247M parameters, evaluated with
`--context-window 2560` on 3072-token blocks:
  16 pre-LN decoder layers (no final norm), d_model 1024, FFN 4096, 8 heads, ReLU, sinusoidal
  positions; dropout 0.3, attention dropout 0.1, activation dropout 0.1; adaptive input and
  adaptive softmax, cutoffs 20000,60000, factor 4, tied weights and projections, adaptive-softmax
  dropout 0.2; NAG (momentum 0.99), lr 1.0, linear warmup from 1e-7 over 16k updates, one
  cosine period of 270k updates down to 1e-4, 286k updates, gradient clipping 0.1; 3072-token
  blocks with no document breaks, 24 blocks (≈74k tokens) per update: fairseq's max-tokens 3072 ×
  update-freq 3 × 8 GPUs, here batch_size 24 with grad_accum_steps 3.
size=small: 4 layers × 256 (FFN 1024, 4 heads), 256-token blocks, Adam with inverse-sqrt decay:
  a CPU-sized model for comparisons on WikiText-2.
size=tiny: 2 layers × 128: a smoke test of the whole path. Measured on 2 CPU cores (no
  accelerator) on WikiText-2: about 80 s per 100 updates (median of the logged windows); the
  whole 300-update run took 4m52s including tokenization and validation.

Sweeps (`python -m training.sweep --config=configs/wikitext103.py:size=... --sweep=NAME`):
  dagpam  softmax, softmax with as many parameters as daGPAM (wider FFN), daGPAM with fixed
          and with trainable λ, DIFF. At size=paper the rows use 8 layers, the depth of the
          daGPAM paper's reported WikiText-103 result (Heo & Choi 2024, arXiv:2410.15578):
          **25.96 → 25.33 test perplexity** (softmax → daGPAM, 8 layers); its average gain
          on WikiText-103 is about −0.5 perplexity. No seeds or variances are reported.
  lambda  daGPAM over a fixed (λ⁺, λ⁻) grid.
  gpam_alternatives  softmax, daGPAM (trainable λ), NON, NAP and CoDA: the set of the daGPAM
          paper's Table 1, which it ran on PTB (108.26 → 106.38 perplexity, softmax → daGPAM;
          the alternatives "suffer severe degradation"; their numbers were not recovered).
  sea     a softmax teacher, SEA distilled from it, Performer and top-k at the same k, and the
          SEA checkpoint evaluated at several k without retraining (perplexity and memory
          against k).
"""

from configs import common
from configs import sweeps as sweeps_lib
import data


def get_config(arg: str | None = None):
  args = common.parse_arg(arg, size='small', attention='', steps=0)
  c = common.base_config()
  c.data = data.lm_data_config('wikitext')
  m, o = c.model, c.optimizer
  if args.size == 'paper':
    m.num_layers, m.d_model, m.num_heads, m.d_ff = 16, 1024, 8, 4096
    m.dropout, m.activation_dropout = 0.3, 0.1
    c.attention.dropout = 0.1
    m.pre_norm, m.final_norm, m.positions, m.activation = True, False, 'sinusoidal', 'relu'
    m.adaptive_input = m.adaptive_softmax = True
    m.adaptive_cutoffs, m.adaptive_factor, m.adaptive_softmax_dropout = (20000, 60000), 4.0, 0.2
    m.tie_embeddings = True
    m.max_len = 3072
    o.name, o.learning_rate, o.momentum = 'nag', 1.0, 0.99
    o.schedule, o.warmup_steps, o.warmup_init_lr, o.min_lr = 'cosine', 16000, 1e-7, 1e-4
    o.grad_clip_norm, o.grad_accum_steps = 0.1, 3
    c.seq_len, c.batch_size, c.train_steps = 3072, 24, 286000
    c.eval_context_window = 2560
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_batches = 100, 2000, 2000, -1
  elif args.size == 'small':
    m.num_layers, m.d_model, m.num_heads, m.d_ff = 4, 256, 4, 1024
    m.dropout = 0.1
    m.max_len = 256
    o.name, o.learning_rate, o.b1, o.b2, o.weight_decay = 'adamw', 1e-3, 0.9, 0.98, 0.01
    o.schedule, o.warmup_steps, o.grad_clip_norm = 'inverse_sqrt', 500, 1.0
    c.seq_len, c.batch_size, c.train_steps = 256, 16, 4000
    c.eval_context_window = 128
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_batches = 50, 500, 500, 50
  elif args.size == 'tiny':
    m.num_layers, m.d_model, m.num_heads, m.d_ff = 2, 128, 2, 256
    m.max_len = 128
    o.name, o.learning_rate, o.schedule, o.warmup_steps = 'adamw', 2e-3, 'inverse_sqrt', 50
    o.grad_clip_norm = 1.0
    c.seq_len, c.batch_size, c.train_steps = 128, 16, 300
    c.eval_context_window = 64
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_batches = 25, 100, 100, 20
  else:
    raise ValueError(f'size={args.size!r}: expected tiny, small or paper')
  common.apply_common_args(c, args)
  return c


DAGPAM_DOC = ('daGPAM comparison on WikiText-103 (reported, 8 layers: 25.96 → 25.33 test perplexity; '
              'average gain about −0.5 perplexity; one run each, no variances).')



def get_sweep(arg: str | None = None):
  """The papers' comparisons on this task (module docstring); `arg` as for `get_config`."""
  config = get_config(arg)
  depth = {'model.num_layers': 8} if 'size=paper' in (arg or '') else {}
  return {
      **sweeps_lib.dagpam_sweeps(config, DAGPAM_DOC, common=depth),
      'sea': _sea_sweep(config),
      'gpam_alternatives': {
          'doc': 'The attention variants of the daGPAM paper\'s Table 1 (PTB there: softmax '
                 '108.26 → daGPAM with trainable λ 106.38 perplexity; NON, NAP and CoDA degrade, '
                 'numbers not recovered).', 'evals': sweeps_lib.TEST,
          'rows': [dict(r, **depth) for r in sweeps_lib.gpam_alternatives_rows()]},
  }


def _sea_sweep(config) -> dict:
  length = config.seq_len
  k = max(8, length // 8)
  rows, evals = sweeps_lib.sea_rows(k=k, predictor_length=min(config.attention.sea.predictor_length,
                                                             length))
  return {'doc': 'SEA (Lee et al. 2024, arXiv:2310.01777) distilled from a softmax teacher of '
                 'the same seed, against Performer and top-k keeping the same k keys per '
                 'query; the SEA checkpoint is evaluated at several k without retraining.',
          'rows': rows, 'evals': evals, 'x_label': 'attention.sea.k at evaluation'}
