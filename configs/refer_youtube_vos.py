"""Refer-YouTube-VOS as published (DESIGN.md "Data"), at the paper's setting.

  python main.py --config configs/refer_youtube_vos.py --workdir DIR \
      --config.data.root=/data/refer_youtube_vos \
      --config.model.backbone_init=/ckpt/resnet50_imagenet   # from rvos_jax.port_resnet50
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = 'refer_youtube_vos'
  config.data.root = ''  # required: the layout with train/, valid/, meta_expressions/
  # Refer-YouTube-VOS valid has no public masks: evaluation writes the server's submission
  # (--mode predict); periodic evaluation during training is off.
  config.train.eval_every = 0
  config.train.final_eval = False
  return config
