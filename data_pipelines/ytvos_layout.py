"""The Refer-YouTube-VOS on-disk layout: reading (with validation) and writing.

  <root>/<split>/JPEGImages/<video>/<frame>.jpg
  <root>/<split>/Annotations/<video>/<frame>.png     palette PNG, pixel value = object id
  <root>/<split>/meta.json                           optional, {"videos": {v: {"objects": ...}}}
  <root>/meta_expressions/<split>/meta_expressions.json
      {"videos": {<video>: {"expressions": {<exp_id>: {"exp": str, "obj_id": str}},
                            "frames": [<frame>, ...]}}}

The real valid split has no Annotations and no obj_id (its ground truth is on the server);
then masks are empty and obj_id is 0. Refer-DAVIS17 (converted by data_pipelines.davis17) and
the synthetic refer_shapes dataset use the same layout, with Annotations for both splits.

meta.json is never read by data_pipelines (deliberately): frames, masks and
meta_expressions.json hold all that training and evaluation need; meta.json adds per-object
frame lists and categories, which only the analysis in rvos_jax.analysis.distractors reads.

Everything that can be wrong with a sample is checked here, once, when TFDS builds the records,
so that training never dies half-way through an epoch: structural errors in
meta_expressions.json always raise (naming the key); bad videos / expressions raise
`BadSampleError` naming the video, frame or exp_id, or are dropped with a counted warning when
`skip_bad_samples` is set.
"""

import io
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping

import numpy as np
from absl import logging
from PIL import Image

META_EXPRESSIONS = 'meta_expressions.json'


class BadSampleError(ValueError):
  """A video or expression of the dataset is unusable; the message names it."""


class MetaFormatError(ValueError):
  """meta_expressions.json does not have the expected shape; the message names the key."""


def meta_expressions_path(root: str, split: str) -> str:
  return os.path.join(root, 'meta_expressions', split, META_EXPRESSIONS)


EXPRESSION_KINDS = 'expression_kinds.json'  # refer_shapes writes it beside meta_expressions.json


def read_expression_kinds(meta_expressions: str) -> dict[str, dict[str, str]] | None:
  """{video: {exp_id: kind}} from the expression_kinds.json beside a meta_expressions.json
  (refer_shapes writes one; the published datasets have none: None)."""
  path = os.path.join(os.path.dirname(os.path.abspath(meta_expressions)), EXPRESSION_KINDS)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise MetaFormatError(f'{path}: not valid JSON: {e}') from None
  videos = data.get('videos') if isinstance(data, dict) else None
  if not isinstance(videos, dict) or not all(
      isinstance(v, dict) and all(isinstance(k, str) for k in v.values())
      for v in videos.values()):
    raise MetaFormatError(f'{path}: expected {{"videos": {{<video>: {{<exp_id>: kind}}}}}}')
  return videos


def read_meta_expressions(path: str) -> dict[str, dict]:
  """Loads and checks the shape of a meta_expressions.json; returns its 'videos' dict."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: not found (expected the Refer-YouTube-VOS layout)')
  try:
    with open(path) as f:
      meta = json.load(f)
  except json.JSONDecodeError as e:
    raise MetaFormatError(f'{path}: not valid JSON: {e}') from None

  def fail(key, msg):
    raise MetaFormatError(f'{path}: {key}: {msg}')

  if not isinstance(meta, dict) or 'videos' not in meta:
    fail('<top level>', 'expected an object with a "videos" key')
  videos = meta['videos']
  if not isinstance(videos, dict):
    fail('videos', f'expected an object {{video: ...}}, got {type(videos).__name__}')
  for v, entry in videos.items():
    key = f'videos[{v!r}]'
    if not isinstance(entry, dict):
      fail(key, f'expected an object, got {type(entry).__name__}')
    exps = entry.get('expressions')
    if not isinstance(exps, dict):
      fail(f'{key}.expressions', f'expected an object {{exp_id: ...}}, got {type(exps).__name__}')
    frames = entry.get('frames')
    if frames is not None and (not isinstance(frames, list)
                               or not all(isinstance(x, str) for x in frames)):
      fail(f'{key}.frames', 'expected a list of frame names (strings)')
    for e, exp in exps.items():
      ekey = f'{key}.expressions[{e!r}]'
      if not isinstance(exp, dict):
        fail(ekey, f'expected an object {{"exp": ..., "obj_id": ...}}, got {type(exp).__name__}')
      if not isinstance(exp.get('exp'), str):
        fail(f'{ekey}.exp', f'expected a string, got {type(exp.get("exp")).__name__}')
      if 'obj_id' in exp:
        try:
          int(exp['obj_id'])
        except (TypeError, ValueError):
          fail(f'{ekey}.obj_id', f'expected an integer id, got {exp["obj_id"]!r}')
  return videos


def decode_mask(data: bytes, where: str) -> np.ndarray:
  """Palette / grayscale PNG -> (H, W) uint8 object ids (the palette index, not the colour)."""
  try:
    im = Image.open(io.BytesIO(data))
    im.load()
  except Exception as e:  # noqa: BLE001 -- PIL raises many types for bad files
    raise BadSampleError(f'{where}: cannot decode PNG mask ({e})') from None
  if im.mode not in ('P', 'L', '1', 'I;16', 'I'):
    raise BadSampleError(f'{where}: mask must be a palette or grayscale PNG, got mode {im.mode}')
  ids = np.asarray(im)
  if ids.max(initial=0) > 255:
    raise BadSampleError(f'{where}: object ids above 255 are not supported')
  return ids.astype(np.uint8)


def encode_mask(ids: np.ndarray) -> bytes:
  """(H, W) object ids -> grayscale PNG bytes (what the records store; tf.io.decode_png reads
  the values back unchanged, which it does not do for palette PNGs)."""
  buf = io.BytesIO()
  Image.fromarray(ids.astype(np.uint8), mode='L').save(buf, format='PNG', compress_level=1)
  return buf.getvalue()


# A JPEG ends with the end-of-image marker; encoders may pad a little after it. FF D9 cannot
# occur inside entropy-coded data (an FF there is always followed by 00 or a restart marker).
_EOI, _EOI_TAIL = b'\xff\xd9', 1024


def check_jpeg(data: bytes, where: str, verify: bool) -> tuple[int, int]:
  """Returns (height, width); with verify, decodes the entropy-coded data (at 1/8 DCT scale:
  every coefficient is still read, so truncation and corruption are caught, 8x cheaper).

  Without verify only the header is parsed, plus a look for the end-of-image marker near the
  end: a file without one (truncated, the usual damage, on which tf.io.decode_jpeg fails with
  an error that names no file) is then decoded all the same, so it is caught here by name.
  """
  try:
    im = Image.open(io.BytesIO(data))
    if im.format != 'JPEG':
      raise OSError(f'not a JPEG file (format {im.format})')
    w, h = im.size
    if verify or data.rfind(_EOI, max(0, len(data) - _EOI_TAIL)) < 0:
      im.draft('RGB', (max(1, w // 8), max(1, h // 8)))
      im.load()
  except Exception as e:  # noqa: BLE001 -- PIL raises many types for bad files
    raise BadSampleError(f'{where}: corrupt or unreadable JPEG ({e})') from None
  return h, w


def read_file(path: str, what: str, video: str) -> bytes:
  try:
    with open(path, 'rb') as f:
      return f.read()
  except FileNotFoundError:
    raise BadSampleError(f'video {video!r}: missing {what} file {path}') from None


TRAIN_SPLIT = 'train'


def split_is_scored(root: str, split: str, videos: Mapping | None = None) -> bool:
  """Whether `split` has ground truth here: an Annotations/ folder, and obj_ids in its
  meta_expressions.json. A split with Annotations/ whose expressions carry no obj_id at all
  (YouTube-VOS's semi-supervised release ships first-frame masks there, while
  Refer-YouTube-VOS valid publishes its expressions without obj_id) is not: its masks say
  nothing about which object an expression means. `videos`: the split's meta_expressions
  'videos', if already read."""
  if not os.path.isdir(os.path.join(root, split, 'Annotations')):
    return False
  if videos is None:
    videos = read_meta_expressions(meta_expressions_path(root, split))
  return any('obj_id' in exp for entry in videos.values()
             for exp in entry.get('expressions', {}).values())


def load_video(root: str, split: str, video: str, entry: Mapping, *, verify_jpeg: bool = True,
               skip_bad_samples: bool = False, counts: Counter | None = None,
               read_masks: bool | None = None) -> dict:
  """Reads one video into a record (see builders.FEATURES). Raises BadSampleError for a bad
  video; a bad expression raises too, or with skip_bad_samples is dropped and counted.
  read_masks: read Annotations/ and check each obj_id against them (default: when the folder
  exists; iter_split passes split_is_scored)."""
  counts = Counter() if counts is None else counts
  img_dir = os.path.join(root, split, 'JPEGImages', video)
  ann_root = os.path.join(root, split, 'Annotations')
  has_masks = os.path.isdir(ann_root) if read_masks is None else read_masks
  frame_names = entry.get('frames')
  if frame_names is None:
    if not os.path.isdir(img_dir):
      raise BadSampleError(f'video {video!r}: no frame directory {img_dir}')
    frame_names = sorted(os.path.splitext(f)[0] for f in os.listdir(img_dir)
                         if f.lower().endswith('.jpg'))
  frame_names = sorted(frame_names)
  if not frame_names:
    raise BadSampleError(f'video {video!r}: has no frames')

  frames, masks, present = [], [], set()
  size = None
  for name in frame_names:
    path = os.path.join(img_dir, name + '.jpg')
    data = read_file(path, 'frame', video)
    hw = check_jpeg(data, f'video {video!r} frame {name!r} ({path})', verify_jpeg)
    if size is None:
      size = hw
    elif hw != size:
      raise BadSampleError(f'video {video!r} frame {name!r}: size {hw} differs from the '
                           f'first frame {size}')
    frames.append(data)
    if has_masks:
      mpath = os.path.join(ann_root, video, name + '.png')
      ids = decode_mask(read_file(mpath, 'mask', video), f'video {video!r} mask {mpath}')
      if ids.shape != size:
        raise BadSampleError(f'video {video!r} frame {name!r}: mask size {ids.shape} '
                             f'({mpath}) differs from the frame size {size}')
      present.update(np.unique(ids).tolist())
      masks.append(encode_mask(ids))

  exp_ids, texts, obj_ids = [], [], []
  for exp_id, exp in entry['expressions'].items():
    try:
      if not exp['exp'].strip():
        raise BadSampleError(f'video {video!r} expression {exp_id!r}: empty expression')
      obj_id = int(exp.get('obj_id', 0))
      if has_masks:
        if 'obj_id' not in exp:
          raise BadSampleError(f'video {video!r} expression {exp_id!r}: no obj_id although '
                               f'the split has Annotations')
        if obj_id <= 0 or obj_id not in present:
          raise BadSampleError(f'video {video!r} expression {exp_id!r}: obj_id {obj_id} '
                               f'appears in none of the video\'s masks (ids present: '
                               f'{sorted(present - {0})})')
    except BadSampleError as e:
      if not skip_bad_samples:
        raise
      counts['bad expressions'] += 1
      logging.warning('skipping: %s', e)
      continue
    exp_ids.append(str(exp_id))
    texts.append(exp['exp'])
    obj_ids.append(obj_id)
  if not exp_ids:
    raise BadSampleError(f'video {video!r}: no usable expression')
  return {
      'video': video,
      'frame_names': frame_names,
      'frames': frames,
      'masks': masks,
      'height': size[0],
      'width': size[1],
      'expressions': {'exp_id': exp_ids, 'exp': texts, 'obj_id': obj_ids},
  }


def iter_split(root: str, split: str, *, verify_jpeg: bool = True,
               skip_bad_samples: bool = False) -> Iterator[tuple[str, dict]]:
  """Yields (video, record) for every usable video of a split, in sorted video order.

  A split other than the training split that has Annotations/ but no obj_id on any expression
  is unscored (split_is_scored): its masks are not read, and this is said once. The training
  split needs its targets: there every expression without an obj_id is a bad sample."""
  videos = read_meta_expressions(meta_expressions_path(root, split))
  read_masks = os.path.isdir(os.path.join(root, split, 'Annotations'))
  if read_masks and split != TRAIN_SPLIT and not split_is_scored(root, split, videos):
    logging.warning('split %r: %s exists but no expression in %s has an obj_id, so the split '
                    'is unscored: it is predicted (and zipped for a server), not evaluated',
                    split, os.path.join(root, split, 'Annotations'),
                    meta_expressions_path(root, split))
    read_masks = False
  yield from load_videos(
      videos, lambda video, counts: load_video(
          root, split, video, videos[video], verify_jpeg=verify_jpeg,
          skip_bad_samples=skip_bad_samples, counts=counts, read_masks=read_masks),
      where=f'{root}/{split}', skip_bad_samples=skip_bad_samples)


def load_videos(videos: Mapping, load: Callable[[str, Counter], dict], *, where: str,
                skip_bad_samples: bool) -> Iterator[tuple[str, dict]]:
  """(video, load(video, counts)) for every video in sorted order: a BadSampleError raises, or
  with skip_bad_samples drops the video; a split none of whose videos is usable raises, and
  what was skipped is counted in one warning (load counts 'bad expressions' itself)."""
  counts = Counter()
  for video in sorted(videos):
    try:
      record = load(video, counts)
    except BadSampleError as e:
      if not skip_bad_samples:
        raise
      counts['bad videos'] += 1
      logging.warning('skipping: %s', e)
      continue
    yield video, record
  if videos and counts['bad videos'] == len(videos):
    raise BadSampleError(f'{where}: none of the {len(videos)} videos is usable')
  if counts:
    logging.warning('%s: skipped %d bad videos and %d bad expressions of %d videos '
                    '(skip_bad_samples=True)', where, counts['bad videos'],
                    counts['bad expressions'], len(videos))


# ---------------------------------------------------------------- writing (generator, DAVIS)

def davis_palette() -> list[int]:
  """The DAVIS / YouTube-VOS annotation palette (bit-interleaved VOC colours)."""
  pal = []
  for i in range(256):
    r = g = b = 0
    c = i
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    pal += [r, g, b]
  return pal


_PALETTE = davis_palette()


def write_mask(path: str, ids: np.ndarray) -> None:
  """Palette PNG, pixel value = object id (as the published annotations)."""
  im = Image.fromarray(ids.astype(np.uint8), mode='P')
  im.putpalette(_PALETTE)
  im.save(path, format='PNG')


def write_frame(path: str, rgb: np.ndarray, quality: int = 90) -> None:
  Image.fromarray(rgb).save(path, format='JPEG', quality=quality)


def write_json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(obj, f, indent=1, sort_keys=True)
