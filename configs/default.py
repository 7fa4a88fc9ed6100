"""The embedded default: multi-query associative recall (MQAR) with a 2-layer softmax LM.

    python train.py

Synthetic data generated in `data/synthetic.py` (no downloads). Each sequence lists 8 key–value
pairs (one token per pair, `data.pair_tokens`) and then asks for the values of the 8 keys again,
in random order and places; only those answers are scored, and only attention can carry a value
from its pair to the query (associative recall; Arora et al. 2023, "Zoology"). Chance accuracy
is 1/16 = 6.25% (16 value tokens). Expected: validation accuracy ≥ 0.90 within 3 minutes on
2 CPU cores (the number `train.py` prints at the end; see README for a measured run).

Presets: `steps=<N>` (number of updates), `attention=<kind>`.

Sweeps (`python -m training.sweep --config=configs/default.py --sweep=NAME --seeds=3`):
  mqar_pairs   every kind at 8, 16 and 32 key–value pairs (sequences of 64, 8 queries).
  mqar_length  every kind at sequences of 32 and 128 tokens (8 pairs; 64 is the default run).
Each row is one kind at one size, with the same width (2 layers × 128), updates (600) and
optimizer; the sizes are few so that both sweeps (135 jobs) run in about 3 hours on 2 CPU cores,
one job at a time (most jobs take 40–160 s; top-k and SEA at 128 tokens 4–7 min each; 600
updates of softmax reach 0.97 test accuracy at 32 pairs, 1.00 at 16: docs/results.md). Sizes are
chosen to show where each kind falls off within this budget, not the largest size each kind can
learn.
The metric is the test accuracy of recalling the queried values. The finding to check against
(Arora et al. 2023, "Zoology", arXiv:2312.04927): softmax attention solves MQAR at every size
tried, while kernel (linear) attention, Performer here, falls off as the number of pairs grows.
"""

from configs import common
import data

# Every kind, with the options that fit sequences of 32–128 tokens and training from scratch.
SWEEP_KINDS = {
    'softmax': {},
    'dagpam': {},
    'diff': {},
    'performer': {},
    'topk': {'attention.topk.k': 8},
    'sea': {'attention.sea.distill': False, 'attention.sea.predictor_length': 32,
            'attention.sea.k': 8},
    'non': {},
    'nap': {},
    'coda': {},
}


def get_config(arg: str | None = None):
  args = common.parse_arg(arg, attention='', steps=0)
  c = common.base_config()
  c.data = data.lm_data_config('mqar')
  c.data.pair_tokens = True
  c.data.num_kv_pairs = c.data.num_queries = 8
  c.data.key_vocab_size = c.data.value_vocab_size = 16
  c.model.num_layers = 2
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.d_ff = 256
  c.model.positions = 'sinusoidal'
  c.model.max_len = 64
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 3e-3
  c.optimizer.schedule = 'cosine'
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 0.01
  c.optimizer.grad_clip_norm = 1.0
  c.train_steps = 600
  c.batch_size = 32
  c.seq_len = 32
  c.log_every = 50
  c.eval_every = 200
  c.eval_batches = -1
  c.checkpoint_every = 200
  common.apply_common_args(c, args)
  return c


def get_sweep(arg: str | None = None):
  """The MQAR capability sweeps (module docstring); `arg` as for `get_config`."""
  del arg
  test = [{'name': 'test', 'flags': ['--split=test']}]

  def rows(sizes, label):
    return [{'name': f'{kind}-{label(size)}', 'group': kind, 'x': size[0],
             'attention.kind': kind, **options, **size[1]}
            for kind, options in SWEEP_KINDS.items() for size in sizes]

  pairs = [(n, {'data.num_kv_pairs': n, 'data.key_vocab_size': 32, 'seq_len': 64,
                'model.max_len': 64}) for n in (8, 16, 32)]
  lengths = [(t, {'seq_len': t, 'model.max_len': t}) for t in (32, 128)]
  return {
      'mqar_pairs': {
          'doc': 'MQAR accuracy against the number of key-value pairs, every kind (sequences '
                 'of 64, 8 queries, 32 keys).',
          'rows': rows(pairs, lambda s: f'pairs{s[0]}'), 'evals': test,
          'x_label': 'key-value pairs'},
      'mqar_length': {
          'doc': 'MQAR accuracy against the sequence length, every kind (8 pairs, 8 queries).',
          'rows': rows(lengths, lambda s: f'len{s[0]}'), 'evals': test,
          'x_label': 'sequence length'},
  }
