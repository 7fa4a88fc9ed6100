"""The embedded default: multi-query associative recall (MQAR) with a 2-layer softmax LM.

    python train.py

Synthetic data generated in `data/synthetic.py` (no downloads). Each sequence lists key–value
pairs and then asks for the values of some keys again; only those answers are scored, and only
attention can carry a value from its pair to the query (Arora et al. 2023, "Zoology"). Chance
accuracy is 1/(number of value tokens), at most 10%. Expected: validation accuracy ≥ 0.90 within
about 3 minutes on 2 CPU cores (the number `train.py` prints at the end).

Presets: `steps=<N>` (number of updates), `attention=<kind>`.
"""

from configs import common
import data


def get_config(arg: str | None = None):
  args = common.parse_arg(arg, attention='', steps=0)
  c = common.base_config()
  c.data = data.lm_data_config('mqar')
  c.model.num_layers = 2
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.d_ff = 256
  c.model.positions = 'learned'
  c.model.max_len = 256
  c.model.scale_embeddings = False
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 3e-3
  c.optimizer.schedule = 'cosine'
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.01
  c.optimizer.grad_clip_norm = 1.0
  c.train_steps = 1200
  c.batch_size = 64
  c.seq_len = 64
  c.log_every = 50
  c.eval_every = 400
  c.eval_batches = -1
  c.checkpoint_every = 400
  common.apply_common_args(c, args)
  return c
