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

Records (builders.MEVIS_FEATURES, load_video): each frame's masks become one uint8 label map
with a label per *set* of objects covering a pixel (label_maps), and each expression a
(256,) `members` vector over the labels, so that the pipelines take its target as
`members[labels]`: exactly the union of its objects, also where masks overlap, and empty for
an expression with no target. Object velocity and the union of all objects (Eq. 7) read the
labels as object ids: exact where masks do not overlap (then label = object), and a pixel
covered by two objects counts as one more object there.

Every problem is an error naming the file, video, expression or anno_id; RLE is decoded with
pycocotools (the library the MeViS scripts use), not by hand.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from absl import logging
from pycocotools import mask as coco_mask

from data_pipelines import ytvos_layout

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


def _track(mask_dict: Mapping[str, list], anno_id: str, num_frames: int, at: str) -> list:
  """mask_dict[anno_id], checked: present, one entry per frame."""
  if anno_id not in mask_dict:
    raise MevisFormatError(f'{at}: anno_id {anno_id!r} is not in {MASK_DICT}')
  track = mask_dict[anno_id]
  if len(track) != num_frames:
    raise MevisFormatError(f'{at}: anno_id {anno_id!r} has {len(track)} masks for '
                           f'{num_frames} frames')
  return track


def expression_target(mask_dict: Mapping[str, list], video: str, exp_id: str,
                      anno_ids: Sequence[str], num_frames: int,
                      size: tuple[int, int] | None, where: str = MASK_DICT) -> np.ndarray:
  """(num_frames, H, W) bool: the union of the anno_ids' masks in each frame (empty for an
  expression with no anno_id). size: the frames' (H, W); None takes it from the first RLE
  (an expression with no target then needs it)."""
  at = f'{where}: video {video!r} expression {exp_id!r}'
  tracks = [(a, _track(mask_dict, a, num_frames, at)) for a in anno_ids]
  if size is None:
    size = next((tuple(int(s) for s in r['size']) for _, tr in tracks for r in tr if r), None)
  if size is None:
    raise MevisFormatError(f'{at}: no mask gives the frame size')
  target = np.zeros((num_frames, *size), bool)
  for anno_id, track in tracks:
    for t, rle in enumerate(track):
      target[t] |= decode_rle(rle, size, f'{at} anno_id {anno_id!r} frame {t}')
  return target


# ------------------------------------------------------------------------- records (TFDS)

# Label maps hold uint8 values: at most 255 labels (distinct sets of overlapping objects).
MAX_LABELS = 255


def label_maps(tracks: Sequence[list], num_frames: int, size: tuple[int, int], where: str
               ) -> tuple[list[np.ndarray], list[int]]:
  """Object masks -> one uint8 label map per frame, exact for overlapping objects.

  tracks[i]: object i's RLEs, one per frame. Each pixel is labelled with the *set* of objects
  covering it: 0 for none, 1.. for each distinct non-empty set met in the video (in order of
  appearance). Returns (maps, sets) with sets[label - 1] the bit set (bit i = object i) of
  each label. An expression's target is then `members[map]`, members[label] True where the
  label's set meets the expression's objects: the union of its objects' masks, exactly, also
  where objects overlap (an id map would give each overlapped pixel to one object only).
  Where no masks overlap, label = 1 + the object's index in order of appearance.
  """
  if len(tracks) > 64:
    raise MevisFormatError(f'{where}: {len(tracks)} annotated objects; at most 64 per video '
                           'are supported')
  labels: dict[int, int] = {}
  maps = []
  for t in range(num_frames):
    code = np.zeros(size, np.uint64)
    for i, track in enumerate(tracks):
      if track[t] is not None:
        mask = decode_rle(track[t], size, f'{where} frame {t} object {i}')
        code |= mask.astype(np.uint64) << np.uint64(i)
    values, inverse = np.unique(code, return_inverse=True)
    lut = np.zeros(len(values), np.uint8)
    for j, value in enumerate(values.tolist()):
      if value:
        if value not in labels:
          if len(labels) == MAX_LABELS:
            raise MevisFormatError(f'{where}: more than {MAX_LABELS} distinct sets of '
                                   'overlapping objects')
          labels[value] = len(labels) + 1
        lut[j] = labels[value]
    maps.append(lut[inverse.reshape(size)])
  sets = [0] * len(labels)
  for value, label in labels.items():
    sets[label - 1] = value
  return maps, sets


def members(sets: Sequence[int], objects: Sequence[int]) -> np.ndarray:
  """(256,) bool: the labels (label_maps) whose object set meets `objects` (indices)."""
  bits = 0
  for i in objects:
    bits |= 1 << i
  out = np.zeros(256, bool)
  for label, value in enumerate(sets, start=1):
    out[label] = bool(value & bits)
  return out


def load_video(root: str, split: str, video: str, entry: Mapping,
               mask_dict: Mapping[str, list] | None, *, verify_jpeg: bool = True,
               skip_bad_samples: bool = False, counts: Counter | None = None) -> dict:
  """One MeViS video -> a record of builders.MEVIS_FEATURES: frames in the order of
  "frames" (mask_dict's lists follow it), label maps as masks (label_maps; none without a
  mask_dict), and per expression its `members` (all False for an expression with no target,
  or when the split has no masks) and obj_id: the one object's id, -1 for several, 0 for
  none. A bad expression raises a BadSampleError naming it, or with skip_bad_samples is
  dropped and counted."""
  counts = Counter() if counts is None else counts
  img_dir = os.path.join(root, split, 'JPEGImages', video)
  names = list(entry['frames'])
  if not names:
    raise ytvos_layout.BadSampleError(f'video {video!r}: has no frames')
  frames, size = [], None
  for name in names:
    path = os.path.join(img_dir, name + '.jpg')
    data = ytvos_layout.read_file(path, 'frame', video)
    hw = ytvos_layout.check_jpeg(data, f'video {video!r} frame {name!r} ({path})',
                                 verify_jpeg)
    if size is not None and hw != size:
      raise ytvos_layout.BadSampleError(f'video {video!r} frame {name!r}: size {hw} differs '
                                        f'from the first frame {size}')
    size = hw
    frames.append(data)

  where = f'{os.path.join(root, split, MASK_DICT)}: video {video!r}'
  kept, objects = [], []  # objects: the video's anno_ids in order of appearance
  for exp_id, exp in entry['expressions'].items():
    try:
      if mask_dict is not None:
        for anno_id in exp['anno_id']:
          _track(mask_dict, anno_id, len(names), f'{where} expression {exp_id!r}')
    except MevisFormatError as e:
      if not skip_bad_samples:
        raise ytvos_layout.BadSampleError(str(e)) from None
      counts['bad expressions'] += 1
      logging.warning('skipping: %s', e)
      continue
    kept.append((exp_id, exp))
    objects += [a for a in exp['anno_id'] if a not in objects]
  if not kept:
    raise ytvos_layout.BadSampleError(f'video {video!r}: no usable expression')

  masks, sets = [], []
  if mask_dict is not None:
    try:
      maps, sets = label_maps([mask_dict[a] for a in objects], len(names), size, where)
    except MevisFormatError as e:
      raise ytvos_layout.BadSampleError(str(e)) from None
    masks = [ytvos_layout.encode_mask(m) for m in maps]
  index = {a: i for i, a in enumerate(objects)}
  exps = {'exp_id': [], 'exp': [], 'obj_id': [], 'members': []}
  for exp_id, exp in kept:
    obj = exp['obj_id']
    exps['exp_id'].append(str(exp_id))
    exps['exp'].append(exp['exp'])
    exps['obj_id'].append(obj[0] if len(obj) == 1 else (-1 if obj else 0))
    exps['members'].append(members(sets, [index[a] for a in exp['anno_id']]))
  return {'video': video, 'frame_names': names, 'frames': frames, 'masks': masks,
          'height': size[0], 'width': size[1], 'expressions': exps}


def iter_split(root: str, split: str, *, verify_jpeg: bool = True,
               skip_bad_samples: bool = False) -> Iterator[tuple[str, dict]]:
  """(video, record) of every usable video of a MeViS split, in sorted order. A split without
  mask_dict.json (valid) is unscored: its records have no masks."""
  videos = read_meta_expressions(os.path.join(root, split, META_EXPRESSIONS))
  mask_path = os.path.join(root, split, MASK_DICT)
  mask_dict = read_mask_dict(mask_path) if os.path.exists(mask_path) else None
  if mask_dict is None:
    logging.info('split %r of %s has no %s: unscored (predicted and zipped for the server)',
                 split, root, MASK_DICT)
  yield from ytvos_layout.load_videos(
      videos, lambda video, counts: load_video(
          root, split, video, videos[video], mask_dict, verify_jpeg=verify_jpeg,
          skip_bad_samples=skip_bad_samples, counts=counts),
      where=f'{root}/{split}', skip_bad_samples=skip_bad_samples)


# ------------------------------------------------------------------------------ writing

class SplitWriter:
  """Writes a split in the MeViS layout, one video at a time (refer_shapes, tests):

    writer = SplitWriter(root, 'valid_u')
    writer.add(video, frames, names, objects, expressions)   # for each video
    writer.close()

  frames (n, H, W, 3) uint8; names: n frame names; objects {anno_id: (obj_id, (n, H, W) bool)};
  expressions {exp_id: (text, [anno_id, ...])}. with_masks=False leaves out mask_dict.json
  (as MeViS's valid split)."""

  def __init__(self, root: str, split: str, *, with_masks: bool = True, jpeg_quality: int = 90):
    self.root, self.split = root, split
    self.with_masks, self.jpeg_quality = with_masks, jpeg_quality
    self.meta, self.mask_dict = {}, {}

  def add(self, video: str, frames: np.ndarray, names: Sequence[str],
          objects: Mapping[str, tuple[int, np.ndarray]],
          expressions: Mapping[str, tuple[str, Sequence[str]]]) -> None:
    img_dir = os.path.join(self.root, self.split, 'JPEGImages', video)
    os.makedirs(img_dir, exist_ok=True)
    for name, rgb in zip(names, frames, strict=True):
      ytvos_layout.write_frame(os.path.join(img_dir, name + '.jpg'), rgb, self.jpeg_quality)
    for anno_id, (_, track) in objects.items():
      if anno_id in self.mask_dict:
        raise ValueError(f'anno_id {anno_id!r} of video {video!r} is already used')
      self.mask_dict[anno_id] = [encode_rle(m) if m.any() else None for m in track]
    self.meta[video] = {'frames': list(names), 'expressions': {
        exp_id: {'exp': text, 'anno_id': list(annos),
                 'obj_id': [int(objects[a][0]) for a in annos]}
        for exp_id, (text, annos) in expressions.items()}}

  def close(self) -> None:
    ytvos_layout.write_json(os.path.join(self.root, self.split, META_EXPRESSIONS),
                            {'videos': self.meta})
    if self.with_masks:
      with open(os.path.join(self.root, self.split, MASK_DICT), 'w', encoding='utf-8') as f:
        json.dump(self.mask_dict, f)
