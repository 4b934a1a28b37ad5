"""Refer-DAVIS17 converter on a fake DAVIS 2017 tree."""

import os

import numpy as np
import pytest

from data_pipelines import davis17, ytvos_layout


def _fake_davis(tmp_path):
  root = tmp_path / 'DAVIS'
  rng = np.random.default_rng(0)
  for video in ('bear', 'dogs-jump'):
    img_dir = root / 'JPEGImages' / '480p' / video
    ann_dir = root / 'Annotations' / '480p' / video
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    for t in range(3):
      ytvos_layout.write_frame(str(img_dir / f'{t:05d}.jpg'),
                               rng.integers(0, 255, (24, 32, 3)).astype(np.uint8))
      ids = np.zeros((24, 32), np.uint8)
      ids[2:8, 2:8], ids[10:20, 12:30] = 1, 2
      ytvos_layout.write_mask(str(ann_dir / f'{t:05d}.png'), ids)
  sets = root / 'ImageSets' / '2017'
  sets.mkdir(parents=True)
  (sets / 'train.txt').write_text('bear\n')
  (sets / 'val.txt').write_text('dogs-jump\n')
  text = tmp_path / 'davis_text_annotations'
  text.mkdir()
  lines = {
      'Davis17_annot1.txt': ['bear 1 "a brown bear"', 'dogs-jump 1 "a black dog"',
                             'dogs-jump 2 "a white dog"'],
      'Davis17_annot1_full_video.txt': ['bear 1 "a bear walking"',
                                        'dogs-jump 2 "a white dog jumping to the left"'],
      'Davis17_annot2.txt': ['bear 1 "big bear"'],
      'Davis17_annot2_full_video.txt': ['bear 1 "bear walking on rocks"',
                                        'dogs-jump 1 dog running'],
  }
  for name, ls in lines.items():
    (text / name).write_text('\n'.join(ls) + '\n')
  return str(root), str(text)


def test_convert_gives_the_community_ids(tmp_path):
  davis, text = _fake_davis(tmp_path)
  out = str(tmp_path / 'refer_davis17')
  assert davis17.convert(davis, text, out) == {'train': 4, 'valid': 4}
  train = dict(ytvos_layout.iter_split(out, 'train'))
  valid = dict(ytvos_layout.iter_split(out, 'valid'))
  assert list(train) == ['bear'] and list(valid) == ['dogs-jump']
  e = train['bear']['expressions']
  assert dict(zip(e['exp_id'], e['exp'], strict=True)) == {
      '0': 'a brown bear', '1': 'a bear walking', '2': 'big bear', '3': 'bear walking on rocks'}
  e = valid['dogs-jump']['expressions']
  got = dict(zip(e['exp_id'], zip(e['exp'], e['obj_id'], strict=True), strict=True))
  # object 1: 4*0 + {0, 3}; object 2: 4*1 + {0, 1}
  assert got == {'0': ('a black dog', 1), '3': ('dog running', 1), '4': ('a white dog', 2),
                 '5': ('a white dog jumping to the left', 2)}
  assert davis17.annotation_of('5') == {'obj_id': 2, 'annotator': 1, 'full_video': True}
  assert davis17.annotation_of(2) == {'obj_id': 1, 'annotator': 2, 'full_video': False}
  assert len(valid['dogs-jump']['frames']) == 3 and valid['dogs-jump']['height'] == 24


def test_full_video_only_and_symlink(tmp_path):
  davis, text = _fake_davis(tmp_path)
  out = str(tmp_path / 'out')
  davis17.convert(davis, text, out, symlink=True, full_video_only=True)
  e = dict(ytvos_layout.iter_split(out, 'train'))['bear']['expressions']
  assert e['exp_id'] == ['1', '3']
  assert os.path.islink(os.path.join(out, 'train', 'JPEGImages', 'bear', '00000.jpg'))


def test_bad_text_line_names_file_and_line(tmp_path):
  davis, text = _fake_davis(tmp_path)
  with open(os.path.join(text, 'Davis17_annot2.txt'), 'a') as f:
    f.write('bear "no object id"\n')
  with pytest.raises(ValueError, match=r'Davis17_annot2.txt:2'):
    davis17.convert(davis, text, str(tmp_path / 'out'))
