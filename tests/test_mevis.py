"""MeViS: the layout reader (RLE, union targets, bad input) and the valid_u score of a folder of
masks, against the definition of MeViS's offline script written out by hand."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_pipelines import mevis_layout
from data_pipelines.mevis_layout import MevisFormatError
from rvos_jax import evaluation, metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 24, 30


def _random_mask(rng, p=0.3):
  m = rng.random((H, W)) < p
  m[rng.integers(H), :] = True  # a stripe: never empty
  return m


def test_rle_round_trip_and_null_masks():
  rng = np.random.default_rng(0)
  for _ in range(20):
    m = rng.random((H, W)) < rng.random()
    rle = mevis_layout.encode_rle(m)
    assert rle['size'] == [H, W] and isinstance(rle['counts'], str)
    json.dumps(rle)  # what mask_dict.json stores
    np.testing.assert_array_equal(mevis_layout.decode_rle(rle, (H, W), 'here'), m)
  assert not mevis_layout.decode_rle(None, (H, W), 'here').any()


def test_target_is_the_union_of_its_objects_and_empty_without_any():
  rng = np.random.default_rng(1)
  a = [_random_mask(rng) for _ in range(3)]
  b = [_random_mask(rng) for _ in range(3)]
  mask_dict = {'7': [mevis_layout.encode_rle(m) for m in a],
               '8': [mevis_layout.encode_rle(b[0]), None, mevis_layout.encode_rle(b[2])]}
  union = mevis_layout.expression_target(mask_dict, 'v', '0', ['7', '8'], 3, (H, W))
  np.testing.assert_array_equal(union[0], a[0] | b[0])
  np.testing.assert_array_equal(union[1], a[1])  # null: object 8 is not in frame 1
  np.testing.assert_array_equal(union[2], a[2] | b[2])
  one = mevis_layout.expression_target(mask_dict, 'v', '1', ['8'], 3, None)  # size from RLE
  assert one.shape == (3, H, W) and not one[1].any()
  none = mevis_layout.expression_target(mask_dict, 'v', '2', [], 3, (H, W))
  assert none.shape == (3, H, W) and not none.any()


def test_bad_input_names_video_expression_and_anno_id(tmp_path):
  mask_dict = {'7': [mevis_layout.encode_rle(np.ones((H, W), bool))] * 2}
  with pytest.raises(MevisFormatError, match=r"video 'cat' expression '3': anno_id '9' is not "
                                             r'in mask_dict.json'):
    mevis_layout.expression_target(mask_dict, 'cat', '3', ['7', '9'], 2, (H, W))
  with pytest.raises(MevisFormatError, match=r"video 'cat' expression '3' anno_id '7' frame 0: "
                                             r'RLE of size 24x30 \(HxW\) but the frame is 20x30'):
    mevis_layout.expression_target(mask_dict, 'cat', '3', ['7'], 2, (20, W))
  with pytest.raises(MevisFormatError, match=r"anno_id '7' has 2 masks for 3 frames"):
    mevis_layout.expression_target(mask_dict, 'cat', '3', ['7'], 3, (H, W))
  with pytest.raises(MevisFormatError, match=r'no mask gives the frame size'):
    mevis_layout.expression_target(mask_dict, 'cat', '4', [], 2, None)

  bad = tmp_path / 'mask_dict.json'
  bad.write_text('{"7": [null, ')
  with pytest.raises(MevisFormatError, match=r'mask_dict.json: not valid JSON'):
    mevis_layout.read_mask_dict(str(bad))
  meta = tmp_path / 'meta_expressions.json'
  meta.write_text(json.dumps({'videos': {'cat': {'frames': ['00000'], 'expressions': {
      '0': {'exp': 'the cats moving left', 'obj_id': [1, 2], 'anno_id': ['7']}}}}}))
  with pytest.raises(MevisFormatError, match=r"video 'cat' expression '0': 2 obj_id \[1, 2\] "
                                             r"but 1 anno_id \['7'\]"):
    mevis_layout.read_meta_expressions(str(meta))
  meta.write_text(json.dumps({'videos': {'cat': {'frames': ['00000'], 'expressions': {
      '0': {'exp': '  ', 'obj_id': [], 'anno_id': []}}}}}))
  with pytest.raises(MevisFormatError, match=r"expression '0': empty expression"):
    mevis_layout.read_meta_expressions(str(meta))


def _write_png(path, mask):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def _split(tmp_path, rng):
  """A valid_u-like split: video 'a' (3 frames) with one single-object, one two-object and
  one no-target expression; video 'b' (2 frames) with one expression. Returns (split dir,
  {(video, exp_id): target (T, H, W)})."""
  split = tmp_path / 'valid_u'
  objects = {'a': {1: [_random_mask(rng) for _ in range(3)], 2: [_random_mask(rng), None,
                                                                _random_mask(rng)]},
             'b': {1: [_random_mask(rng) for _ in range(2)]}}
  mask_dict, anno = {}, {}
  for video, objs in objects.items():
    for obj, frames in objs.items():
      anno[(video, obj)] = str(len(mask_dict))
      mask_dict[anno[(video, obj)]] = [None if m is None else mevis_layout.encode_rle(m)
                                       for m in frames]
  exps = {'a': {'0': [1], '1': [1, 2], '2': []}, 'b': {'0': [1]}}
  meta = {'videos': {v: {'frames': [f'{t:05d}' for t in range(len(objects[v][1]))],
                         'expressions': {e: {'exp': f'expression {v} {e}', 'obj_id': objs,
                                             'anno_id': [anno[(v, o)] for o in objs]}
                                         for e, objs in exps[v].items()}}
                     for v in exps}}
  (split / 'JPEGImages').mkdir(parents=True)
  (split / 'meta_expressions.json').write_text(json.dumps(meta))
  (split / 'mask_dict.json').write_text(json.dumps(mask_dict))
  targets = {}
  for v, es in exps.items():
    n = len(objects[v][1])
    for e, objs in es.items():
      t = np.zeros((n, H, W), bool)
      for o in objs:
        for i, m in enumerate(objects[v][o]):
          if m is not None:
            t[i] |= m
      targets[(v, e)] = t
  return str(split), targets


def _by_hand(pred, gt):
  """MeViS's per-expression score: J and F of each frame, averaged over the frames."""
  j, f = [], []
  for p, g in zip(pred, gt, strict=True):
    union = (p | g).sum()
    j.append(1.0 if union == 0 else (p & g).sum() / union)
    f.append(metrics.boundary_f_measure(p, g))
  return float(np.mean(j)), float(np.mean(f))


def test_valid_u_score_equals_the_definition(tmp_path):
  rng = np.random.default_rng(2)
  split, targets = _split(tmp_path, rng)
  preds = tmp_path / 'pred'
  want = {}
  for (v, e), gt in targets.items():
    if (v, e) == ('b', '0'):
      continue  # no prediction folder: J = F = 0, as the official script scores it
    # Expression a/0 exactly right; the no-target one predicted empty in frame 0 (empty vs
    # empty: 1 on both) and with noise in the others; the rest random.
    pred = gt.copy() if (v, e) == ('a', '0') else rng.random(gt.shape) < 0.3
    if (v, e) == ('a', '2'):
      pred[0] = False
    for t, m in enumerate(pred):
      _write_png(str(preds / v / e / f'{t:05d}.png'), m)
    want[(v, e)] = _by_hand(pred, gt)
  want[('b', '0')] = (0.0, 0.0)

  results = evaluation.evaluate_mevis_folder(str(preds), split)
  assert want[('a', '0')] == (1.0, 1.0)
  for (v, e), (j, f) in want.items():
    got = results['per_expression'][v][e]
    assert (got['J'], got['F']) == pytest.approx((j, f), abs=1e-12), (v, e)
  j_all = np.mean([j for j, _ in want.values()])
  f_all = np.mean([f for _, f in want.values()])
  overall = results['overall']
  assert (overall['J'], overall['F']) == pytest.approx((j_all, f_all), abs=1e-12)
  assert overall['J&F'] == pytest.approx((j_all + f_all) / 2, abs=1e-12)
  assert overall['num_expressions'] == 4 and results['num_missing_predictions'] == 1
  assert results['per_target']['several objects']['num_expressions'] == 1
  assert results['per_target']['no target']['J'] == pytest.approx(want[('a', '2')][0])
  assert results['per_expression']['a']['1']['target'] == 'several objects'

  # The command line finds the MeViS layout from --meta_expressions beside mask_dict.json.
  proc = subprocess.run([sys.executable, '-m', 'rvos_jax.evaluation', f'--predictions={preds}',
                         f'--meta_expressions={split}/meta_expressions.json'], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '== target ==' in proc.stdout and 'scored 0 (MeViS rule)' in proc.stdout
  row = next(line for line in proc.stdout.splitlines() if line.startswith('overall '))
  assert row.split()[3] == f'{100 * overall["J&F"]:.1f}'


def test_valid_u_bad_predictions(tmp_path):
  rng = np.random.default_rng(3)
  split, targets = _split(tmp_path, rng)
  preds = tmp_path / 'pred'
  for (v, e), gt in targets.items():
    for t in range(len(gt)):
      _write_png(str(preds / v / e / f'{t:05d}.png'), gt[t])
  assert evaluation.evaluate_mevis_folder(str(preds), split)['overall']['J&F'] == 1.0
  os.remove(preds / 'a' / '1' / '00002.png')
  with pytest.raises(evaluation.EvaluationError, match=r"video 'a' expression '1' frame "
                                                       r"'00002'"):
    evaluation.evaluate_mevis_folder(str(preds), split)
  _write_png(str(preds / 'a' / '1' / '00002.png'), np.zeros((H, W + 2), bool))
  with pytest.raises(evaluation.EvaluationError, match=r'size mismatch: .*a/1/00002.png'):
    evaluation.evaluate_mevis_folder(str(preds), split)
  for t in range(3):  # every frame at another size than the RLEs
    _write_png(str(preds / 'a' / '1' / f'{t:05d}.png'), np.zeros((H, W + 2), bool))
  with pytest.raises(evaluation.EvaluationError, match=r"video 'a' expression '1' anno_id "
                                                       r"'\d' frame 0: RLE of size 24x30"):
    evaluation.evaluate_mevis_folder(str(preds), split)
