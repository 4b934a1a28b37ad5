"""Bad input: each case gives an error naming the video / frame / key, or, with
skip_bad_samples, a warning with a count and the rest of the data intact."""

import json
import logging
import os
import re

import numpy as np
import pytest

from data_pipelines import builders, pipelines, ytvos_layout
from data_pipelines.ytvos_layout import BadSampleError, MetaFormatError
from tests.data_fixtures import drop_obj_ids, make_layout, tiny_config


def _meta_path(root):
  return ytvos_layout.meta_expressions_path(root, 'train')


def _edit_meta(root, fn):
  path = _meta_path(root)
  with open(path) as f:
    meta = json.load(f)
  fn(meta)
  with open(path, 'w') as f:
    json.dump(meta, f)


def _read(root, **kw):
  return dict(ytvos_layout.iter_split(root, 'train', **kw))


def _check_skip(root, caplog, want_videos, what):
  with caplog.at_level(logging.WARNING):
    got = _read(root, skip_bad_samples=True)
  assert sorted(got) == want_videos
  assert what in caplog.text, caplog.text
  return got


@pytest.fixture
def layout(tmp_path):
  return make_layout(tmp_path / 'rs')


def test_missing_frame_file(layout, caplog):
  os.remove(os.path.join(layout, 'train', 'JPEGImages', 'train_00000', '00005.jpg'))
  with pytest.raises(BadSampleError, match=r"video 'train_00000': missing frame file .*00005"):
    _read(layout)
  got = _check_skip(layout, caplog, ['train_00001'], 'skipped 1 bad videos')
  assert len(got['train_00001']['frames']) == 4


def test_missing_frame_through_the_tfds_builder(layout):
  os.remove(os.path.join(layout, 'train', 'JPEGImages', 'train_00001', '00000.jpg'))
  with pytest.raises(BadSampleError, match="train_00001"):
    builders.prepare(tiny_config(layout))


@pytest.mark.parametrize('damage', ['truncate', 'garbage'])
def test_corrupt_jpeg(layout, caplog, damage):
  path = os.path.join(layout, 'train', 'JPEGImages', 'train_00001', '00010.jpg')
  data = open(path, 'rb').read()
  data = data[:len(data) // 2] if damage == 'truncate' else data[:200] + b'\x00' * 50
  open(path, 'wb').write(data)
  with pytest.raises(BadSampleError,
                     match=r"video 'train_00001' frame '00010' .*corrupt or unreadable JPEG"):
    _read(layout)
  _check_skip(layout, caplog, ['train_00000'], 'skipped 1 bad videos')


def test_mask_size_differs_from_frame(layout, caplog):
  path = os.path.join(layout, 'train', 'Annotations', 'train_00000', '00015.png')
  ytvos_layout.write_mask(path, np.zeros((20, 40), np.uint8))
  with pytest.raises(BadSampleError, match=r"video 'train_00000' frame '00015': mask size "
                                           r"\(20, 40\).*frame size \(32, 40\)"):
    _read(layout)
  _check_skip(layout, caplog, ['train_00001'], 'skipped 1 bad videos')


def test_obj_id_absent_from_every_mask(layout, caplog):
  _edit_meta(layout, lambda m: m['videos']['train_00000']['expressions']['0'].update(
      obj_id='9'))
  with pytest.raises(BadSampleError, match=r"video 'train_00000' expression '0': obj_id 9 "
                                           r"appears in none"):
    _read(layout)
  got = _check_skip(layout, caplog, ['train_00000', 'train_00001'], 'skipped 0 bad videos '
                    'and 1 bad expressions')
  meta = json.load(open(_meta_path(layout)))['videos']['train_00000']['expressions']
  assert got['train_00000']['expressions']['exp_id'] == sorted(set(meta) - {'0'})


def test_annotations_without_obj_ids_unscored_in_valid_an_error_in_train(tmp_path, caplog):
  """YouTube-VOS ships first-frame masks in valid/Annotations while Refer-YouTube-VOS valid
  publishes no obj_id: such a valid split is read as unscored (said once, no masks read), so
  training does not depend on it; the training split still needs every obj_id."""
  root = make_layout(tmp_path / 'rs', num_valid_videos=2)
  assert ytvos_layout.split_is_scored(root, 'valid')
  drop_obj_ids(ytvos_layout.meta_expressions_path(root, 'valid'))
  assert os.path.isdir(os.path.join(root, 'valid', 'Annotations'))
  assert not ytvos_layout.split_is_scored(root, 'valid')
  with caplog.at_level(logging.WARNING):
    valid = dict(ytvos_layout.iter_split(root, 'valid'))
  assert len(valid) == 2 and all(not r['masks'] for r in valid.values())
  assert all(set(r['expressions']['obj_id']) == {0} for r in valid.values())
  assert caplog.text.count('is unscored') == 1, caplog.text
  # Built into records beside a scored train split, as the training run does.
  builder = builders.prepare(tiny_config(root))
  assert builders.expressions_of(builder, 'valid')
  drop_obj_ids(ytvos_layout.meta_expressions_path(root, 'train'))
  with pytest.raises(BadSampleError, match=r"video 'train_00000' expression '0': no obj_id "
                                           r'although the split has Annotations'):
    _read(root)


def test_empty_expression(layout, caplog):
  _edit_meta(layout, lambda m: m['videos']['train_00001']['expressions']['1'].update(exp='  '))
  with pytest.raises(BadSampleError, match=r"video 'train_00001' expression '1': empty"):
    _read(layout)
  got = _check_skip(layout, caplog, ['train_00000', 'train_00001'], '1 bad expressions')
  assert '1' not in got['train_00001']['expressions']['exp_id']


@pytest.mark.parametrize('edit,key', [
    (lambda m: m.pop('videos'), '<top level>'),
    (lambda m: m.update(videos=['train_00000']), 'videos'),
    (lambda m: m['videos']['train_00000'].pop('expressions'),
     "videos['train_00000'].expressions"),
    (lambda m: m['videos']['train_00000']['expressions']['0'].pop('exp'),
     "videos['train_00000'].expressions['0'].exp"),
    (lambda m: m['videos']['train_00001']['expressions']['1'].update(obj_id='two'),
     "videos['train_00001'].expressions['1'].obj_id"),
    (lambda m: m['videos']['train_00001'].update(frames='00000'),
     "videos['train_00001'].frames"),
])
def test_meta_expressions_of_the_wrong_shape(layout, edit, key):
  _edit_meta(layout, edit)
  with pytest.raises(MetaFormatError, match=re.escape(f'meta_expressions.json: {key}:')):
    _read(layout)
  with pytest.raises(MetaFormatError):  # a broken file is never "skipped"
    _read(layout, skip_bad_samples=True)


def test_meta_expressions_not_json(layout):
  open(_meta_path(layout), 'w').write('{"videos": ')
  with pytest.raises(MetaFormatError, match='not valid JSON'):
    _read(layout)


# A 3-frame layout (T=4) whose video train_00000 has a 25-word expression '0'.
LONG = ' '.join(['the'] * 24 + ['circle'])


@pytest.fixture(scope='module')
def short_long(tmp_path_factory):
  root = make_layout(tmp_path_factory.mktemp('short') / 'rs', num_frames=3)
  _edit_meta(root, lambda m: m['videos']['train_00000']['expressions']['0'].update(exp=LONG))
  builder = builders.prepare(tiny_config(root))
  return root, builder, pipelines.build_vocabulary(builder)


def _samples(root, builder, vocab, **kw):
  config = tiny_config(root, height=32, width=40, batch_size=1, **kw)
  ds = pipelines.make_train_dataset(config, builder, vocab, repeat=False, process_index=0,
                                    process_count=1)
  return {(b['video'][0].decode(), b['exp_id'][0].decode()): b
          for b in pipelines.as_numpy(ds)}


def test_video_with_fewer_frames_than_t_is_padded(short_long):
  root, builder, vocab = short_long
  samples = _samples(root, builder, vocab)
  for b in samples.values():
    assert b['frame_valid'][0].tolist() == [True, True, True, False]
    assert b['frame_index'][0].tolist() == [0, 1, 2, -1]
    for k in ('frames', 'masks', 'object_masks', 'boundary'):
      assert not b[k][0, 3].any(), k
    assert b['object_masks'][0, :3].any()


def test_expression_longer_than_n_words(short_long, caplog):
  root, builder, vocab = short_long
  samples = _samples(root, builder, vocab)  # default: truncate to N=20
  b = samples[('train_00000', '0')]
  assert b['token_mask'].sum() == 20 and vocab.decode(b['tokens'][0]) == ' '.join(['the'] * 20)
  with pytest.raises(ValueError, match=r"video 'train_00000' expression '0' \(25 words\)"):
    _samples(root, builder, vocab, long_expressions='error')
  with caplog.at_level(logging.WARNING):
    skipped = _samples(root, builder, vocab, long_expressions='error', skip_bad_samples=True)
  assert 'skipping 1 of' in caplog.text
  assert set(skipped) == set(samples) - {('train_00000', '0')}
  # Dropped also when expressions are drawn in groups sharing a window.
  config = tiny_config(root, height=32, width=40, batch_size=2, expressions_per_clip=2,
                       long_expressions='error', skip_bad_samples=True)
  ds = pipelines.make_train_dataset(config, builder, vocab, repeat=False, process_index=0,
                                    process_count=1)
  grouped = {(v.decode(), e.decode()) for b in pipelines.as_numpy(ds)
             for v, e in zip(b['video'], b['exp_id'], strict=True)}
  assert grouped and ('train_00000', '0') not in grouped


def test_kind_repeats_without_or_with_a_broken_kinds_file(short_long):
  """kind_repeats needs refer_shapes' expression_kinds.json; its absence or a broken one is an
  error naming the file (an all-ones kind_repeats needs no file: it is the plain stream)."""
  root, builder, vocab = short_long
  path = os.path.join(root, 'meta_expressions', 'train', ytvos_layout.EXPRESSION_KINDS)
  saved = open(path).read()
  try:
    os.remove(path)
    with pytest.raises(ValueError, match=re.escape(ytvos_layout.EXPRESSION_KINDS)):
      _samples(root, builder, vocab, kind_repeats={'motion': 2})
    assert _samples(root, builder, vocab, kind_repeats={'motion': 1})
    with open(path, 'w') as f:
      json.dump({'videos': {'train_00000': {'0': 3}}}, f)
    with pytest.raises(MetaFormatError, match=re.escape(path)):
      _samples(root, builder, vocab, kind_repeats={'motion': 2})
  finally:
    with open(path, 'w') as f:
      f.write(saved)


@pytest.mark.parametrize('verify_jpeg', [True, False])
def test_truncated_jpeg_through_the_tfds_builder(layout, verify_jpeg):
  """Named by the build, video and frame file, with or without verify_jpeg: without it, a
  frame lacking the end-of-image marker is decoded all the same (tf.io.decode_jpeg would fail
  on it mid-training with "jpeg::Uncompress failed", naming no file)."""
  path = os.path.join(layout, 'train', 'JPEGImages', 'train_00001', '00010.jpg')
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:len(data) // 2])
  with pytest.raises(BadSampleError, match=r"video 'train_00001' frame '00010' \(.*"
                                           + re.escape(path) + r"\): corrupt or unreadable"):
    builders.prepare(tiny_config(layout, verify_jpeg=verify_jpeg))


def test_verify_jpeg_off_keeps_valid_frames_with_trailing_bytes(layout):
  """The end-of-image look only sends frames to a full decode; a valid JPEG padded past the
  part searched (which some encoders do) still builds and reads."""
  path = os.path.join(layout, 'train', 'JPEGImages', 'train_00000', '00005.jpg')
  data = open(path, 'rb').read()
  open(path, 'wb').write(data + b'\0' * 3000)
  got = _read(layout, verify_jpeg=False)
  assert sorted(got) == ['train_00000', 'train_00001']
  assert got['train_00000']['frames'][1] == data + b'\0' * 3000


def test_skip_bad_samples_end_to_end(tmp_path, caplog):
  """skip_bad_samples=True: builders.prepare -> records -> make_train_dataset drops a video
  with a missing mask and an expression with an unknown obj_id, warns with the counts, and
  keeps every other (video, expression)."""
  root = make_layout(tmp_path / 'rs', num_train_videos=4)
  os.remove(os.path.join(root, 'train', 'Annotations', 'train_00001', '00005.png'))
  _edit_meta(root, lambda m: m['videos']['train_00002']['expressions']['0'].update(obj_id='9'))
  meta = json.load(open(_meta_path(root)))['videos']
  want = {(v, e) for v in meta for e in meta[v]['expressions']
          if v != 'train_00001' and (v, e) != ('train_00002', '0')}
  assert len(want) == sum(len(meta[v]['expressions']) for v in meta) - len(
      meta['train_00001']['expressions']) - 1

  config = tiny_config(root, height=32, width=40, batch_size=1, flip_prob=0.0,
                       skip_bad_samples=True)
  with pytest.raises(BadSampleError, match=r"video 'train_00001': missing mask file"):
    builders.prepare(tiny_config(root, tfds_data_dir=str(tmp_path / 'strict')))
  with caplog.at_level(logging.WARNING):
    builder = builders.prepare(config)
  assert 'skipped 1 bad videos and 1 bad expressions of 4 videos' in caplog.text, caplog.text
  assert builder.info.splits['train'].num_examples == 3
  assert sorted(builders.expressions_of(builder, 'train')) == [
      'train_00000', 'train_00002', 'train_00003']
  ds = pipelines.make_train_dataset(config, builder, pipelines.build_vocabulary(builder),
                                    repeat=False, process_index=0, process_count=1)
  got = [(b['video'][0].decode(), b['exp_id'][0].decode()) for b in pipelines.as_numpy(ds)]
  assert len(got) == len(want) and set(got) == want


def _eval_keys(root, builder, vocab, **kw):
  config = tiny_config(root, height=32, width=40, eval_batch_size=2, **kw)
  ds = pipelines.make_eval_dataset(config, builder, vocab, split='train', process_index=0,
                                   process_count=1)
  return {(b['video'][i].decode(), b['exp_id'][i].decode()): b['token_mask'][i]
          for b in pipelines.as_numpy(ds) for i in np.flatnonzero(b['example_valid'])}


def test_long_expression_in_evaluation(short_long, caplog):
  """make_eval_dataset follows config.long_expressions as training does: 'truncate' (the
  default) keeps the first N words, 'error' raises naming the video and exp_id, and with
  skip_bad_samples leaves the expression out with a warning and a count."""
  root, builder, vocab = short_long
  assert tiny_config(root).long_expressions == 'truncate'
  truncated = _eval_keys(root, builder, vocab)
  meta = json.load(open(_meta_path(root)))['videos']
  assert set(truncated) == {(v, e) for v in meta for e in meta[v]['expressions']}
  assert truncated[('train_00000', '0')].sum() == 20
  with pytest.raises(ValueError, match=r"video 'train_00000' expression '0' \(25 words\)"):
    _eval_keys(root, builder, vocab, long_expressions='error')
  with caplog.at_level(logging.WARNING):
    skipped = _eval_keys(root, builder, vocab, long_expressions='error', skip_bad_samples=True)
  assert re.search(r'skipping 1 of \d+ expressions longer than max_words=20', caplog.text)
  assert set(skipped) == set(truncated) - {('train_00000', '0')}
