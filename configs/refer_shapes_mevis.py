"""refer_shapes in the MeViS layout: expressions of several objects and of none, CPU-sized.

The clips and one-object expressions of configs/refer_shapes.py, written in the MeViS layout
(train, valid_u; data_pipelines.refer_shapes, layout='mevis'), plus per clip up to two
expressions of several objects ("the two green squares", "the shapes moving to the left";
the target is the union of their masks) and one with no target ("the green square moving
up" where neither twin does), kinds 'multi' and 'none' in expression_kinds.json. Evaluated as
MeViS's offline script scores valid_u (rvos_jax.evaluation.evaluate_mevis_folder). The model
and budget are the embedded default's.

  python main.py --config configs/refer_shapes_mevis.py --workdir workdirs/refer_shapes_mevis
  # the same budget on one-object expressions only (the comparison in the README):
  python main.py --config configs/refer_shapes_mevis.py --workdir W \\
      --config.data.kind_repeats.multi=0 --config.data.kind_repeats.none=0
  python main.py --config configs/refer_shapes_mevis.py:smoke ...   # seconds
"""

from configs import refer_shapes


def _to_mevis(config):
  data = config.data
  data.name = 'refer_shapes_mevis'
  data.root = data.root.replace('refer_shapes', 'refer_shapes_mevis', 1)
  data.eval_split = 'valid_u'
  data.kind_repeats.update(multi=1, none=1)
  return config


def get_config(arg: str | None = None):
  if arg and arg != 'smoke':
    raise ValueError(f'configs/refer_shapes_mevis.py takes no argument or "smoke", got {arg!r}')
  # On the previous default (its figures in docs/mevis.md): the velocity terms read object ids,
  # and a MeViS label map's labels are sets of objects.
  return _to_mevis(refer_shapes.get_previous_smoke_config() if arg else
                   refer_shapes.get_previous_config())
