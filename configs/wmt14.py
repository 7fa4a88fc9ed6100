"""WMT14 English→German with the Transformer base recipe (Vaswani et al. 2017).

    python train.py --config=configs/wmt14.py:size=paper --config.data.source=tfds
    python eval.py --workdir=W --split=test --beam=4 --alpha=0.6 --average_last=5
    python train.py --config=configs/wmt14.py:size=small --workdir=runs/wmt-small

Data: TFDS `wmt14_translate/de-en` (4.5M pairs; validation newstest2013, test newstest2014),
read en→de, with one joint sentencepiece vocabulary (BPE, 32k; `data.vocab`, `data.spm_*`)
trained on the training text; embeddings shared three ways (`share_all_embeddings`). With
`data.source=files` (the default) the loader reads plain parallel text from `data.dir`; the
default is the offline set in `../shared/data/wmt14-en-de`: newstest2008–2012 plus a 10k-pair
sample of the training data for training, newstest2013 for validation and the full 3,003-line
newstest2014 for test.
Presets: `size=tiny|small|paper`, `attention=<kind>`, `steps=<N>`.

size=paper mirrors Transformer base ("Attention Is All You Need", arXiv:1706.03762): 6+6
post-LN layers, d_model 512, FFN 2048, 8 heads, dropout 0.1, label smoothing 0.1; Adam (0.9,
0.98, ε 1e-9) with lr = 512^-0.5 · min(step^-0.5, step · 4000^-1.5), i.e. inverse-sqrt with peak
7.0e-4 after 4000 warmup updates; ≈25k source + 25k target tokens per update (here 4096
tokens per device × 6 accumulated micro-batches on one device; with 8 devices set
optimizer.grad_accum_steps=1 for ≈33k); 100k updates; average of the last 5 checkpoints;
beam 4, GNMT length penalty α = 0.6, output length ≤ input + 50. Reported: **27.3 BLEU**
(tokenized, compound-split); fairseq's reproduction without averaging lands near 26.6; report
sacreBLEU too (fairseq's advice).
size=small: 3+3 pre-LN layers × 256 (FFN 1024, 4 heads), 8k sentencepiece vocabulary: the
CPU-sized model of the miniature on the offline pairs (docs/results.md).
size=tiny: 1+1 layers × 64, 1k vocabulary, a smoke test of the whole path.

Sweep `dagpam` (`python -m training.sweep --config=configs/wmt14.py:size=... --sweep=dagpam`):
softmax, parameter-matched softmax, daGPAM with fixed and trainable λ, and DIFF, en→de. The
daGPAM paper (Heo & Choi 2024, arXiv:2410.15578) reports an average gain of about **+0.52 BLEU**
on WMT14 en→de (absolute numbers not recovered; one run each). Sweep `lambda`: daGPAM over a
fixed (λ⁺, λ⁻) grid.
"""

from configs import common
from configs import sweeps as sweeps_lib
import data


def get_config(arg: str | None = None):
  args = common.parse_arg(arg, size='small', attention='', steps=0)
  c = common.translation_base_config()
  c.data = data.translation_data_config('wmt14')
  m, o, d = c.model, c.optimizer, c.decode
  o.name, o.b1, o.b2 = 'adam', 0.9, 0.98
  o.schedule, o.warmup_init_lr = 'inverse_sqrt', 0.0
  d.beam_size, d.length_penalty, d.alpha = 4, 'gnmt', 0.6
  d.max_len_a, d.max_len_b = 1.0, 50   # output ≤ input + 50 (Vaswani et al. 2017)
  m.share_decoder_input_output_embed = m.share_all_embeddings = True
  if args.size == 'paper':
    m.encoder_layers = m.decoder_layers = 6
    m.d_model, m.num_heads, m.d_ff = 512, 8, 2048
    m.pre_norm, m.dropout = False, 0.1
    o.eps, o.learning_rate, o.warmup_steps, o.grad_clip_norm = 1e-9, 7e-4, 4000, 0.0
    o.grad_accum_steps = 6
    c.data.max_tokens = 4096
    c.data.spm_vocab_size = 32000
    c.train_steps = 100000
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_batches = 100, 2000, 2000, -1
    c.keep_checkpoints = 10
  elif args.size == 'small':
    m.encoder_layers = m.decoder_layers = 3
    m.d_model, m.num_heads, m.d_ff = 256, 4, 1024
    m.pre_norm, m.dropout = True, 0.1
    o.eps, o.learning_rate, o.warmup_steps, o.grad_clip_norm = 1e-8, 1e-3, 1000, 1.0
    c.data.max_tokens = 4096
    c.data.spm_vocab_size = 8000
    c.train_steps = 4000
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_batches = 50, 500, 500, 50
    c.keep_checkpoints = 5
  elif args.size == 'tiny':
    m.encoder_layers = m.decoder_layers = 1
    m.d_model, m.num_heads, m.d_ff = 64, 2, 128
    m.pre_norm = True
    o.learning_rate, o.warmup_steps, o.grad_clip_norm = 2e-3, 50, 1.0
    c.data.max_tokens = 1024
    c.data.spm_vocab_size = 1000
    c.train_steps = 200
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_batches = 25, 100, 100, 10
    d.beam_size = 2
    d.valid_sentences = 20
  else:
    raise ValueError(f'size={args.size!r}: expected tiny, small or paper')
  common.apply_common_args(c, args)
  return c


DIRECTIONS = ('en-de',)
NORMS = ('',)   # the recipe's own block (post-LN at size=paper, pre-LN otherwise)
DAGPAM_DOC = ('daGPAM comparison on WMT14 en→de (reported: an average gain of about +0.52 BLEU; one run '
              'each, no variances).')



def get_sweep(arg: str | None = None):
  """The daGPAM comparison on this task (module docstring); `arg` as for `get_config`."""
  return sweeps_lib.dagpam_sweeps(
      get_config(arg), DAGPAM_DOC, variants=sweeps_lib.translation_variants(DIRECTIONS, NORMS))
