"""MeViS (Ding et al., ICCV 2023) at the paper's setting: the Refer-YouTube-VOS config on the
MeViS layout (data_pipelines.mevis_layout; nothing is downloaded):

  <root>/{train,valid_u,valid}/JPEGImages/<video>/<frame>.jpg
  <root>/<split>/meta_expressions.json, <root>/{train,valid_u}/mask_dict.json

  python main.py --config configs/mevis.py --workdir W --config.data.root=/data/mevis \\
      --config.model.backbone_init=ckpt/resnet50
  # the server's split: predictions and submission.zip (<video>/<exp_id>/<frame>.png)
  python main.py --config configs/mevis.py --workdir W --mode predict \\
      --config.data.root=/data/mevis --config.data.eval_split=valid

Training evaluates valid_u as MeViS's offline script does (J and F per expression over all
its frames, an expression's target the union of its objects, empty for no target).
"""

from configs import refer_youtube_vos


def get_config():
  config = refer_youtube_vos.get_config()
  config.data.name = 'mevis'
  config.data.root = ''  # required: the layout with train/, valid_u/, valid/
  config.data.eval_split = 'valid_u'
  # valid_u has masks (mask_dict.json): evaluate during training and at the end.
  config.train.eval_every = 10_000
  config.train.final_eval = True
  return config
