"""evaluation.evaluate_model: predict a split, score it, write the results (wiring checks)."""

import json
import logging
import os
import shutil

import numpy as np
import pytest

from data_pipelines import pipelines
from rvos_jax import evaluation
from tests.data_fixtures import drop_obj_ids
from tests.test_predict import tiny_setup


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  return tiny_setup(tmp_path_factory)


def _kinds(root, split='valid'):
  with open(os.path.join(root, 'meta_expressions', split, 'expression_kinds.json')) as f:
    return {k for es in json.load(f)['videos'].values() for k in es.values()}


def _oracle_fn(setup):
  """A predict_fn that returns the ground truth of each window it is given, found by the window's
  frames and words in a table read from the evaluation pipeline itself."""
  s = setup
  table = {}
  ds = pipelines.make_eval_dataset(s.config.data, s.builder, s.vocab, process_index=0,
                                   process_count=1)
  for batch in pipelines.as_numpy(ds):
    for b in range(len(batch['frames'])):
      key = batch['frames'][b].tobytes() + batch['tokens'][b].tobytes()
      table[key] = batch['masks'][b]

  def oracle(variables, frames, tokens, token_mask):
    del variables, token_mask
    frames, tokens = np.asarray(frames), np.asarray(tokens)
    masks = np.stack([table[f.tobytes() + t.tobytes()] for f, t in zip(frames, tokens,
                                                                        strict=True)])
    return masks, np.ones(masks.shape[:2], np.float32)

  return oracle


def test_oracle_scores_perfectly(setup, tmp_path):
  s = setup
  results = evaluation.evaluate_model(_oracle_fn(s), None, s.config, s.builder, s.vocab,
                                      str(tmp_path))
  overall = results['overall']
  assert overall['J'] == overall['F'] == overall['J&F'] == 1.0, overall
  assert all(overall[k] == 1.0 for k in overall if k.startswith('prec@'))
  assert set(results['per_kind']) == _kinds(s.root)
  assert all(r['J'] == 1.0 and r['F'] == 1.0 for r in results['per_kind'].values())


def test_evaluate_model_tiny(setup, tmp_path):
  s = setup
  results = evaluation.evaluate_model(s.predict_fn, s.variables, s.config, s.builder, s.vocab,
                                      str(tmp_path))
  overall = results['overall']
  for key in ('J', 'F', 'J&F', 'prec@0.5', 'prec@0.6', 'prec@0.7', 'prec@0.8', 'prec@0.9'):
    assert 0.0 <= overall[key] <= 1.0, key
  with open(os.path.join(s.root, 'meta_expressions', 'valid', 'meta_expressions.json')) as f:
    meta = json.load(f)['videos']
  assert overall['num_expressions'] == sum(len(v['expressions']) for v in meta.values())
  assert overall['num_frames'] == sum(len(v['expressions']) * len(v['frames'])
                                      for v in meta.values())
  kinds = _kinds(s.root)
  assert len(kinds) >= 2 and set(results['per_kind']) == kinds
  with open(tmp_path / evaluation.RESULTS_JSON) as f:
    saved = json.load(f)
  assert saved['overall']['J'] == pytest.approx(overall['J'])
  assert saved['settings']['split'] == 'valid'
  table = (tmp_path / evaluation.RESULTS_TABLE).read_text()
  assert '== expression kind ==' in table and all(k in table for k in kinds)


def _unscored_copy(s, tmp_path):
  """The setup's valid split with Annotations/ but its expressions' obj_ids removed."""
  root = tmp_path / 'copy'
  shutil.copytree(os.path.join(s.config.data.root, 'valid'), root / 'valid')
  shutil.copytree(os.path.join(s.config.data.root, 'meta_expressions', 'valid'),
                  root / 'meta_expressions' / 'valid')
  drop_obj_ids(root / 'meta_expressions' / 'valid' / 'meta_expressions.json')
  return str(root)


def test_evaluate_or_predict_an_unscored_split(setup, tmp_path, caplog):
  """What training's periodic and final evaluation call: scores where the split has ground
  truth, and otherwise the predictions and the submission zip (said once), no error."""
  s = setup
  scored = evaluation.evaluate_or_predict(s.predict_fn, s.variables, s.config, s.builder,
                                          s.vocab, str(tmp_path / 'scored'))
  assert 0 <= scored['overall']['J&F'] <= 1
  config = s.config.copy_and_resolve_references()
  config.data.root = _unscored_copy(s, tmp_path)
  with caplog.at_level(logging.WARNING):
    for i in range(2):
      out = tmp_path / f'unscored_{i}'
      assert evaluation.evaluate_or_predict(s.predict_fn, s.variables, config, s.builder,
                                            s.vocab, str(out)) == {}
      assert (out / 'submission.zip').exists() and any((out / 'Annotations').iterdir())
      assert not (out / evaluation.RESULTS_JSON).exists()
  assert caplog.text.count('has no ground truth here') == 1, caplog.text


def test_evaluate_model_needs_ground_truth(setup, tmp_path):
  s = setup
  config = s.config.copy_and_resolve_references()
  config.data.root = str(tmp_path)
  with pytest.raises(evaluation.EvaluationError, match='has no ground truth'):
    evaluation.evaluate_model(s.predict_fn, s.variables, config, s.builder, s.vocab,
                              str(tmp_path / 'out'))
  # Annotations/ present but no obj_id in meta_expressions.json (YouTube-VOS's first-frame
  # masks beside Refer-YouTube-VOS valid's expressions): nothing to score against either.
  config.data.root = _unscored_copy(s, tmp_path)
  with pytest.raises(evaluation.EvaluationError, match='gives no obj_id'):
    evaluation.evaluate_model(s.predict_fn, s.variables, config, s.builder, s.vocab,
                              str(tmp_path / 'out'))
