"""Which on-disk layout a dataset has, and where its files are.

Two layouts (DESIGN.md "Data"):
  'ytvos'  Refer-YouTube-VOS: <root>/meta_expressions/<split>/meta_expressions.json, masks as
           id PNGs in <root>/<split>/Annotations/ (data_pipelines.ytvos_layout). Also
           Refer-DAVIS17 (converted) and refer_shapes.
  'mevis'  MeViS: <root>/<split>/meta_expressions.json and <root>/<split>/mask_dict.json
           (data_pipelines.mevis_layout). Also refer_shapes_mevis (refer_shapes written in it,
           with multi-object and no-target expressions).

Both keep the frames in <root>/<split>/JPEGImages/<video>/<frame>.jpg, and refer_shapes writes
expression_kinds.json beside meta_expressions.json in both. Nothing here imports TensorFlow or
JAX (the scorer CLI uses it).
"""

import os

from data_pipelines import ytvos_layout

YTVOS, MEVIS = 'ytvos', 'mevis'
LAYOUTS = {'refer_shapes': YTVOS, 'refer_youtube_vos': YTVOS, 'refer_davis17': YTVOS,
           'mevis': MEVIS, 'refer_shapes_mevis': MEVIS}
MASK_DICT = 'mask_dict.json'


def layout_of(name: str) -> str:
  """config.data.name -> 'ytvos' or 'mevis'."""
  if name not in LAYOUTS:
    raise ValueError(f'config.data.name={name!r}; expected one of {sorted(LAYOUTS)}')
  return LAYOUTS[name]


def meta_expressions_path(root: str, split: str, layout: str) -> str:
  if layout == MEVIS:
    return os.path.join(root, split, 'meta_expressions.json')
  return ytvos_layout.meta_expressions_path(root, split)


def mask_dict_path(root: str, split: str) -> str:
  return os.path.join(root, split, MASK_DICT)


def split_is_scored(root: str, split: str, layout: str) -> bool:
  """Whether the split has ground truth here: MeViS's mask_dict.json (valid has none: it is
  scored by the server), or Refer-YouTube-VOS's ytvos_layout.split_is_scored."""
  if layout == MEVIS:
    return os.path.exists(mask_dict_path(root, split))
  return ytvos_layout.split_is_scored(root, split)


def read_expressions(root: str, split: str, layout: str) -> dict[str, dict]:
  """{video: {'frames': [...], 'expressions': {exp_id: {'exp': str, ...}}}} of either layout."""
  path = meta_expressions_path(root, split, layout)
  if layout == MEVIS:
    from data_pipelines import mevis_layout  # noqa: PLC0415 -- pycocotools only for MeViS
    return mevis_layout.read_meta_expressions(path)
  return ytvos_layout.read_meta_expressions(path)
