"""The synthetic generator: layout, determinism, expression kinds, held-out combinations."""

import filecmp
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from data_pipelines import refer_shapes
from tests.data_fixtures import TINY

pytest_plugins = ('tests.data_fixtures',)  # fixtures without a conftest.py


def _load(root, split, name):
  sub = '' if name == 'meta.json' else os.path.join('meta_expressions', split)
  base = os.path.join(root, split) if name == 'meta.json' else os.path.join(root, sub)
  with open(os.path.join(base, name)) as f:
    return json.load(f)['videos']


def test_layout_is_refer_youtube_vos(tiny_root):
  for split, n in (('train', TINY['num_train_videos']), ('valid', TINY['num_valid_videos'])):
    meta = _load(tiny_root, split, 'meta_expressions.json')
    kinds = _load(tiny_root, split, 'expression_kinds.json')
    assert len(meta) == n and set(kinds) == set(meta)
    for video, entry in meta.items():
      assert len(entry['frames']) == TINY['num_frames']
      assert set(kinds[video]) == set(entry['expressions'])
      for name in entry['frames']:
        img = Image.open(os.path.join(tiny_root, split, 'JPEGImages', video, name + '.jpg'))
        ann = Image.open(os.path.join(tiny_root, split, 'Annotations', video, name + '.png'))
        assert img.size == ann.size == (TINY['width'], TINY['height'])
        assert img.format == 'JPEG' and ann.mode == 'P'  # palette index = object id
      ids = np.stack([np.asarray(Image.open(os.path.join(
          tiny_root, split, 'Annotations', video, f + '.png'))) for f in entry['frames']])
      assert 2 <= ids.max() <= 5
      for e in entry['expressions'].values():
        assert e['exp'] and (ids == int(e['obj_id'])).any()


def test_valid_holds_the_combinations_train_lacks(tiny_root):
  """HELD_OUT looks never appear in train and some do in valid, with an expression naming one
  (what makes valid a test of unseen colour-shape pairs). Valid draws from all 42 looks, 6
  held out, so this is likely but not certain for a small split; the tiny dataset's seed gives
  four such objects, and the generator is deterministic, so the check is stable."""
  held = set(refer_shapes.HELD_OUT)
  looks = {}
  for split in ('train', 'valid'):
    objs = _load(tiny_root, split, 'meta.json')
    looks[split] = {(o['colour'], o['category']) for v in objs.values()
                    for o in v['objects'].values()}
  assert looks['train'] and not looks['train'] & held
  assert looks['valid'] & held, looks['valid']
  texts = [e['exp'] for v in _load(tiny_root, 'valid', 'meta_expressions.json').values()
           for e in v['expressions'].values()]
  assert any(f'the {c} {s}' in t for t in texts for c, s in held), texts


def test_deterministic_and_prefix_stable(tmp_path):
  kw = dict(num_valid_videos=0, num_frames=3, height=32, width=40, seed=5)
  refer_shapes.generate(str(tmp_path / 'a'), num_train_videos=3, **kw)
  refer_shapes.generate(str(tmp_path / 'b'), num_train_videos=3, **kw)
  refer_shapes.generate(str(tmp_path / 'c'), num_train_videos=2, **kw)
  refer_shapes.generate(str(tmp_path / 'd'), num_train_videos=3, **{**kw, 'seed': 6})
  rel = os.path.join('train', 'JPEGImages', 'train_00001', '00005.jpg')
  assert filecmp.cmp(tmp_path / 'a' / rel, tmp_path / 'b' / rel, shallow=False)
  assert filecmp.cmp(tmp_path / 'a' / rel, tmp_path / 'c' / rel, shallow=False)
  assert not filecmp.cmp(tmp_path / 'a' / rel, tmp_path / 'd' / rel, shallow=False)
  ma, mb = (_load(str(tmp_path / x), 'train', 'meta_expressions.json') for x in 'ab')
  assert ma == mb


def test_kinds_need_what_they_say(tmp_path):
  root = str(tmp_path / 'rs')
  refer_shapes.generate(root, num_train_videos=24, num_valid_videos=8, num_frames=6, height=48,
                        width=64, seed=0)
  counts = dict.fromkeys(refer_shapes.KINDS, 0)
  for split in ('train', 'valid'):
    meta = _load(root, split, 'meta_expressions.json')
    kinds = _load(root, split, 'expression_kinds.json')
    objs = _load(root, split, 'meta.json')
    for video, entry in meta.items():
      looks = {k: (o['colour'], o['category']) for k, o in objs[video]['objects'].items()}
      exps = entry['expressions']
      for e, exp in exps.items():
        kind = kinds[video][e]
        counts[kind] += 1
        mine = looks[exp['obj_id']]
        twins = [k for k, lk in looks.items() if lk == mine and k != exp['obj_id']]
        text = exp['exp']
        assert ' '.join(mine) in text, (video, text)
        if kind == 'appearance':
          assert not twins, (video, text)  # colour + shape suffice
        elif kind in ('motion', 'position'):
          assert len(twins) == 1, (video, text)  # a look-alike that only motion/place separates
        if kind == 'motion':
          assert 'moving' in text
        if kind == 'occluded':
          assert text.startswith('the small ') and ' behind the ' in text
      texts = [x['exp'] for x in exps.values()]
      assert len(set(texts)) == len(texts), video  # every expression names one object
      if split == 'train':
        assert not set(looks.values()) & set(refer_shapes.HELD_OUT), video
  assert all(c > 0 for c in counts.values()), counts


def test_occluded_target_is_hidden_for_a_while(tmp_path):
  root = str(tmp_path / 'rs')
  refer_shapes.generate(root, num_train_videos=8, num_valid_videos=0, num_frames=12, height=64,
                        width=96, seed=2)
  kinds = _load(root, 'train', 'expression_kinds.json')
  meta = _load(root, 'train', 'meta_expressions.json')
  hidden = 0
  for video in meta:
    for e, kind in kinds[video].items():
      if kind != 'occluded':
        continue
      obj = int(meta[video]['expressions'][e]['obj_id'])
      area = [(np.asarray(Image.open(os.path.join(root, 'train', 'Annotations', video,
                                                  f + '.png'))) == obj).sum()
              for f in meta[video]['frames']]
      assert area[0] > 0
      hidden += min(area) < max(area)
  assert hidden >= 1


def test_cli(tmp_path):
  out = tmp_path / 'cli'
  subprocess.run([sys.executable, '-m', 'data_pipelines.refer_shapes', '--output_dir', str(out),
                  '--num_train_videos', '1', '--num_valid_videos', '1', '--num_frames', '2',
                  '--height', '32', '--width', '40'], check=True, capture_output=True,
                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert (out / 'meta_expressions' / 'valid' / 'expression_kinds.json').exists()
  assert (out / 'valid' / 'Annotations' / 'valid_00000' / '00005.png').exists()
