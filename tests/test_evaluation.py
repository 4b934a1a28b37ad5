"""Folder scorer on tiny hand-made folders whose J/F numbers are worked out by hand.

All images are 10x10, so the F radius is ceil(0.008 * 14.1) = 1. Hand values used below
(see tests/test_metrics.py for the derivations):
  exact mask                           J = 1,   F = 1
  3x3 square vs the same shifted by 2  J = 3/15 = 0.2, F = 2/3
  empty prediction, object present     J = 0,   F = 0
  empty prediction, object absent      J = 1,   F = 1
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rvos_jax import evaluation

H = W = 10
OBJ1 = (2, 4, 2, 4)  # rows y0..y1, cols x0..x1, inclusive.
OBJ1_SHIFTED = (2, 4, 4, 6)
OBJ2 = (6, 8, 6, 8)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mask(*boxes):
  m = np.zeros((H, W), bool)
  for y0, y1, x0, x1 in boxes:
    m[y0:y1 + 1, x0:x1 + 1] = True
  return m


def _write_annotation(path, objects):
  """Palette PNG; objects = {obj_id: box}."""
  labels = np.zeros((H, W), np.uint8)
  for obj_id, box in objects.items():
    labels[_mask(box)] = obj_id
  im = Image.fromarray(labels)
  im.putpalette([0, 0, 0, 236, 95, 103, 249, 145, 87] + [0] * (256 * 3 - 9))  # L -> P.
  os.makedirs(os.path.dirname(path), exist_ok=True)
  im.save(path)


def _write_prediction(path, mask):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def _write_json(path, data):
  with open(path, 'w') as f:
    json.dump(data, f)


@pytest.fixture
def folder(tmp_path):
  """2 videos, 3 expressions, one unannotated frame, one object absent from a frame.

  vid_a (frames 00000, 00001, 00002; 00001 has no annotation):
    exp 0 -> obj 1: 00000 exact (1, 1); 00002 shifted by 2 (0.2, 2/3) -> J 0.6, F 5/6
    exp 1 -> obj 2 (absent in 00002): empty predictions: 00000 (0, 0), 00002 (1, 1)
             -> J 0.5, F 0.5
  vid_b (frame 00000): exp 0 -> obj 1, exact -> J 1, F 1
  """
  ann, pred = tmp_path / 'Annotations', tmp_path / 'predictions'
  _write_annotation(str(ann / 'vid_a' / '00000.png'), {1: OBJ1, 2: OBJ2})
  _write_annotation(str(ann / 'vid_a' / '00002.png'), {1: OBJ1})
  _write_annotation(str(ann / 'vid_b' / '00000.png'), {1: OBJ1})
  _write_prediction(str(pred / 'vid_a' / '0' / '00000.png'), _mask(OBJ1))
  # Unannotated frame: whatever is predicted is not scored.
  _write_prediction(str(pred / 'vid_a' / '0' / '00001.png'), np.ones((H, W), bool))
  _write_prediction(str(pred / 'vid_a' / '0' / '00002.png'), _mask(OBJ1_SHIFTED))
  for frame in ('00000', '00001', '00002'):
    _write_prediction(str(pred / 'vid_a' / '1' / f'{frame}.png'), _mask())
  _write_prediction(str(pred / 'vid_b' / '0' / '00000.png'), _mask(OBJ1))
  meta = tmp_path / 'meta' / 'meta_expressions.json'
  meta.parent.mkdir()
  _write_json(meta, {'videos': {
      'vid_a': {'expressions': {'0': {'exp': 'the left square', 'obj_id': '1'},
                                '1': {'exp': 'the square that leaves', 'obj_id': '2'}},
                'frames': ['00000', '00001', '00002']},
      'vid_b': {'expressions': {'0': {'exp': 'a square', 'obj_id': '1'}},
                'frames': ['00000']},
  }})
  return {'predictions': str(pred), 'annotations': str(ann), 'meta_expressions': str(meta)}


def test_evaluate_folder_numbers_by_hand(folder):
  res = evaluation.evaluate_folder(**folder)
  a = res['per_expression']['vid_a']
  assert a['0']['J'] == pytest.approx(0.6) and a['0']['F'] == pytest.approx(5 / 6)
  assert a['0']['num_frames'] == 2  # frame 00001 has no annotation.
  assert a['1']['J'] == pytest.approx(0.5) and a['1']['F'] == pytest.approx(0.5)
  assert a['1']['obj_id'] == '2' and a['1']['exp'] == 'the square that leaves'
  b = res['per_expression']['vid_b']['0']
  assert (b['J'], b['F'], b['J&F']) == (1.0, 1.0, 1.0)

  assert res['per_video']['vid_a']['J'] == pytest.approx(0.55)
  assert res['per_video']['vid_a']['F'] == pytest.approx(2 / 3)
  assert res['per_video']['vid_b']['num_expressions'] == 1

  o = res['overall']
  assert o['J'] == pytest.approx(0.7)             # (0.6 + 0.5 + 1) / 3
  assert o['F'] == pytest.approx(7 / 9)           # (5/6 + 1/2 + 1) / 3
  assert o['J&F'] == pytest.approx((0.7 + 7 / 9) / 2)
  # J per expression 0.6, 0.5, 1.0; strictly above the threshold counts.
  assert o['prec@0.5'] == pytest.approx(2 / 3)
  assert o['prec@0.6'] == pytest.approx(1 / 3)
  assert o['prec@0.9'] == pytest.approx(1 / 3)
  assert (o['num_expressions'], o['num_frames']) == (3, 5)
  assert res['skipped_expressions'] == [] and res['num_missing_predictions'] == 0
  assert 'per_kind' not in res and 'per_annotator' not in res

  table = evaluation.format_table(res)
  assert 'overall' in table and 'vid_a' in table and 'prec@0.5' in table
  assert '70.0' in table  # overall J in percent.


def test_per_kind_when_kinds_file_exists(folder):
  kinds = os.path.join(os.path.dirname(folder['meta_expressions']), 'expression_kinds.json')
  _write_json(kinds, {'videos': {'vid_a': {'0': 'appearance', '1': 'motion'},
                                 'vid_b': {'0': 'appearance'}}})
  res = evaluation.evaluate_folder(**folder)
  k = res['per_kind']
  assert set(k) == {'appearance', 'motion'}
  assert k['appearance']['J'] == pytest.approx(0.8)        # (0.6 + 1) / 2
  assert k['appearance']['F'] == pytest.approx(11 / 12)    # (5/6 + 1) / 2
  assert k['appearance']['num_expressions'] == 2
  assert (k['motion']['J'], k['motion']['F']) == (pytest.approx(0.5), pytest.approx(0.5))
  assert res['per_expression']['vid_a']['1']['kind'] == 'motion'
  table = evaluation.format_table(res)
  assert 'expression kind' in table and 'motion' in table


def test_annotator_average_uses_4k_plus_i_ids(tmp_path):
  # One frame, two objects, 8 expressions: object k owns ids 4k..4k+3 = (annotator 1 first-frame,
  # annotator 1 full-video, annotator 2 first-frame, annotator 2 full-video).
  # Ids 1, 3, 7 predicted empty (J = F = 0), the rest exact (J = F = 1):
  #   annotator 1 = ids 0, 1, 4, 5 -> 3/4;  annotator 2 = ids 2, 3, 6, 7 -> 1/2;  average 5/8.
  # (An id % 2 split would give 1 and 1/4, so the numbers pin the 4k+i convention.)
  ann, pred = tmp_path / 'Annotations', tmp_path / 'predictions'
  _write_annotation(str(ann / 'dv' / '00000.png'), {1: OBJ1, 2: OBJ2})
  expressions = {}
  for i in range(8):
    obj_id, box = (1, OBJ1) if i < 4 else (2, OBJ2)
    expressions[str(i)] = {'exp': f'expression {i}', 'obj_id': str(obj_id)}
    _write_prediction(str(pred / 'dv' / str(i) / '00000.png'),
                      _mask() if i in (1, 3, 7) else _mask(box))
  meta = tmp_path / 'meta_expressions.json'
  _write_json(meta, {'videos': {'dv': {'expressions': expressions, 'frames': ['00000']}}})
  res = evaluation.evaluate_folder(str(pred), str(ann), str(meta), annotator_average=True)
  per = res['per_annotator']
  assert (per['1']['J'], per['1']['F']) == (0.75, 0.75)
  assert (per['2']['J'], per['2']['F']) == (0.5, 0.5)
  assert per['average']['J'] == per['average']['F'] == per['average']['J&F'] == 0.625
  assert per['average']['prec@0.5'] == 0.625  # (3/4 + 1/2) / 2
  types = res['per_expression_type']
  assert {k: v['J'] for k, v in types.items()} == {
      '1/first_frame': 1.0, '1/full_video': 0.5, '2/first_frame': 1.0, '2/full_video': 0.0}
  assert res['per_expression']['dv']['6']['annotator'] == '2'
  assert res['per_expression']['dv']['6']['expression_type'] == 'first_frame'
  assert 'average (1, 2)' in evaluation.format_table(res)

  # Non-integer ids cannot be mapped to annotators.
  _write_json(meta, {'videos': {'dv': {'expressions': {'a': expressions['0']},
                                       'frames': ['00000']}}})
  _write_prediction(str(pred / 'dv' / 'a' / '00000.png'), _mask(OBJ1))
  with pytest.raises(evaluation.EvaluationError, match="'dv' expression 'a'"):
    evaluation.evaluate_folder(str(pred), str(ann), str(meta), annotator_average=True)


def test_missing_prediction_is_an_error_or_empty(folder):
  os.remove(os.path.join(folder['predictions'], 'vid_a', '0', '00002.png'))
  with pytest.raises(evaluation.EvaluationError) as err:
    evaluation.evaluate_folder(**folder)
  assert "video 'vid_a' expression '0' frame '00002'" in str(err.value)
  res = evaluation.evaluate_folder(**folder, missing_as_empty=True)
  e = res['per_expression']['vid_a']['0']
  assert (e['J'], e['F']) == (0.5, 0.5)  # frame 00002 now scores 0, 0.
  assert res['num_missing_predictions'] == 1
  # The unannotated frame's prediction is never needed.
  os.remove(os.path.join(folder['predictions'], 'vid_a', '0', '00001.png'))
  assert evaluation.evaluate_folder(**folder, missing_as_empty=True)['num_missing_predictions'] == 1


def test_size_mismatch_names_both_files(folder):
  path = os.path.join(folder['predictions'], 'vid_b', '0', '00000.png')
  Image.fromarray(np.zeros((H, W + 2), np.uint8)).save(path)
  with pytest.raises(evaluation.EvaluationError, match='size mismatch') as err:
    evaluation.evaluate_folder(**folder)
  assert path in str(err.value)
  assert os.path.join(folder['annotations'], 'vid_b', '00000.png') in str(err.value)


@pytest.mark.parametrize('which', ['prediction', 'annotation'])
def test_corrupt_png_names_the_file(folder, which):
  if which == 'prediction':
    path = os.path.join(folder['predictions'], 'vid_a', '1', '00000.png')
  else:
    path = os.path.join(folder['annotations'], 'vid_b', '00000.png')
  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n this is not a png')
  with pytest.raises(evaluation.EvaluationError, match='cannot read PNG') as err:
    evaluation.evaluate_folder(**folder)
  assert path in str(err.value)


def test_bad_meta_and_missing_annotation_folder(folder, tmp_path):
  bad = tmp_path / 'bad.json'
  _write_json(bad, {'videos': {'v': {'expressions': {'0': {'exp': 'x'}}, 'frames': []}}})
  with pytest.raises(evaluation.EvaluationError, match="'v' expression '0' has no \"obj_id\""):
    evaluation.evaluate_folder(folder['predictions'], folder['annotations'], str(bad))
  _write_json(bad, {'videos': {'vid_c': {'expressions': {}, 'frames': ['00000']}}})
  with pytest.raises(evaluation.EvaluationError, match="annotation folder for video 'vid_c'"):
    evaluation.evaluate_folder(folder['predictions'], folder['annotations'], str(bad))


def test_expression_without_annotated_frame_is_skipped(folder):
  meta = folder['meta_expressions']
  with open(meta) as f:
    data = json.load(f)
  data['videos']['vid_b']['frames'] = ['00007']  # exists in no annotation folder.
  _write_json(meta, data)
  res = evaluation.evaluate_folder(**folder)
  assert res['skipped_expressions'] == [
      {'video': 'vid_b', 'exp_id': '0', 'reason': 'no annotated frame'}]
  assert 'vid_b' not in res['per_video'] and res['overall']['num_expressions'] == 2
  assert res['overall']['J'] == pytest.approx(0.55)


def test_cli_writes_json_and_prints_table(folder, tmp_path):
  out = tmp_path / 'out' / 'results.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'rvos_jax.evaluation', '--predictions', folder['predictions'],
       '--annotations', folder['annotations'], '--meta_expressions', folder['meta_expressions'],
       '--output_json', str(out)],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  assert '== overall ==' in proc.stdout and 'vid_b' in proc.stdout
  with open(out) as f:
    res = json.load(f)
  assert res['overall']['J'] == pytest.approx(0.7)
  assert res['overall']['F'] == pytest.approx(7 / 9)
