"""Refer-DAVIS17 converter on a fake DAVIS 2017 tree."""

import os

import numpy as np
import pytest

from data_pipelines import builders, davis17, pipelines, ytvos_layout
from tests.data_fixtures import tiny_config


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


def test_converted_layout_through_the_builder_and_eval(tmp_path):
  """The converted layout builds with the ReferDavis17 TFDS builder, and one evaluation window
  per expression (3 frames, T=4) carries the right object's masks at the source size."""
  davis, text = _fake_davis(tmp_path)
  out = str(tmp_path / 'refer_davis17')
  davis17.convert(davis, text, out)
  config = tiny_config(out, name='refer_davis17', height=24, width=32, eval_batch_size=2)
  builder = builders.prepare(config)
  assert isinstance(builder, builders.ReferDavis17)
  assert builders.expressions_of(builder, 'valid') == {'dogs-jump': {
      '0': 'a black dog', '3': 'dog running', '4': 'a white dog',
      '5': 'a white dog jumping to the left'}}
  vocab = pipelines.build_vocabulary(builder)
  ds = pipelines.make_eval_dataset(config, builder, vocab, process_index=0, process_count=1)
  ids = np.zeros((24, 32), np.uint8)  # as _fake_davis draws them
  ids[2:8, 2:8], ids[10:20, 12:30] = 1, 2
  seen = []
  for b in pipelines.as_numpy(ds):
    for i in np.flatnonzero(b['example_valid']):
      exp_id = b['exp_id'][i].decode()
      obj = davis17.annotation_of(exp_id)['obj_id']
      assert b['video'][i] == b'dogs-jump' and b['obj_id'][i] == obj
      assert b['frame_index'][i].tolist() == [0, 1, 2, -1]
      assert [n.decode() for n in b['frame_name'][i][:3]] == ['00000', '00001', '00002']
      assert b['orig_size'][i].tolist() == [24, 32]
      for t in range(3):
        np.testing.assert_array_equal(b['masks'][i][t], ids == obj)
        np.testing.assert_array_equal(b['object_masks'][i][t], ids > 0)
      assert not b['masks'][i][3].any() and not b['frames'][i][3].any()
      seen.append(exp_id)
  assert sorted(seen) == ['0', '3', '4', '5']
