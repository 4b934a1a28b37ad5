"""refer_shapes: a seeded synthetic referring-video dataset in the Refer-YouTube-VOS layout.

Each clip shows 2-5 flat-coloured shapes moving in straight lines over a textured, noisy
background. Every object gets one expression, of one of four kinds, each built so that it needs
what the paper says it needs (§1, Fig. 1):

  appearance  "the red triangle": colour and shape are unique in the clip, and other objects
              share the colour or the shape, so both words matter (frame level).
  motion      two look-alike objects (same colour, shape and size) moving differently:
              "the green square moving to the left" vs "the green square moving up"; no single
              frame tells them apart (video level, Eq. 1-3).
  position    two look-alikes with the same motion, told apart by size and/or place:
              "the small blue circle", "the blue circle on the left", "... at the bottom".
  occluded    a small target that a larger object sweeps over in mid-clip:
              "the small yellow star behind the purple square" (object level, Eq. 5-7).

Shapes are left-right symmetric, so a horizontally flipped clip still shows the same shapes and
only "left"/"right" change meaning (the training flip swaps those words).

The valid split holds out some (colour, shape) combinations that never occur in train.
Video i of a split depends only on (seed, split, i), so a small dataset is a prefix of a larger
one. Written files: the Refer-YouTube-VOS layout (Annotations for both splits) plus
`meta_expressions/<split>/expression_kinds.json` = {"videos": {video: {exp_id: kind}}} and
`refer_shapes.json` (generation parameters).

  python -m data_pipelines.refer_shapes --output_dir DIR [--num_train_videos 200 ...]
"""

import os
from collections.abc import Sequence

import numpy as np
from absl import app, flags, logging

from data_pipelines import ytvos_layout

KINDS = ('appearance', 'motion', 'position', 'occluded')
COLOURS = {
    'red': (215, 35, 35), 'green': (35, 170, 55), 'blue': (40, 75, 215),
    'yellow': (235, 215, 30), 'purple': (145, 50, 185), 'orange': (245, 135, 20),
    'white': (240, 240, 240),
}
SHAPES = ('circle', 'square', 'triangle', 'diamond', 'star', 'cross')
# (colour, shape) pairs that only the valid split contains.
HELD_OUT = (('red', 'star'), ('blue', 'diamond'), ('green', 'triangle'),
            ('yellow', 'cross'), ('purple', 'circle'), ('orange', 'square'))
DIRECTIONS = {'left': (-1, 0), 'right': (1, 0), 'up': (0, -1), 'down': (0, 1), 'still': (0, 0)}
_PLURAL = {'circle': 'circles', 'square': 'squares', 'triangle': 'triangles',
           'diamond': 'diamonds', 'star': 'stars', 'cross': 'crosses'}
_NUMBER = {2: 'two', 3: 'three', 4: 'four', 5: 'five'}
_GROUP_MOTION = {'left': 'moving to the left', 'right': 'moving to the right',
                 'up': 'moving up', 'down': 'moving down', 'still': 'that are not moving'}
_MOTION = {'left': 'moving to the left', 'right': 'moving to the right', 'up': 'moving up',
           'down': 'moving down', 'still': 'that is not moving'}
_SPLIT_CODE = {'train': 1, 'valid': 2}


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
  """Inside-test of a shape of radius r centred at the origin (dy grows downwards)."""
  if shape == 'circle':
    return dx * dx + dy * dy <= r * r
  if shape == 'square':
    return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * r
  if shape == 'diamond':
    return np.abs(dx) + np.abs(dy) <= r
  if shape == 'triangle':  # pointing up
    return (dy >= -r) & (dy <= 0.7 * r) & (np.abs(dx) <= (dy + r) * 0.62)
  if shape == 'star':  # five rounded points, one pointing up
    theta = np.arctan2(dx, -dy)
    return np.hypot(dx, dy) <= r * (0.62 + 0.38 * np.cos(5 * theta))
  if shape == 'cross':
    ax, ay = np.abs(dx), np.abs(dy)
    return ((ax <= 0.33 * r) & (ay <= r)) | ((ay <= 0.33 * r) & (ax <= r))
  raise ValueError(f'unknown shape {shape!r}')


class _Obj:

  def __init__(self, colour, shape, radius, direction, speed):
    self.colour, self.shape, self.radius = colour, shape, radius
    self.direction, self.speed = direction, speed
    self.start = np.zeros(2)

  def positions(self, n: int) -> np.ndarray:
    d = np.asarray(DIRECTIONS[self.direction], np.float64)
    return self.start[None] + np.arange(n)[:, None] * self.speed * d[None]


class _Scene:
  """Random draws for one video; `rng` is the video's own generator."""

  def __init__(self, rng, n, h, w, allowed):
    self.rng, self.n, self.h, self.w, self.allowed = rng, n, h, w, allowed
    self.base = min(h, w)

  def radius(self, size='normal'):
    lo, hi = {'small': (0.045, 0.06), 'normal': (0.085, 0.12), 'large': (0.14, 0.17)}[size]
    return float(self.rng.uniform(lo, hi) * self.base)

  def speed(self, direction, radius):
    if direction == 'still':
      return 0.0
    extent = self.w if direction in ('left', 'right') else self.h
    travel = self.rng.uniform(0.2, 0.5) * (extent - 2 * radius)
    return float(travel / max(self.n - 1, 1))

  def place(self, obj):
    """Random start keeping the whole trajectory inside the frame."""
    d = np.asarray(DIRECTIONS[obj.direction], np.float64)
    travel = d * obj.speed * (self.n - 1)
    r = obj.radius
    lo = np.array([r, r]) - np.minimum(travel, 0)
    hi = np.array([self.w - r, self.h - r]) - np.maximum(travel, 0)
    obj.start = self.rng.uniform(lo, np.maximum(hi, lo + 1e-3))

  def look(self, exclude=()):
    """A (colour, shape) allowed in this split and not in `exclude`."""
    options = [cs for cs in self.allowed if cs not in exclude]
    return options[self.rng.integers(len(options))]

  def moving(self, colour, shape, size='normal', direction=None):
    if direction is None:
      direction = self.rng.choice(list(DIRECTIONS))
    r = self.radius(size)
    return _Obj(colour, shape, r, str(direction), self.speed(direction, r))


def _separated(objs, n, skip=frozenset(), margin=2.0):
  """True if no two objects (except pairs in `skip`) overlap in any frame."""
  pos = [o.positions(n) for o in objs]
  for i in range(len(objs)):
    for j in range(i + 1, len(objs)):
      if (i, j) in skip:
        continue
      dist = np.linalg.norm(pos[i] - pos[j], axis=-1).min()
      if dist < objs[i].radius + objs[j].radius + margin:
        return False
  return True


def _distractors(scene, objs, exps, count):
  """Objects of unique look (each gets an appearance expression)."""
  for _ in range(count):
    looks = {(o.colour, o.shape) for o in objs}
    c, s = scene.look(exclude=looks)
    objs.append(scene.moving(c, s))
    exps.append((len(objs) - 1, f'the {c} {s}', 'appearance'))


def _make_scene(scene: _Scene, kind: str, num_objects: int):
  """Returns (objects in drawing order, [(object index, expression, kind)], overlap-allowed)."""
  rng = scene.rng
  objs, exps, skip = [], [], set()
  if kind == 'appearance':
    c, s = scene.look()
    objs.append(scene.moving(c, s))
    exps.append((0, f'the {c} {s}', 'appearance'))
    # Share the colour or the shape with the target so that one word is not enough.
    for same in ('colour', 'shape')[:num_objects - 1]:
      looks = {(o.colour, o.shape) for o in objs}
      pool = [cs for cs in scene.allowed if cs not in looks and
              (cs[0] == c if same == 'colour' else cs[1] == s)]
      cs = pool[rng.integers(len(pool))] if pool else scene.look(exclude=looks)
      objs.append(scene.moving(*cs))
      exps.append((len(objs) - 1, f'the {cs[0]} {cs[1]}', 'appearance'))
    _distractors(scene, objs, exps, num_objects - len(objs))
  elif kind == 'motion':
    c, s = scene.look()
    d1, d2 = rng.choice(list(DIRECTIONS), size=2, replace=False)
    r = scene.radius()
    for d in (d1, d2):
      objs.append(_Obj(c, s, r, str(d), scene.speed(d, r)))
      exps.append((len(objs) - 1, f'the {c} {s} {_MOTION[str(d)]}', 'motion'))
    _distractors(scene, objs, exps, num_objects - 2)
  elif kind == 'position':
    c, s = scene.look()
    mode = rng.choice(['size', 'horizontal', 'vertical', 'size+vertical'])
    sizes = ('small', 'large') if 'size' in mode else ('normal', 'normal')
    direction = str(rng.choice(list(DIRECTIONS)))
    pair = [scene.moving(c, s, size, direction) for size in sizes]
    speed = min(o.speed for o in pair)
    for o in pair:
      o.speed = speed  # same motion: only size / place tells them apart
    if 'size' not in mode:
      pair[1].radius = pair[0].radius
    objs += pair
    _distractors(scene, objs, exps, num_objects - 2)
    exps[:0] = [(0, None, 'position'), (1, None, 'position')]  # filled after placement
    return objs, exps, skip, (c, s, mode, sizes)
  elif kind == 'occluded':
    c, s = scene.look()
    c2, s2 = scene.look(exclude={(c, s)})
    target = scene.moving(c, s, 'small', 'still')
    direction = str(rng.choice(['left', 'right', 'up', 'down']))
    occluder = scene.moving(c2, s2, 'large', direction)
    objs += [target, occluder]
    skip.add((0, 1))
    exps.append((0, f'the small {c} {s} behind the {c2} {s2}', 'occluded'))
    exps.append((1, f'the {c2} {s2}', 'appearance'))
    _distractors(scene, objs, exps, num_objects - 2)
  return objs, exps, skip, None


def _place_all(scene, kind, objs, skip, extra):
  n = scene.n
  for _ in range(300):
    for o in objs:
      scene.place(o)
    if kind == 'occluded':
      # The occluder passes over the target around mid-clip and starts clear of it.
      t, occ = objs[0], objs[1]
      d = np.asarray(DIRECTIONS[occ.direction], np.float64)
      t_mid = scene.rng.uniform(0.4, 0.6) * (n - 1)
      occ.start = t.start - d * occ.speed * t_mid
      pos = occ.positions(n)
      inside = ((pos[:, 0] >= occ.radius) & (pos[:, 0] <= scene.w - occ.radius) &
                (pos[:, 1] >= occ.radius) & (pos[:, 1] <= scene.h - occ.radius)).all()
      if not inside or np.linalg.norm(pos[0] - t.start) < occ.radius + t.radius + 2:
        continue
    if kind == 'position':
      c, s, mode, _ = extra
      a, b = objs[0].start, objs[1].start
      gap = 2 * max(objs[0].radius, objs[1].radius)
      if mode == 'horizontal' and abs(a[0] - b[0]) < gap:
        continue
      if 'vertical' in mode and abs(a[1] - b[1]) < gap:
        continue
    if _separated(objs, n, skip):
      return True
  return False


def _position_expressions(objs, extra):
  c, s, mode, sizes = extra
  out = []
  for i in (0, 1):
    me, other = objs[i], objs[1 - i]
    words = ['the']
    if 'size' in mode:
      words.append(sizes[i])
    words += [c, s]
    if mode == 'horizontal':
      words += ['on the', 'left' if me.start[0] < other.start[0] else 'right']
    elif 'vertical' in mode:
      words += ['at the', 'top' if me.start[1] < other.start[1] else 'bottom']
    out.append((i, ' '.join(words), 'position'))
  return out


def _background(rng, n, h, w):
  """A static texture (smooth noise, stripes or checks) in a low-saturation colour."""
  base = rng.uniform(70, 170) + rng.uniform(-15, 15, size=3)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  style = rng.integers(3)
  if style == 0:
    coarse = rng.uniform(-1, 1, size=(h // 16 + 2, w // 16 + 2)).astype(np.float32)
    tex = np.kron(coarse, np.ones((16, 16), np.float32))[:h, :w]
  elif style == 1:
    angle, period = rng.uniform(0, np.pi), rng.uniform(8, 30)
    tex = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
  else:
    cell = int(rng.integers(8, 24))
    tex = (((xx // cell) + (yy // cell)) % 2) * 2 - 1
  bg = base[None, None] + 25 * tex[..., None]
  return bg.astype(np.float32)


def render_video(rng, kind, num_objects, n, h, w, allowed):
  """Returns frames (n,h,w,3) uint8, ids (n,h,w) uint8, [(obj_id, expression, kind)]."""
  scene = _Scene(rng, n, h, w, allowed)
  for _ in range(50):
    objs, exps, skip, extra = _make_scene(scene, kind, num_objects)
    if _place_all(scene, kind, objs, skip, extra):
      break
  if kind == 'position':
    exps = _position_expressions(objs, extra) + exps[2:]
  bg = _background(rng, n, h, w)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  frames = np.empty((n, h, w, 3), np.uint8)
  ids = np.zeros((n, h, w), np.uint8)
  positions = [o.positions(n) for o in objs]
  for t in range(n):
    img = bg.copy()
    for k, o in enumerate(objs):  # drawing order = depth order; later objects occlude
      cx, cy = positions[k][t]
      m = shape_mask(o.shape, xx - cx, yy - cy, o.radius)
      img[m] = COLOURS[o.colour]
      ids[t][m] = k + 1
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)  # sensor noise
    frames[t] = np.clip(img, 0, 255).astype(np.uint8)
  # Every expression's object must be visible somewhere (the occluder sweep can hide it).
  present = set(np.unique(ids).tolist())
  exps = [(k + 1, e, kd) for k, e, kd in exps if (k + 1) in present]
  return frames, ids, exps, objs


def group_expressions(objs, present, rng, allowed, *, multi_object=True, no_target=True,
                      max_multi=2):
  """MeViS-style expressions of a rendered clip: [(object ids, expression, kind)].

  kind 'multi' (several objects; the target is the union of their masks):
    "the two green squares"          a look-alike pair (the motion and position clips' twins)
    "the red shapes"                 every object of a colour, when >= 2 share it
    "the shapes moving to the left"  every object moving one way, when >= 2 and not all do
  up to `max_multi` of them, drawn by `rng`. kind 'none' (MeViS v2's no-target expressions),
  one per clip: the look-alikes' look with a motion neither twin has ("the green square
  moving up"), or a look absent from the clip. Objects never visible are left out.
  """
  visible = [k for k in range(len(objs)) if k + 1 in present]
  candidates = []
  if multi_object:
    by = lambda key: {v: [k for k in visible if key(objs[k]) == v]
                      for v in dict.fromkeys(key(objs[k]) for k in visible)}
    for (c, s), ks in by(lambda o: (o.colour, o.shape)).items():
      if len(ks) >= 2:
        candidates.append((ks, f'the {_NUMBER[len(ks)]} {c} {_PLURAL[s]}'))
    for c, ks in by(lambda o: o.colour).items():
      if len(ks) >= 2 and len({objs[k].shape for k in ks}) > 1:
        candidates.append((ks, f'the {c} shapes'))
    for d, ks in by(lambda o: o.direction).items():
      if 2 <= len(ks) < len(visible):
        candidates.append((ks, f'the shapes {_GROUP_MOTION[d]}'))
  order = rng.permutation(len(candidates))[:max_multi]
  out = [([k + 1 for k in candidates[j][0]], candidates[j][1], 'multi') for j in sorted(order)]
  if no_target:
    looks = {(objs[k].colour, objs[k].shape) for k in range(len(objs))}
    twins = [k for k in visible if sum((objs[j].colour, objs[j].shape) ==
                                       (objs[k].colour, objs[k].shape) for j in visible) == 2]
    unused = [d for d in DIRECTIONS if d not in {objs[k].direction for k in twins}]
    if twins and unused and rng.uniform() < 0.5:
      o = objs[twins[0]]
      out.append(([], f'the {o.colour} {o.shape} {_MOTION[str(rng.choice(unused))]}', 'none'))
    else:
      absent = [cs for cs in allowed if cs not in looks]
      c, s = absent[rng.integers(len(absent))]
      out.append(([], f'the {c} {s}', 'none'))
  return out


def generate(root: str, *, num_train_videos: int = 200, num_valid_videos: int = 50,
             num_frames: int = 24, height: int = 240, width: int = 432, seed: int = 0,
             jpeg_quality: int = 90, layout: str = 'ytvos', multi_object: bool = True,
             no_target: bool = True) -> dict:
  """Writes the dataset under `root`; returns {split: number of expressions}.

  layout 'ytvos' (the default): the Refer-YouTube-VOS layout, splits train and valid, one
  object per expression. layout 'mevis': the MeViS layout (data_pipelines.mevis_layout),
  splits train and valid_u (the same clips as train and valid), each clip's expressions plus
  those of `group_expressions` (multi_object, no_target), drawn from a generator of their own:
  the frames and the one-object expressions are those of the 'ytvos' layout.
  """
  if min(height, width) < 24:
    raise ValueError(f'frames of {height}x{width} are too small to draw shapes on')
  if layout not in ('ytvos', 'mevis'):
    raise ValueError(f"layout={layout!r}; expected 'ytvos' or 'mevis'")
  all_looks = [(c, s) for c in COLOURS for s in SHAPES]
  summary = {}
  mevis = layout == 'mevis'
  for split, count in (('train', num_train_videos), ('valid', num_valid_videos)):
    allowed = [cs for cs in all_looks if split != 'train' or cs not in HELD_OUT]
    meta_exp, kinds, meta = {}, {}, {}
    out_split = 'valid_u' if mevis and split == 'valid' else split
    if mevis:
      from data_pipelines import mevis_layout  # noqa: PLC0415 -- pycocotools only for MeViS
      writer = mevis_layout.SplitWriter(root, out_split)
    for i in range(count):
      rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
      kind = KINDS[i % len(KINDS)]
      num_objects = int(rng.integers(2, 6))
      frames, ids, exps, objs = render_video(rng, kind, num_objects, num_frames, height, width,
                                             allowed)
      video = f'{out_split}_{i:05d}'
      names = [f'{5 * t:05d}' for t in range(num_frames)]
      if mevis:
        group = group_expressions(objs, set(np.unique(ids).tolist()),
                                  np.random.default_rng([seed, _SPLIT_CODE[split], i, 1]),
                                  allowed, multi_object=multi_object, no_target=no_target)
        exps = [([obj], text, kd) for obj, text, kd in exps] + group
        anno = {k + 1: f'{video}_{k + 1}' for k in range(len(objs))}
        writer.add(video, frames, names,
                   {anno[k + 1]: (k + 1, ids == k + 1) for k in range(len(objs))},
                   {str(e): (text, [anno[o] for o in obj]) for e, (obj, text, _) in
                    enumerate(exps)})
        meta_exp[video] = {'expressions': dict.fromkeys(map(str, range(len(exps))))}
        kinds[video] = {str(e): kd for e, (_, _, kd) in enumerate(exps)}
        continue
      img_dir = os.path.join(root, split, 'JPEGImages', video)
      ann_dir = os.path.join(root, split, 'Annotations', video)
      os.makedirs(img_dir, exist_ok=True)
      os.makedirs(ann_dir, exist_ok=True)
      for t, name in enumerate(names):
        ytvos_layout.write_frame(os.path.join(img_dir, name + '.jpg'), frames[t], jpeg_quality)
        ytvos_layout.write_mask(os.path.join(ann_dir, name + '.png'), ids[t])
      meta_exp[video] = {
          'expressions': {str(e): {'exp': text, 'obj_id': str(obj)}
                          for e, (obj, text, _) in enumerate(exps)},
          'frames': names,
      }
      kinds[video] = {str(e): kd for e, (_, _, kd) in enumerate(exps)}
      meta[video] = {'objects': {
          str(k + 1): {'category': o.shape, 'colour': o.colour,
                       'frames': [nm for t, nm in enumerate(names) if (ids[t] == k + 1).any()]}
          for k, o in enumerate(objs)}}
    summary[out_split] = sum(len(v['expressions']) for v in meta_exp.values())
    if mevis:
      writer.close()
      ytvos_layout.write_json(os.path.join(root, out_split, ytvos_layout.EXPRESSION_KINDS),
                              {'videos': kinds})
      continue
    ytvos_layout.write_json(ytvos_layout.meta_expressions_path(root, split),
                            {'videos': meta_exp})
    ytvos_layout.write_json(os.path.join(root, 'meta_expressions', split,
                                         'expression_kinds.json'), {'videos': kinds})
    ytvos_layout.write_json(os.path.join(root, split, 'meta.json'), {'videos': meta})
  settings = {'num_train_videos': num_train_videos, 'num_valid_videos': num_valid_videos,
              'num_frames': num_frames, 'height': height, 'width': width, 'seed': seed,
              'jpeg_quality': jpeg_quality, 'held_out_in_train': [list(cs) for cs in HELD_OUT],
              'num_expressions': summary}
  if mevis:
    settings.update(layout=layout, multi_object=multi_object, no_target=no_target)
  ytvos_layout.write_json(os.path.join(root, 'refer_shapes.json'), settings)
  return summary


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  summary = generate(f.output_dir, num_train_videos=f.num_train_videos,
                     num_valid_videos=f.num_valid_videos, num_frames=f.num_frames,
                     height=f.height, width=f.width, seed=f.seed, jpeg_quality=f.jpeg_quality,
                     layout=f.layout)
  logging.info('wrote %s: %s expressions', f.output_dir, summary)
  print(f'wrote {f.output_dir}: expressions per split {summary}')


if __name__ == '__main__':
  # Flags are defined here, not at import, so importing this module from a trainer whose own
  # flags have the same names (--seed) does not clash.
  flags.DEFINE_string('output_dir', None, 'Where to write the dataset.', required=True)
  flags.DEFINE_integer('num_train_videos', 200, 'Videos in train.')
  flags.DEFINE_integer('num_valid_videos', 50, 'Videos in valid.')
  flags.DEFINE_integer('num_frames', 24, 'Frames per video.')
  flags.DEFINE_integer('height', 240, 'Frame height.')
  flags.DEFINE_integer('width', 432, 'Frame width.')
  flags.DEFINE_integer('seed', 0, 'Random seed; same seed, same dataset.')
  flags.DEFINE_integer('jpeg_quality', 90, 'JPEG quality of the frames.')
  flags.DEFINE_enum('layout', 'ytvos', ['ytvos', 'mevis'], 'Refer-YouTube-VOS (train, valid) '
                    'or MeViS (train, valid_u; with multi-object and no-target expressions).')
  app.run(main)
