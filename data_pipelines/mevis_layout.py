"""The MeViS on-disk layout (Ding et al., ICCV 2023): reading with validation, and writing.

  <root>/<split>/JPEGImages/<video>/<frame>.jpg            split: train, valid_u, valid
  <root>/<split>/meta_expressions.json
      {"videos": {<video>: {"frames": [<frame>, ...],
                            "expressions": {<exp_id>: {"exp": str, "obj_id": [int, ...],
                                                       "anno_id": [str, ...]}}}}}
  <root>/<split>/mask_dict.json                            train and valid_u only
      {<anno_id>: [<COCO RLE {"size": [h, w], "counts": str}> or null, one per frame]}

As the MeViS authors' loader and evaluation script read it: an expression's target in frame t
is the union of the masks of its anno_ids at index t of each list (`frames` order), null being
an empty mask; obj_id[i] names the object of anno_id[i]. An expression may refer to several
objects, and (MeViS v2) to none: empty lists, an empty target in every frame. `valid` has no
mask_dict.json: it is predicted and zipped for the server.

Every problem is an error naming the file, video, expression or anno_id; RLE is decoded with
pycocotools (the library the MeViS scripts use), not by hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
from pycocotools import mask as coco_mask

META_EXPRESSIONS = 'meta_expressions.json'
MASK_DICT = 'mask_dict.json'
SPLITS = ('train', 'valid_u', 'valid')


class MevisFormatError(ValueError):
  """A MeViS file that does not have the published structure (names what and where)."""


def _load_json(path: str, what: str):
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    raise MevisFormatError(f'{path}: no {what} (expected the MeViS layout)') from None
  except json.JSONDecodeError as e:
    raise MevisFormatError(f'{path}: not valid JSON ({e})') from None


def read_meta_expressions(path: str) -> dict[str, dict]:
  """The 'videos' dict of a MeViS meta_expressions.json, checked: every video has frames and
  expressions; every expression a non-empty 'exp', and obj_id and anno_id lists of the same
  length (obj_id[i] is the object of anno_id[i]); anno_ids become strings, obj_ids ints."""
  data = _load_json(path, 'meta_expressions.json')
  videos = data.get('videos') if isinstance(data, dict) else None
  if not isinstance(videos, dict):
    raise MevisFormatError(f'{path}: expected {{"videos": {{...}}}} at the top')
  out = {}
  for video, entry in videos.items():
    where = f'{path}: video {video!r}'
    if not isinstance(entry, dict) or not isinstance(entry.get('frames'), list):
      raise MevisFormatError(f'{where}: no "frames" list')
    if not isinstance(entry.get('expressions'), dict):
      raise MevisFormatError(f'{where}: no "expressions" dict')
    expressions = {}
    for exp_id, exp in entry['expressions'].items():
      at = f'{where} expression {exp_id!r}'
      if not isinstance(exp, dict) or not isinstance(exp.get('exp'), str):
        raise MevisFormatError(f'{at}: no "exp" string')
      if not exp['exp'].strip():
        raise MevisFormatError(f'{at}: empty expression')
      obj_ids, anno_ids = exp.get('obj_id', []), exp.get('anno_id', [])
      if not isinstance(obj_ids, list) or not isinstance(anno_ids, list):
        raise MevisFormatError(f'{at}: "obj_id" and "anno_id" must be lists, got '
                               f'{obj_ids!r} and {anno_ids!r}')
      if len(obj_ids) != len(anno_ids):
        raise MevisFormatError(f'{at}: {len(obj_ids)} obj_id {obj_ids} but {len(anno_ids)} '
                               f'anno_id {anno_ids}: one anno_id per object expected')
      try:
        obj_ids = [int(o) for o in obj_ids]
      except (TypeError, ValueError):
        raise MevisFormatError(f'{at}: obj_id {obj_ids!r} are not integers') from None
      expressions[str(exp_id)] = {'exp': exp['exp'], 'obj_id': obj_ids,
                                  'anno_id': [str(a) for a in anno_ids]}
    out[str(video)] = {'frames': [str(f) for f in entry['frames']], 'expressions': expressions}
  return out


def read_mask_dict(path: str) -> dict[str, list]:
  """mask_dict.json: {anno_id: [RLE or None per frame]}."""
  data = _load_json(path, 'mask_dict.json')
  if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
    raise MevisFormatError(f'{path}: expected {{<anno_id>: [<RLE or null per frame>]}}')
  return data


def encode_rle(mask: np.ndarray) -> dict:
  """(H, W) bool -> COCO RLE {"size": [H, W], "counts": str} as mask_dict.json stores it."""
  rle = coco_mask.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
  return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


def decode_rle(rle: Mapping | None, size: tuple[int, int] | None, where: str) -> np.ndarray:
  """One RLE (None: an empty mask of `size`) -> (H, W) bool; its size must be `size`."""
  if rle is None:
    if size is None:
      raise MevisFormatError(f'{where}: a null mask and no frame size to give it')
    return np.zeros(size, bool)
  try:
    h, w = (int(s) for s in rle['size'])
    counts = rle['counts']
    mask = coco_mask.decode({'size': [h, w],
                             'counts': counts.encode('ascii') if isinstance(counts, str)
                             else counts})
  except (KeyError, TypeError, ValueError) as e:
    raise MevisFormatError(f'{where}: not a COCO RLE ({type(e).__name__}: {e})') from None
  if size is not None and (h, w) != tuple(size):
    raise MevisFormatError(f'{where}: RLE of size {h}x{w} (HxW) but the frame is '
                           f'{size[0]}x{size[1]}')
  return mask.astype(bool)


def expression_target(mask_dict: Mapping[str, list], video: str, exp_id: str,
                      anno_ids: Sequence[str], num_frames: int,
                      size: tuple[int, int] | None, where: str = MASK_DICT) -> np.ndarray:
  """(num_frames, H, W) bool: the union of the anno_ids' masks in each frame (empty for an
  expression with no anno_id). size: the frames' (H, W); None takes it from the first RLE
  (an expression with no target then needs it)."""
  at = f'{where}: video {video!r} expression {exp_id!r}'
  tracks = []
  for anno_id in anno_ids:
    if anno_id not in mask_dict:
      raise MevisFormatError(f'{at}: anno_id {anno_id!r} is not in {MASK_DICT}')
    track = mask_dict[anno_id]
    if len(track) != num_frames:
      raise MevisFormatError(f'{at}: anno_id {anno_id!r} has {len(track)} masks for '
                             f'{num_frames} frames')
    tracks.append((anno_id, track))
  if size is None:
    size = next((tuple(int(s) for s in r['size']) for _, tr in tracks for r in tr if r), None)
  if size is None:
    raise MevisFormatError(f'{at}: no mask gives the frame size')
  target = np.zeros((num_frames, *size), bool)
  for anno_id, track in tracks:
    for t, rle in enumerate(track):
      target[t] |= decode_rle(rle, size, f'{at} anno_id {anno_id!r} frame {t}')
  return target
