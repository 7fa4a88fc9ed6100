"""The embedded default: multi-query associative recall (MQAR) with a 2-layer softmax LM.

    python train.py

Synthetic data generated in `data/synthetic.py` (no downloads). Each sequence lists 8 key–value
pairs (one token per pair, `data.pair_tokens`) and then asks for the values of the 8 keys again,
in random order and places; only those answers are scored, and only attention can carry a value
from its pair to the query (associative recall; Arora et al. 2023, "Zoology"). Chance accuracy
is 1/16 = 6.25% (16 value tokens). Expected: validation accuracy ≥ 0.90 within 3 minutes on
2 CPU cores (the number `train.py` prints at the end; see README for a measured run).

Presets: `steps=<N>` (number of updates), `attention=<kind>`.
"""

from configs import common
import data


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
