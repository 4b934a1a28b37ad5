"""Refer-DAVIS17: fine-tune a Refer-YouTube-VOS checkpoint (Table 1, "Ours").

The layout is the one `python -m data_pipelines.davis17` converts the DAVIS 2017 release to;
evaluation averages over the two annotators (expression ids 4k+0..4k+3).

  python main.py --config configs/refer_davis17.py --workdir DIR \
      --config.data.root=/data/refer_davis17 --config.train.init_from=/runs/ytvos/checkpoints
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = 'refer_davis17'
  config.data.root = ''
  config.data.eval_split = 'valid'
  # Orbax checkpoint directory (or workdir) of a Refer-YouTube-VOS run: its parameters (not its
  # optimizer state or step) start this run. Empty = from the backbone initialisation only.
  config.train.init_from = ''
  config.train.num_steps = 5_000
  config.optim.warmup_steps = 100
  config.train.eval_every = 1_000
  return config
