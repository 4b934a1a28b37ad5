"""refer_shapes -> TFDS records -> tf.data pipelines: round trip, flip, sharding, eval windows."""

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from data_pipelines import builders, pipelines, ytvos_layout
from data_pipelines.vocabulary import tokenize
from tests.data_fixtures import TINY, copy_layout, drop_obj_ids, tiny_config

pytest_plugins = ('tests.data_fixtures',)  # fixtures without a conftest.py

ALL_TRAIN = [f'train_{i:05d}' for i in range(TINY['num_train_videos'])]


def _meta(root, split='train'):
  with open(os.path.join(root, 'meta_expressions', split, 'meta_expressions.json')) as f:
    return json.load(f)['videos']


def _written(root, split, video, frame_name):
  img = np.asarray(Image.open(os.path.join(root, split, 'JPEGImages', video, frame_name + '.jpg')))
  with open(os.path.join(root, split, 'Annotations', video, frame_name + '.png'), 'rb') as f:
    ids = np.asarray(Image.open(io.BytesIO(f.read())))  # palette index = object id
  return img.astype(np.float32) / 255.0, ids


def _epoch(config, builder, vocab, **kw):
  ds = pipelines.make_train_dataset(config, builder, vocab, repeat=False,
                                    process_index=kw.pop('process_index', 0),
                                    process_count=kw.pop('process_count', 1), **kw)
  out = {}
  for batch in pipelines.as_numpy(ds):
    for b in range(len(batch['video'])):
      key = (batch['video'][b].decode(), batch['exp_id'][b].decode())
      out[key] = {k: v[b] for k, v in batch.items()}
  return out


def test_round_trip(tiny_root, tiny_builder, tiny_vocab):
  config = tiny_config(tiny_root, flip_prob=0.0, photometric_strength=0.0, batch_size=1)
  meta = _meta(tiny_root)
  samples = _epoch(config, tiny_builder, tiny_vocab)
  assert set(samples) == {(v, e) for v in meta for e in meta[v]['expressions']}
  names = meta['train_00000']['frames']
  for (video, exp_id), x in samples.items():
    assert x['frames'].shape == (4, 48, 64, 3) and x['frames'].dtype == np.float32
    assert x['frame_valid'].all()
    obj = int(meta[video]['expressions'][exp_id]['obj_id'])
    assert x['obj_id'] == obj
    for t, fi in enumerate(x['frame_index']):
      img, ids = _written(tiny_root, 'train', video, names[fi])
      err = np.abs(x['frames'][t] - img)
      assert err.max() < 0.06 and err.mean() < 0.01, (video, fi, err.max(), err.mean())
      np.testing.assert_array_equal(x['masks'][t], (ids == obj).astype(np.float32))
      np.testing.assert_array_equal(x['object_masks'][t], (ids > 0).astype(np.float32))
    text = meta[video]['expressions'][exp_id]['exp']
    assert tiny_vocab.decode(x['tokens'], x['token_mask']) == ' '.join(tokenize(text)) == text
    assert x['token_mask'].sum() == len(text.split())
    assert x['boundary'].shape == (4, 48, 64)
    for t in range(4):  # an edge exactly where the target is partly in view
      assert x['boundary'][t].max() == float(0 < x['masks'][t].sum() < 48 * 64)


def test_flip(tiny_root, tiny_builder, tiny_vocab):
  kw = dict(photometric_strength=0.0, batch_size=1)
  plain = _epoch(tiny_config(tiny_root, flip_prob=0.0, **kw), tiny_builder, tiny_vocab)
  flipped = _epoch(tiny_config(tiny_root, flip_prob=1.0, **kw), tiny_builder, tiny_vocab)
  assert plain.keys() == flipped.keys()
  swapped = 0
  for key, a in plain.items():
    b = flipped[key]
    np.testing.assert_array_equal(b['frame_index'], a['frame_index'])
    for k in ('masks', 'object_masks'):
      np.testing.assert_array_equal(b[k], a[k][:, :, ::-1])
    np.testing.assert_allclose(b['frames'], a['frames'][:, :, ::-1], atol=1e-6)
    text_a = tiny_vocab.decode(a['tokens'], a['token_mask']).split()
    text_b = tiny_vocab.decode(b['tokens'], b['token_mask']).split()
    swap = {'left': 'right', 'right': 'left'}
    # A mirror word the training expressions never used is <unk> (a correct, if lossy, flip).
    assert text_b == [tiny_vocab.tokens[tiny_vocab.id(swap.get(w, w))] for w in text_a]
    swapped += any(w in swap for w in text_a)
  assert swapped >= 1, 'the tiny dataset should contain a left/right expression'


def test_deterministic_for_a_seed(tiny_root, tiny_builder, tiny_vocab):
  def first(seed, n=3):
    ds = pipelines.make_train_dataset(tiny_config(tiny_root, seed=seed), tiny_builder,
                                      tiny_vocab, process_index=0, process_count=1)
    return [b for _, b in zip(range(n), pipelines.as_numpy(ds), strict=False)]

  a, b, c = first(0), first(0), first(1)
  for x, y in zip(a, b, strict=True):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)
  assert any(not np.array_equal(x['frames'], y['frames']) for x, y in zip(a, c, strict=True))


def test_resume_continues_the_stream(tiny_root, tiny_builder, tiny_vocab):
  """start_batch=k gives exactly the batches k, k+1, ... of an uninterrupted stream, across
  the end of an epoch (12 batches of 2 are more clips than the tiny split's expressions)."""
  def batches(start, n):
    ds = pipelines.make_train_dataset(tiny_config(tiny_root), tiny_builder, tiny_vocab,
                                      process_index=0, process_count=1, start_batch=start)
    return [b for _, b in zip(range(n), pipelines.as_numpy(ds), strict=False)]

  full = batches(0, 12)
  resumed = batches(7, 5)
  for x, y in zip(full[7:], resumed, strict=True):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_expressions_per_clip_pairs_targets_on_the_same_frames(tiny_root, tiny_builder,
                                                               tiny_vocab):
  """expressions_per_clip=2: neighbours in a batch show one window of one video with two
  different expressions, each with its own object's mask; every video is used once an epoch.
  The pair shares one augmentation draw (flip and colour jitter): identical frames, which the
  model then reads once (train.model_inputs)."""
  config = tiny_config(tiny_root, expressions_per_clip=2, batch_size=4, flip_prob=0.5,
                       photometric_strength=0.5)
  ds = pipelines.make_train_dataset(config, tiny_builder, tiny_vocab, process_index=0,
                                    process_count=1, repeat=False)
  meta, videos = _meta(tiny_root), []
  for x in pipelines.as_numpy(ds):
    for a in (0, 2):
      b = a + 1
      assert x['video'][a] == x['video'][b]
      np.testing.assert_array_equal(x['frame_index'][a], x['frame_index'][b])
      np.testing.assert_array_equal(x['frames'][a], x['frames'][b])
      np.testing.assert_array_equal(x['object_masks'][a], x['object_masks'][b])
      assert x['exp_id'][a] != x['exp_id'][b] and x['obj_id'][a] != x['obj_id'][b]
      assert (x['masks'][a] * x['masks'][b]).sum() == 0  # two objects, two targets
      assert x['masks'][a].sum() > 0 and x['masks'][b].sum() > 0
      videos.append(x['video'][a].decode())
  assert len(videos) == len(set(videos)) >= len(meta) - 1  # drop_remainder may cut one pair
  with pytest.raises(ValueError, match='expressions_per_clip'):
    pipelines.make_train_dataset(tiny_config(tiny_root, expressions_per_clip=3, batch_size=4),
                                 tiny_builder, tiny_vocab, process_index=0, process_count=1)


def _jaccard(a: str, b: str) -> float:
  a, b = set(a.lower().split()), set(b.lower().split())
  return len(a & b) / len(a | b) if a | b else 0.0


def test_expression_similarity_eagerly_and_in_tf_data():
  """Jaccard similarity of the word sets, as Python's sets compute it, both eagerly and
  inside a tf.data map; repeated words count once, an empty expression is like nothing."""
  import tensorflow as tf  # noqa: PLC0415
  exps = ['the green square moving to the left', 'the green square moving up',
          'the red triangle', 'The the red circle', '']
  want = np.array([[_jaccard(a, b) for b in exps] for a in exps], np.float32)
  assert want[0, 1] == pytest.approx(4 / 7) and want[0, 2] == pytest.approx(1 / 8)
  np.testing.assert_allclose(pipelines.expression_similarity(tf.constant(exps)).numpy(), want,
                             rtol=1e-6)
  ds = tf.data.Dataset.from_tensors(tf.constant(exps)).map(pipelines.expression_similarity)
  np.testing.assert_allclose(next(iter(ds)).numpy(), want, rtol=1e-6)


def test_similar_pairing_takes_the_most_similar_expression(tiny_root, tiny_builder, tiny_vocab):
  """expression_pairing='similar': each pair is one expression and the one of its video most
  like it (twins' motion expressions together); every video's expressions still all appear
  first across seeds, and a bad value is refused."""
  meta = _meta(tiny_root)
  exps = {v: {e: d['exp'] for e, d in m['expressions'].items()} for v, m in meta.items()}
  firsts = set()
  for seed in range(3):
    config = tiny_config(tiny_root, expressions_per_clip=2, batch_size=2, flip_prob=0.0,
                         expression_pairing='similar', seed=seed)
    keys = _stream_keys(config, tiny_builder, tiny_vocab)
    for (v, a), (w, b) in zip(keys[::2], keys[1::2], strict=True):
      assert v == w and a != b
      others = {e: _jaccard(exps[v][a], x) for e, x in exps[v].items() if e != a}
      assert others[b] == pytest.approx(max(others.values())), (v, a, b, others)
      firsts.add((v, a))
  assert len({v for v, _ in firsts}) >= len(meta) - 1
  assert len(firsts) > len(meta)  # not always the same first expression of a video
  with pytest.raises(ValueError, match='expression_pairing'):
    _stream_keys(tiny_config(tiny_root, expressions_per_clip=2, batch_size=2,
                             expression_pairing='nearest'), tiny_builder, tiny_vocab)


def _stream_keys(config, builder, vocab):
  ds = pipelines.make_train_dataset(config, builder, vocab, process_index=0, process_count=1,
                                    repeat=False)
  return [(v.decode(), e.decode()) for x in pipelines.as_numpy(ds)
          for v, e in zip(x['video'], x['exp_id'], strict=True)]


def test_kind_repeats_oversample_and_drop_kinds(tiny_root, tiny_builder, tiny_vocab):
  """kind_repeats {kind: n}: each expression of that kind n times per pass, 0 drops the kind,
  1 everywhere is the plain stream, batch for batch."""
  with open(os.path.join(tiny_root, 'meta_expressions', 'train', 'expression_kinds.json')) as f:
    kinds = json.load(f)['videos']
  kind_of = {(v, e): k for v, exps in kinds.items() for e, k in exps.items()}
  motion = {key for key, k in kind_of.items() if k == 'motion'}
  assert motion and len(motion) < len(kind_of)
  base = dict(batch_size=1, flip_prob=0.0)
  plain = _stream_keys(tiny_config(tiny_root, **base), tiny_builder, tiny_vocab)
  ones = _stream_keys(tiny_config(tiny_root, **base, kind_repeats=dict.fromkeys(
      ('appearance', 'motion', 'position', 'occluded'), 1)), tiny_builder, tiny_vocab)
  assert ones == plain and sorted(plain) == sorted(kind_of)
  more = _stream_keys(tiny_config(tiny_root, **base, kind_repeats={'motion': 3}), tiny_builder,
                      tiny_vocab)
  counts = {key: more.count(key) for key in set(more)}
  assert counts == {key: 3 if key in motion else 1 for key in kind_of}
  none = _stream_keys(tiny_config(tiny_root, **base, kind_repeats={'motion': 0}), tiny_builder,
                      tiny_vocab)
  assert sorted(none) == sorted(set(kind_of) - motion)
  # The copies are different clips: their augmentation draws follow their place in the stream.
  ds = pipelines.make_train_dataset(tiny_config(tiny_root, batch_size=1, kind_repeats={
      'motion': 3}), tiny_builder, tiny_vocab, process_index=0, process_count=1, repeat=False)
  copies = {}
  for x in pipelines.as_numpy(ds):
    key = (x['video'][0].decode(), x['exp_id'][0].decode())
    if key in motion:
      copies.setdefault(key, []).append(x['frames'][0])
  assert all(not np.array_equal(c[0], c[1]) for c in copies.values())
  for bad, match in (({'motoin': 2}, "kind 'motoin'"), ({'motion': -1}, 'integer >= 0'),
                     ({'motion': 2.5}, 'integer >= 0')):
    with pytest.raises(ValueError, match=match):
      pipelines.make_train_dataset(tiny_config(tiny_root, kind_repeats=bad), tiny_builder,
                                   tiny_vocab, process_index=0, process_count=1)
  # With expressions_per_clip=2, 0 may drop every expression of a video (here: all but
  # motion): that video yields no clip, the others their two motion expressions.
  only = dict.fromkeys(('appearance', 'position', 'occluded'), 0)
  pairs = _stream_keys(tiny_config(tiny_root, batch_size=2, expressions_per_clip=2,
                                   flip_prob=0.0, kind_repeats=only), tiny_builder, tiny_vocab)
  motion_videos = {v for v, _ in motion}
  assert pairs and set(pairs) <= motion and len(pairs) == 2 * len(motion_videos)
  with pytest.raises(ValueError, match='expressions_per_clip=1'):
    pipelines.make_train_dataset(
        tiny_config(tiny_root, kind_repeats={'motion': 2}, expressions_per_clip=2, batch_size=4),
        tiny_builder, tiny_vocab, process_index=0, process_count=1)


@pytest.mark.parametrize('k', [1, 2])
def test_motion_kinds_mark_the_rows_that_name_a_motion(tiny_root, tiny_builder, tiny_vocab, k,
                                                      tmp_path):
  """motion_kinds: each training row's names_motion is 1.0 exactly where its expression's kind
  (expression_kinds.json) is listed, with one or several expressions per clip; without
  motion_kinds the field is absent; an unknown kind or a dataset without kinds is an error
  naming them."""
  with open(os.path.join(tiny_root, 'meta_expressions', 'train', 'expression_kinds.json')) as f:
    kinds = json.load(f)['videos']
  base = dict(batch_size=2, expressions_per_clip=k, flip_prob=0.0)
  ds = pipelines.make_train_dataset(tiny_config(tiny_root, **base, motion_kinds=('motion',)),
                                    tiny_builder, tiny_vocab, process_index=0, process_count=1,
                                    repeat=False)
  seen = {0.0: 0, 1.0: 0}
  for x in pipelines.as_numpy(ds):
    assert x['names_motion'].dtype == np.float32 and x['names_motion'].shape == (2,)
    for v, e, m in zip(x['video'], x['exp_id'], x['names_motion'], strict=True):
      assert m == float(kinds[v.decode()][e.decode()] == 'motion')
      seen[float(m)] += 1
  assert seen[0.0] and seen[1.0]
  plain = next(pipelines.as_numpy(pipelines.make_train_dataset(
      tiny_config(tiny_root, **base), tiny_builder, tiny_vocab, process_index=0,
      process_count=1, repeat=False)))
  assert 'names_motion' not in plain
  with pytest.raises(ValueError, match="kind.*'motoin'"):
    pipelines.make_train_dataset(tiny_config(tiny_root, **base, motion_kinds=('motoin',)),
                                 tiny_builder, tiny_vocab, process_index=0, process_count=1)
  root = copy_layout(tiny_root, tmp_path / 'no_kinds')
  os.remove(os.path.join(root, 'meta_expressions', 'train', 'expression_kinds.json'))
  with pytest.raises(ValueError, match='expression_kinds.json'):
    pipelines.make_train_dataset(tiny_config(root, **base, motion_kinds=('motion',)),
                                 tiny_builder, tiny_vocab, process_index=0, process_count=1)


def test_batch_layout(tiny_root, tiny_builder, tiny_vocab):
  ds = pipelines.make_train_dataset(tiny_config(tiny_root), tiny_builder, tiny_vocab,
                                    process_index=0, process_count=1)
  x = next(pipelines.as_numpy(ds))
  want = {'frames': ((2, 4, 48, 64, 3), np.float32), 'tokens': ((2, 20), np.int32),
          'token_mask': ((2, 20), np.bool_), 'masks': ((2, 4, 48, 64), np.float32),
          'object_masks': ((2, 4, 48, 64), np.float32), 'boundary': ((2, 4, 48, 64), np.float32),
          'frame_valid': ((2, 4), np.bool_)}
  for k, (shape, dtype) in want.items():
    assert x[k].shape == shape and x[k].dtype == dtype, k
  assert 0.0 <= x['frames'].min() and x['frames'].max() <= 1.0
  assert (x['masks'] <= x['object_masks']).all()  # the target is one of the objects


def test_two_process_shards_are_disjoint_and_complete(tiny_root, tiny_builder, tiny_vocab):
  shards = []
  for index in range(2):
    ds = pipelines.read_records(tiny_builder, 'train', process_index=index, process_count=2)
    shards.append({r['video'].decode() for r in ds.as_numpy_iterator()})
  assert shards[0] and shards[1] and not shards[0] & shards[1]
  assert shards[0] | shards[1] == set(ALL_TRAIN)
  config = tiny_config(tiny_root, batch_size=1)
  for index in range(2):  # the training stream of a host only sees its own videos
    got = {v for v, _ in _epoch(config, tiny_builder, tiny_vocab, process_index=index,
                                process_count=2)}
    assert got == shards[index]


@pytest.mark.parametrize('stride', [1, 2])
def test_eval_windows_cover_every_frame(tiny_root, tiny_builder, tiny_vocab, stride):
  # 8 frames, T=3: stride 1 -> windows 0-2, 3-5, 6-7 (padded); stride 2 -> 0,2,4 / 6 / 1,3,5 / 7
  config = tiny_config(tiny_root, num_frames=3, eval_frame_stride=stride)
  ds = pipelines.make_eval_dataset(config, tiny_builder, tiny_vocab, process_index=0,
                                   process_count=1)
  meta = _meta(tiny_root, 'valid')
  seen = {}
  batches = list(pipelines.as_numpy(ds))
  assert all(b['frames'].shape == (3, 3, 48, 64, 3) for b in batches)
  for b in batches:
    for i in range(3):
      if not b['example_valid'][i]:
        continue
      key = (b['video'][i].decode(), b['exp_id'][i].decode())
      idx = b['frame_index'][i]
      np.testing.assert_array_equal(b['frame_valid'][i], idx >= 0)
      assert not b['frames'][i][idx < 0].any()
      assert b['orig_size'][i].tolist() == [48, 64]
      for t in np.flatnonzero(idx >= 0):
        assert b['frame_name'][i][t].decode() == meta[key[0]]['frames'][idx[t]]
        _, ids = _written(tiny_root, 'valid', key[0], meta[key[0]]['frames'][idx[t]])
        obj = int(meta[key[0]]['expressions'][key[1]]['obj_id'])
        np.testing.assert_array_equal(b['masks'][i][t], ids == obj)
      seen.setdefault(key, []).append(idx[idx >= 0].tolist())
  assert set(seen) == {(v, e) for v in meta for e in meta[v]['expressions']}
  want = [[0, 1, 2], [3, 4, 5], [6, 7]] if stride == 1 else [[0, 2, 4], [6], [1, 3, 5], [7]]
  assert all(w == want for w in seen.values())
  windows = len(want) * len(seen)
  assert sum(int(b['example_valid'].sum()) for b in batches) == windows
  assert len(batches) == -(-windows // 3)  # fillers only complete the last batch


def _nearest(ids, height, width):
  """Nearest-neighbour resize with half-pixel centres (what tf.image.resize 'nearest' does):
  output pixel i reads source pixel floor((i + 0.5) * in / out). Written out here, not taken
  from TF, so a pipeline that resized masks any other way (bilinear then rounded, corner-
  aligned, antialiased) would differ."""
  def index(n_in, n_out):
    i = np.floor((np.arange(n_out, dtype=np.float32) + 0.5) * np.float32(n_in / n_out))
    return np.minimum(i.astype(np.int64), n_in - 1)
  return ids[index(ids.shape[0], height)][:, index(ids.shape[1], width)]


def _bilinear(img, height, width):
  import tensorflow as tf  # noqa: PLC0415 -- the reference only
  return tf.image.resize(img, (height, width), method='bilinear', antialias=False).numpy()


# Source 48x64. 24x32: exactly half, the JPEG decoded at 1/2 DCT scale (no resize), which
# differs from a 2x2 average by DCT ringing at the sharp shape edges; 36x40: ratios 4/3 and 8/5,
# full decode then a bilinear resize. Tolerances on |frame - bilinear resize of the written
# JPEG| (mean, 99th percentile), each about 1.5x what was measured.
@pytest.mark.parametrize('size,tolerance', [((24, 32), (0.012, 0.11)),
                                            ((36, 40), (0.006, 0.018))])
def test_round_trip_resized(tiny_root, tiny_builder, tiny_vocab, size, tolerance):
  """Config size != source size: masks are an exact nearest resize of the written ids, {0, 1},
  frames a bilinear resize (within tolerance, and not shifted), orig_size the source size."""
  h, w = size
  config = tiny_config(tiny_root, height=h, width=w, flip_prob=0.0, photometric_strength=0.0,
                       batch_size=1)
  meta = _meta(tiny_root)
  samples = _epoch(config, tiny_builder, tiny_vocab)
  assert set(samples) == {(v, e) for v in meta for e in meta[v]['expressions']}
  errors, shifted = [], []
  for (video, exp_id), x in samples.items():
    assert x['frames'].shape == (4, h, w, 3) and x['masks'].shape == (4, h, w)
    assert set(np.unique(x['masks'])) <= {0.0, 1.0}
    assert set(np.unique(x['object_masks'])) <= {0.0, 1.0}
    obj = int(meta[video]['expressions'][exp_id]['obj_id'])
    for t, fi in enumerate(x['frame_index']):
      img, ids = _written(tiny_root, 'train', video, meta[video]['frames'][fi])
      small = _nearest(ids, h, w)
      np.testing.assert_array_equal(x['masks'][t], (small == obj).astype(np.float32))
      np.testing.assert_array_equal(x['object_masks'][t], (small > 0).astype(np.float32))
      want = _bilinear(img, h, w)
      errors.append(np.abs(x['frames'][t] - want))
      shifted.append(np.abs(x['frames'][t][:, 1:] - want[:, :-1]))
  errors = np.stack(errors)
  measured = (errors.mean(), np.percentile(errors, 99))
  assert measured[0] < tolerance[0] and measured[1] < tolerance[1], measured
  # Frames and masks line up: a frame one pixel off would match the reference far worse.
  assert np.mean(shifted) > 3 * measured[0], (np.mean(shifted), measured)

  config.eval_batch_size = 2
  ds = pipelines.make_eval_dataset(config, tiny_builder, tiny_vocab, process_index=0,
                                   process_count=1)
  valid, n = _meta(tiny_root, 'valid'), 0
  for b in pipelines.as_numpy(ds):
    for i in np.flatnonzero(b['example_valid']):
      video, exp_id = b['video'][i].decode(), b['exp_id'][i].decode()
      assert b['orig_size'][i].tolist() == [48, 64]  # masks are written back at source size
      obj = int(valid[video]['expressions'][exp_id]['obj_id'])
      for t in np.flatnonzero(b['frame_valid'][i]):
        _, ids = _written(tiny_root, 'valid', video, valid[video]['frames'][b['frame_index'][i][t]])
        np.testing.assert_array_equal(b['masks'][i][t], _nearest(ids, h, w) == obj)
        n += 1
  assert n == TINY['num_frames'] * sum(len(v['expressions']) for v in valid.values())


def test_youtube_vos_valid_layout_without_annotations(tiny_root, tiny_vocab, tmp_path):
  """The published valid split: no valid/Annotations and no obj_id. It builds (as
  refer_youtube_vos), its records have no masks and obj_id 0, and evaluation sees every
  (video, expression) with empty targets (ytvos_layout's documented behaviour), while train
  keeps its masks."""
  root = copy_layout(tiny_root, tmp_path / 'ytvos')
  shutil.rmtree(os.path.join(root, 'valid', 'Annotations'))
  os.remove(os.path.join(root, 'meta_expressions', 'valid', ytvos_layout.EXPRESSION_KINDS))
  valid = drop_obj_ids(ytvos_layout.meta_expressions_path(root, 'valid'))

  config = tiny_config(root, name='refer_youtube_vos')
  builder = builders.prepare(config)
  assert builders.expressions_of(builder, 'valid') == {
      v: {e: x['exp'] for e, x in entry['expressions'].items()} for v, entry in valid.items()}
  records = list(pipelines.read_records(builder, 'valid', process_index=0,
                                        process_count=1).as_numpy_iterator())
  assert sorted(r['video'].decode() for r in records) == sorted(valid)
  for r in records:
    assert len(r['masks']) == 0 and len(r['frames']) == TINY['num_frames']
    assert r['expressions']['obj_id'].tolist() == [0] * len(r['expressions']['exp_id'])
  train = next(pipelines.read_records(builder, 'train', process_index=0,
                                      process_count=1).as_numpy_iterator())
  assert len(train['masks']) == len(train['frames']) and (train['expressions']['obj_id'] > 0).all()

  ds = pipelines.make_eval_dataset(config, builder, tiny_vocab, process_index=0,
                                   process_count=1)
  seen = {}
  for b in pipelines.as_numpy(ds):
    for i in np.flatnonzero(b['example_valid']):
      key = (b['video'][i].decode(), b['exp_id'][i].decode())
      assert b['obj_id'][i] == 0 and b['orig_size'][i].tolist() == [48, 64]
      for k in ('masks', 'object_masks', 'boundary'):
        assert not b[k][i].any(), k
      assert b['frames'][i][b['frame_valid'][i]].std() > 0.05  # real frames, decoded
      seen[key] = seen.get(key, 0) + int(b['frame_valid'][i].sum())
  assert seen == {(v, e): TINY['num_frames'] for v in valid for e in valid[v]['expressions']}
