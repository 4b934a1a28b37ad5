"""Table 3's ablations as overrides of a base config.

  python main.py --config configs/ablations.py:refer_shapes,no_video_level --workdir W
  python main.py --config configs/ablations.py:default,frames_4 --workdir W

The argument is '<base>,<variant>' with base 'default' (the paper's setting), 'refer_shapes'
(the embedded default), 'refer_shapes_previous' (the default before its motion recipe: Table 3's
runs in docs/table3.md), 'refer_shapes_long' (twice its steps: the budget at which the words
start to steer the masks, docs/refer_shapes_experiments.md), 'refer_shapes_motion' (`long` with
the direction supervised and matched: the budget at which motion is learned) or
'refer_shapes_smoke' (its seconds-long smoke version, for tests of benchmarks/ablations.py), and
variant one of VARIANTS.
"""

import ml_collections

from configs import default, refer_shapes

BASES = {
    'default': default.get_config,
    'refer_shapes': refer_shapes.get_config,
    'refer_shapes_previous': refer_shapes.get_previous_config,
    'refer_shapes_long': refer_shapes.get_long_config,
    'refer_shapes_motion': refer_shapes.get_motion_config,
    'refer_shapes_smoke': refer_shapes.get_smoke_config,
}

VARIANTS = {
    'full': {},
    # The velocity head and its match read the video level: off with it (no-ops where off).
    'no_video_level': {'model.use_video_level': False, 'model.velocity_head': False,
                       'model.velocity_match': False},
    # Not in the paper: no level sees more than one frame (the object level's encoder is the
    # frame encoder), the control for motion expressions, which one frame cannot answer.
    'frame_only': {'model.use_video_level': False, 'model.object_encoder': 'frame',
                   'model.velocity_head': False, 'model.velocity_match': False},
    'no_frame_level': {'model.use_frame_level': False},
    'no_object_level': {'model.use_object_level': False},
    'object_encoder_fcn': {'model.object_encoder': 'fcn'},
    'object_encoder_frame': {'model.object_encoder': 'frame'},
    'no_alignment': {'model.alignment': 'none'},
    # "Numbers of Frames": T = 1, 2, 4, 8 (the full model uses 12 in the paper).
    **{f'frames_{t}': {'data.num_frames': t} for t in (1, 2, 4, 8)},
}


def apply_variant(config: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f'unknown ablation {variant!r}; choose from {sorted(VARIANTS)}')
  for key, value in VARIANTS[variant].items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def get_config(arg: str = 'default,full') -> ml_collections.ConfigDict:
  base, _, variant = arg.partition(',')
  if base not in BASES:
    raise ValueError(f'unknown base config {base!r}; choose from {sorted(BASES)}')
  return apply_variant(BASES[base](), variant or 'full')
