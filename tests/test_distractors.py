"""rvos_jax.analysis.distractors on a hand-made layout whose answer is known pixel by pixel."""

import json

import numpy as np
import pytest
from PIL import Image

from rvos_jax import evaluation
from rvos_jax.analysis import distractors

OBJECTS = {'1': {'category': 'circle', 'colour': 'red'},    # the target
           '2': {'category': 'circle', 'colour': 'red'},    # twin
           '3': {'category': 'circle', 'colour': 'blue'},   # same category
           '4': {'category': 'square', 'colour': 'red'},    # same colour
           '5': {'category': 'star', 'colour': 'green'}}    # other


def _layout(tmp_path, predicted):
  ids = np.zeros((6, 10), np.uint8)
  for k in range(1, 6):
    ids[k - 1, 2 * (k - 1):2 * k] = k  # object k: 2 pixels in row k-1
  (tmp_path / 'ann' / 'v').mkdir(parents=True)
  (tmp_path / 'pred' / 'v' / '0').mkdir(parents=True)
  for frame in ('00000', '00005'):
    Image.fromarray(ids).save(tmp_path / 'ann' / 'v' / f'{frame}.png')
    Image.fromarray((predicted(ids) * 255).astype(np.uint8)).save(
        tmp_path / 'pred' / 'v' / '0' / f'{frame}.png')
  meta_dir = tmp_path / 'meta_expressions'
  meta_dir.mkdir()
  (meta_dir / 'meta_expressions.json').write_text(json.dumps({'videos': {'v': {
      'expressions': {'0': {'exp': 'the red circle moving up', 'obj_id': '1'}},
      'frames': ['00000', '00005']}}}))
  (meta_dir / 'expression_kinds.json').write_text(json.dumps({'videos': {'v': {'0': 'motion'}}}))
  (tmp_path / 'meta.json').write_text(json.dumps({'videos': {'v': {'objects': OBJECTS}}}))
  return [str(tmp_path / x) for x in ('pred', 'ann', 'meta_expressions/meta_expressions.json',
                                      'meta.json')]


def test_shares_by_relation_to_the_target(tmp_path):
  def predicted(ids):
    fg = ids > 0                      # every object: 2 px each
    fg[ids == 1] = [True, False]      # half the target
    fg[5, :4] = True                  # 4 background pixels
    return fg

  out = distractors.mask_mass(*_layout(tmp_path, predicted))
  assert set(out) == {'overall', 'motion'}
  r = out['motion']
  assert r['expressions'] == 1 and r['pixels'] == 2 * (1 + 2 * 4 + 4)
  assert r['recall'] == pytest.approx(0.5)
  want = {'target': 1, 'twin': 2, 'same category': 2, 'same colour': 2, 'other objects': 2,
          'background': 4}
  for cls, n in want.items():
    assert r['share'][cls] == pytest.approx(n / 13), cls
  assert out['overall'] == r
  assert 'motion' in distractors.format_table(out)


def test_relation_without_colour_is_by_category():
  lion = {'category': 'lion'}
  assert distractors.relation({'category': 'lion'}, lion) == 'same category'
  assert distractors.relation({'category': 'zebra'}, lion) == 'other objects'


def test_missing_prediction_names_the_file(tmp_path):
  args = _layout(tmp_path, lambda ids: ids > 0)
  (tmp_path / 'pred' / 'v' / '0' / '00005.png').unlink()
  with pytest.raises(evaluation.EvaluationError, match='00005.png'):
    distractors.mask_mass(*args)
