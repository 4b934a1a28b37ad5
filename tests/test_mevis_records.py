"""MeViS through the whole stack: label maps exact under overlap, the TFDS records, the
pipelines' union and empty targets (eagerly and inside tf.data, with the flip), the bad input
the builder names, refer_shapes' MeViS layout, the losses on empty targets, the submission
zip, and one end-to-end run of main.py on refer_shapes_mevis."""

import itertools
import json
import os
import shutil
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from data_pipelines import builders, mevis_layout, pipelines, refer_shapes, ytvos_layout
from data_pipelines.config import get_data_config
from rvos_jax import losses, predict

H, W, N = 24, 32, 5


def _disc(cy, cx, r):
  yy, xx = np.mgrid[:H, :W]
  return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _objects():
  """Four objects over N frames: A and B overlap (B moves right over A), C apart, D only in
  frames 1-2 (null elsewhere)."""
  a = np.stack([_disc(12, 10, 6)] * N)
  b = np.stack([_disc(12, 8 + 2 * t, 5) for t in range(N)])
  c = np.stack([_disc(5, 26, 4)] * N)
  d = np.zeros((N, H, W), bool)
  d[1:3] = _disc(19, 26, 3)
  return {'a': (1, a), 'b': (2, b), 'c': (3, c), 'd': (4, d)}


EXPRESSIONS = {'0': ('the cat on the left', ['a']), '1': ('the cats moving right', ['a', 'b']),
               '2': ('the dog and the bird', ['b', 'c']), '3': ('the horse', []),
               '4': ('the bird', ['c']), '5': ('every animal', ['a', 'b', 'c', 'd'])}


def _frames(seed):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 255, (N, H, W, 3), dtype=np.uint8)


def _write(root, splits=('train', 'valid_u'), videos=('v0', 'v1')):
  objects = _objects()
  for split in splits:
    writer = mevis_layout.SplitWriter(str(root), split, with_masks=split != 'valid')
    for i, video in enumerate(videos):
      # anno_ids are unique over the split (as MeViS's)
      objs = {f'{video}_{k}': v for k, v in objects.items()}
      exps = {e: (t, [f'{video}_{a}' for a in annos]) for e, (t, annos) in EXPRESSIONS.items()}
      writer.add(video, _frames(i), [f'{5 * t:05d}' for t in range(N)], objs, exps)
    writer.close()
  return str(root)


def _config(root, **overrides):
  c = get_data_config()
  c.name = 'refer_shapes_mevis'  # the MeViS-layout builder, not generated: the root has data
  c.root = str(root)
  c.num_frames, c.height, c.width = N, H, W
  c.train_split, c.eval_split = 'train', 'valid_u'
  c.batch_size, c.eval_batch_size, c.shuffle_buffer = 2, 2, 8
  c.update(overrides)
  return c


def _target(root, split, video, exp_id):
  meta = mevis_layout.read_meta_expressions(os.path.join(root, split, 'meta_expressions.json'))
  mask_dict = mevis_layout.read_mask_dict(os.path.join(root, split, 'mask_dict.json'))
  return mevis_layout.expression_target(mask_dict, video, exp_id,
                                        meta[video]['expressions'][exp_id]['anno_id'], N, (H, W))


@pytest.fixture(scope='module')
def mevis_root(tmp_path_factory):
  return _write(tmp_path_factory.mktemp('mevis'), splits=('train', 'valid_u', 'valid'))


@pytest.fixture(scope='module')
def mevis_builder(mevis_root):
  return builders.prepare(_config(mevis_root))


def test_label_maps_give_exact_unions_where_objects_overlap():
  rng = np.random.default_rng(0)
  masks = rng.random((4, 3, H, W)) < 0.4  # heavy overlap: many label sets
  tracks = [[mevis_layout.encode_rle(m) for m in obj] for obj in masks]
  tracks[2][1] = None  # object 2 absent from frame 1
  masks[2, 1] = False
  maps, sets = mevis_layout.label_maps(tracks, 3, (H, W), 'here')
  assert len(sets) == len(set(sets)) and 0 not in sets
  for r in range(5):
    for objects in itertools.combinations(range(4), r):
      members = mevis_layout.members(sets, objects)
      for t in range(3):
        want = np.zeros((H, W), bool)
        for i in objects:
          want |= masks[i, t]
        np.testing.assert_array_equal(members[maps[t]], want)
  # Where no two objects overlap, the label is 1 + the object's index (an id map).
  apart = [[mevis_layout.encode_rle(_disc(6, 6, 3))], [mevis_layout.encode_rle(_disc(16, 24, 3))]]
  (ids,), _ = mevis_layout.label_maps(apart, 1, (H, W), 'here')
  assert set(np.unique(ids)) == {0, 1, 2} and ids[6, 6] == 1 and ids[16, 24] == 2


def test_records_hold_label_maps_members_and_obj_ids(mevis_root, mevis_builder):
  assert set(mevis_builder.info.splits) == {'train', 'valid_u', 'valid'}
  rec = next(iter(mevis_builder.as_dataset(split='valid_u').take(1).as_numpy_iterator()))
  ex = rec['expressions']
  assert [e.decode() for e in ex['exp_id']] == list(EXPRESSIONS)
  # obj_id: the one object's id, -1 for several, 0 for none
  assert ex['obj_id'].tolist() == [1, -1, -1, 0, 3, -1]
  assert not ex['members'][3].any()  # no target
  unscored = next(iter(mevis_builder.as_dataset(split='valid').take(1).as_numpy_iterator()))
  assert len(unscored['masks']) == 0 and not unscored['expressions']['members'].any()
  assert builders.expressions_of(mevis_builder, 'valid_u')['v0']['3'] == 'the horse'


def test_eval_pipeline_targets_are_exactly_the_unions(mevis_root, mevis_builder):
  config = _config(mevis_root)
  vocab = pipelines.build_vocabulary(mevis_builder)
  seen = set()
  for batch in pipelines.as_numpy(pipelines.make_eval_dataset(config, mevis_builder, vocab)):
    for b in np.flatnonzero(batch['example_valid']):
      video, exp_id = batch['video'][b].decode(), batch['exp_id'][b].decode()
      want = _target(mevis_root, 'valid_u', video, exp_id)
      np.testing.assert_array_equal(batch['masks'][b] > 0.5, want, err_msg=f'{video}/{exp_id}')
      union = np.zeros((N, H, W), bool)
      for _, m in _objects().values():
        union |= m
      np.testing.assert_array_equal(batch['object_masks'][b] > 0.5, union)
      if exp_id == '3':
        assert not batch['masks'][b].any() and not batch['boundary'][b].any()
      seen.add((video, exp_id))
  assert len(seen) == 2 * len(EXPRESSIONS)


def _train_batches(root, builder, count, **overrides):
  config = _config(root, **overrides)
  vocab = pipelines.build_vocabulary(builder)
  ds = pipelines.make_train_dataset(config, builder, vocab, process_index=0, process_count=1)
  return vocab, list(ds.take(count).as_numpy_iterator())


@pytest.mark.parametrize('per_clip', [1, 2])
def test_train_flip_mirrors_the_union_and_swaps_the_words(mevis_root, mevis_builder, per_clip):
  vocab, batches = _train_batches(mevis_root, mevis_builder, 6, flip_prob=1.0,
                                  photometric_strength=0.0, expressions_per_clip=per_clip)
  seen = set()
  for batch in batches:
    for b in range(len(batch['video'])):
      video, exp_id = batch['video'][b].decode(), batch['exp_id'][b].decode()
      idx = batch['frame_index'][b]
      want = _target(mevis_root, 'train', video, exp_id)[idx][:, :, ::-1]
      np.testing.assert_array_equal(batch['masks'][b] > 0.5, want, err_msg=f'{video}/{exp_id}')
      text = EXPRESSIONS[exp_id][0]
      mirrored = ' '.join({'left': 'right', 'right': 'left'}.get(w, w) for w in text.split())
      tokens, mask = vocab.encode(mirrored, 20)
      np.testing.assert_array_equal(batch['tokens'][b], tokens)
      np.testing.assert_array_equal(batch['token_mask'][b], mask)
      seen.add(exp_id)
  assert {'0', '1', '3'} & seen, seen  # a 'left' / 'right' one or the empty one was drawn


def test_target_masks_op_eagerly_and_in_tf_data():
  ids = tf.constant(np.array([[[0, 1, 2], [3, 1, 0]]], np.uint8))  # (T=1, 2, 3)
  members = np.zeros((2, 256), bool)
  members[0, [1, 3]] = True  # expression 0: labels 1 and 3; expression 1: none
  want = np.array([[[[0, 1, 0], [1, 1, 0]]], [[[0, 0, 0], [0, 0, 0]]]], np.float32)
  target, objects = pipelines._target_masks(ids, tf.constant([-1, 0]), tf.constant(members))
  np.testing.assert_array_equal(target.numpy(), want)
  np.testing.assert_array_equal(objects.numpy(), (ids.numpy() > 0).astype(np.float32))
  ds = tf.data.Dataset.from_tensors((ids, members[0])).map(
      lambda i, m: pipelines._target_masks(i, tf.constant(-1), m)[0])
  np.testing.assert_array_equal(next(iter(ds)).numpy(), want[0])


def test_bad_input_is_named_and_skippable(tmp_path):
  root = _write(tmp_path / 'bad', splits=('train',))
  meta_path = os.path.join(root, 'train', 'meta_expressions.json')
  meta = json.load(open(meta_path))
  meta['videos']['v1']['expressions']['4']['anno_id'] = ['nobody']
  json.dump(meta, open(meta_path, 'w'))
  with pytest.raises(ytvos_layout.BadSampleError,
                     match=r"video 'v1' expression '4': anno_id 'nobody' is not in "
                           r'mask_dict.json'):
    list(mevis_layout.iter_split(root, 'train'))
  records = dict(mevis_layout.iter_split(root, 'train', skip_bad_samples=True))
  assert records['v1']['expressions']['exp_id'] == ['0', '1', '2', '3', '5']
  assert len(records['v0']['expressions']['exp_id']) == len(EXPRESSIONS)

  mask_path = os.path.join(root, 'train', 'mask_dict.json')
  mask_dict = json.load(open(mask_path))
  mask_dict['v0_c'][2] = mevis_layout.encode_rle(np.zeros((H + 1, W), bool) | True)
  json.dump(mask_dict, open(mask_path, 'w'))
  with pytest.raises(ytvos_layout.BadSampleError,
                     match=r"video 'v0' frame 2 object 2: RLE of size 25x32 \(HxW\) but the "
                           r'frame is 24x32'):
    next(mevis_layout.iter_split(root, 'train'))
  open(mask_path, 'w').write('{"v0_a": [')
  with pytest.raises(mevis_layout.MevisFormatError, match=r'mask_dict.json: not valid JSON'):
    next(mevis_layout.iter_split(root, 'train'))


def test_losses_on_an_empty_target():
  """An empty target is a valid target: Dice and focal push the mask to 0, the boundary loss
  falls back to the plain BCE of a one-class frame, and the confidence's target is the IoU of
  empty against empty, 1."""
  target = jnp.zeros((1, 2, 8, 8))
  weights = jnp.ones((1, 2))
  low, high = jnp.full((1, 2, 8, 8), -8.0), jnp.full((1, 2, 8, 8), 3.0)
  for loss in (losses.dice_loss, losses.sigmoid_focal_loss, losses.boundary_loss):
    lo, hi = float(loss(low, target, weights)), float(loss(high, target, weights))
    assert np.isfinite(lo) and np.isfinite(hi) and lo < 0.05 < hi, (loss.__name__, lo, hi)
  np.testing.assert_allclose(losses.mask_iou(low, target), 1.0)
  np.testing.assert_allclose(losses.mask_iou(high, target), 0.0)
  conf = float(losses.confidence_loss(jnp.full((1, 2), 6.0), low, target, weights))
  assert conf < 1e-4  # confident (sigmoid(6) ~ 1) of an empty mask on an empty target: right


def test_mevis_submission_zip_has_videos_at_the_top(tmp_path):
  out = tmp_path / 'pred'
  for video, exp_id in (('v0', '0'), ('v0', '3'), ('v1', '1')):
    predict.write_masks(np.zeros((2, 4, 4), bool), ['00000', '00005'],
                        str(out / 'Annotations' / video / exp_id))
  names = zipfile.ZipFile(predict.write_submission_zip(str(out), str(tmp_path / 'm.zip'),
                                                       'mevis')).namelist()
  assert sorted(names) == [f'{v}/{e}/{f}.png' for v, e in (('v0', '0'), ('v0', '3'), ('v1', '1'))
                           for f in ('00000', '00005')]
  ytvos = zipfile.ZipFile(predict.write_submission_zip(str(out), str(tmp_path / 'y.zip')))
  assert all(n.startswith('Annotations/') for n in ytvos.namelist())


def test_refer_shapes_mevis_layout(tmp_path):
  scale = dict(num_train_videos=4, num_valid_videos=4, num_frames=6, height=40, width=56, seed=5)
  mevis = str(tmp_path / 'mevis')
  ytvos = str(tmp_path / 'ytvos')
  summary = refer_shapes.generate(mevis, layout='mevis', **scale)
  refer_shapes.generate(ytvos, **scale)
  assert set(summary) == {'train', 'valid_u'}
  for split, ysplit in (('train', 'train'), ('valid_u', 'valid')):
    meta = mevis_layout.read_meta_expressions(os.path.join(mevis, split, 'meta_expressions.json'))
    mask_dict = mevis_layout.read_mask_dict(os.path.join(mevis, split, 'mask_dict.json'))
    kinds = ytvos_layout.read_expression_kinds(os.path.join(mevis, split, 'meta_expressions.json'))
    ymeta = ytvos_layout.read_meta_expressions(ytvos_layout.meta_expressions_path(ytvos, ysplit))
    counts = {}
    for i, video in enumerate(sorted(meta)):
      yvideo = f'{ysplit}_{i:05d}'
      # The same clips and one-object expressions as the Refer-YouTube-VOS layout.
      for name in meta[video]['frames']:
        a = open(os.path.join(mevis, split, 'JPEGImages', video, name + '.jpg'), 'rb').read()
        b = open(os.path.join(ytvos, ysplit, 'JPEGImages', yvideo, name + '.jpg'), 'rb').read()
        assert a == b
      ids = np.stack([ytvos_layout.decode_mask(
          open(os.path.join(ytvos, ysplit, 'Annotations', yvideo, n + '.png'), 'rb').read(), n)
          for n in meta[video]['frames']])
      singles = [e['exp'] for e in meta[video]['expressions'].values() if len(e['obj_id']) == 1]
      assert singles == [e['exp'] for e in ymeta[yvideo]['expressions'].values()]
      for exp_id, exp in meta[video]['expressions'].items():
        kind = kinds[video][exp_id]
        counts[kind] = counts.get(kind, 0) + 1
        target = mevis_layout.expression_target(mask_dict, video, exp_id, exp['anno_id'],
                                                len(ids), ids.shape[1:])
        np.testing.assert_array_equal(target, np.isin(ids, exp['obj_id']))
        assert (kind == 'multi') == (len(exp['obj_id']) > 1)
        assert (kind == 'none') == (not exp['obj_id']) and target.any() == bool(exp['obj_id'])
    assert counts.get('multi') and counts.get('none') == len(meta), (split, counts)
  plain = refer_shapes.generate(str(tmp_path / 'plain'), layout='mevis', multi_object=False,
                                no_target=False, **scale)
  ys = {s: sum(len(v['expressions']) for v in ytvos_layout.read_meta_expressions(
      ytvos_layout.meta_expressions_path(ytvos, s)).values()) for s in ('train', 'valid')}
  assert plain == {'train': ys['train'], 'valid_u': ys['valid']}


def test_main_on_refer_shapes_mevis_scores_valid_u_and_zips_valid(tmp_path):
  """train -> MeViS-style evaluation of valid_u; predict of an unscored valid -> the zip."""
  from configs import refer_shapes_mevis  # noqa: PLC0415
  from rvos_jax import inference, train  # noqa: PLC0415

  config = refer_shapes_mevis.get_config('smoke')
  root = tmp_path / 'data'
  config.data.root = str(root)
  config.train.num_steps = 1
  # A valid split without mask_dict.json beside valid_u (as MeViS publishes it), written
  # before the records are built.
  from data_pipelines import refer_shapes as gen  # noqa: PLC0415
  gen.generate(str(root), layout='mevis', seed=config.data.seed,
               **config.data.generate.to_dict())
  shutil.copytree(root / 'valid_u', root / 'valid',
                  ignore=shutil.ignore_patterns(mevis_layout.MASK_DICT))
  results = train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert results['settings']['layout'] == 'mevis'
  assert set(results['per_target']) == {'no target', 'one object', 'several objects'}
  assert {'multi', 'none'} <= set(results['per_kind'])
  config.data.eval_split = 'valid'
  out = inference.predict_checkpoint(config, str(tmp_path / 'work'))
  names = zipfile.ZipFile(out['zip']).namelist()
  meta = mevis_layout.read_meta_expressions(str(root / 'valid' / 'meta_expressions.json'))
  assert sorted(names) == sorted(f'{v}/{e}/{f}.png' for v, entry in meta.items()
                                 for e in entry['expressions'] for f in entry['frames'])


def test_mevis_config_and_builder_on_the_published_layout(mevis_root, tmp_path):
  from configs import mevis, refer_youtube_vos  # noqa: PLC0415

  config, paper = mevis.get_config(), refer_youtube_vos.get_config()
  assert (config.data.name, config.data.eval_split) == ('mevis', 'valid_u')
  assert config.train.final_eval and config.model.to_dict() == paper.model.to_dict()
  assert (config.data.num_frames, config.data.height, config.data.width) == (12, 240, 432)
  with pytest.raises(ValueError, match='config.data.root is empty'):
    builders.prepare(config.data)
  # 'mevis' reads a MeViS root as it is (never generated): the same records as above.
  data = _config(mevis_root, name='mevis', tfds_data_dir=str(tmp_path / 'tfds'))
  builder = builders.prepare(data)
  assert builder.name == 'mevis' and set(builder.info.splits) == {'train', 'valid_u', 'valid'}
  with pytest.raises(FileNotFoundError, match=r'root=\S*nowhere does not exist. Point '
                                              r'manual_dir .* in the MeViS layout'):
    builders.prepare(_config(tmp_path / 'nowhere', name='mevis'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='no <split>/meta_expressions.json'):
    builders.prepare(_config(tmp_path / 'empty', name='mevis'))
