"""Model-free scorer: a folder of predicted masks against ground-truth annotations.

Layouts (DESIGN.md "Data"):
  predictions  <predictions>/<video>/<exp_id>/<frame>.png   binary PNG, any nonzero = foreground
               (the Refer-YouTube-VOS submission layout, unzipped);
  annotations  <annotations>/<video>/<frame>.png            palette PNG, pixel value = object id;
  meta         meta_expressions.json  {"videos": {<video>: {"expressions": {<exp_id>:
               {"exp": str, "obj_id": str}}, "frames": [<frame name without extension>]}}}.

Only frames with an annotation file are scored (Refer-YouTube-VOS valid annotates a subset);
per frame J and F (`rvos_jax.metrics`, official DAVIS 2017 rules), mean per expression, then
mean over expressions (per video, overall, per annotator, per expression kind); J&F = (J+F)/2;
prec@X over per-expression J. Scores are fractions in [0, 1] in the JSON, percent in the table.

Each expression is scored directly against its own object (obj_id). The DAVIS unsupervised
toolkit that ReferFormer-style Ref-DAVIS17 scripts call instead merges one annotator's objects
into one label map (argmax over objects) and Hungarian-matches them to the ground-truth objects;
for a model that segments the right objects the two agree, otherwise ours is the stricter.

  python -m rvos_jax.evaluation --predictions DIR --annotations DIR \
      --meta_expressions FILE [--output_json FILE] [--annotator_average] [--missing_as_empty]
  python -m rvos_jax.evaluation --predictions DIR --mevis_split mevis/valid_u   # MeViS
"""

import json
import math
import os
import sys
from collections.abc import Sequence

import numpy as np
from absl import app, flags, logging
from PIL import Image

from data_pipelines import layouts, ytvos_layout
from rvos_jax import metrics

UNLABELLED_KIND = 'unlabelled'
# Ref-DAVIS17 converted to the Refer-YouTube-VOS layout (ReferFormer's convert_davis_to_ytvos):
# object k owns exp ids 4k..4k+3 = (annotator 1 first-frame, annotator 1 full-video,
# annotator 2 first-frame, annotator 2 full-video).
_DAVIS_EXPRESSION_TYPES = (
    ('1', 'first_frame'), ('1', 'full_video'), ('2', 'first_frame'), ('2', 'full_video'))


class EvaluationError(ValueError):
  """Bad input; the message names the file / video / expression at fault."""


# ------------------------------------------------------------------------------------------------
# Reading inputs.
# ------------------------------------------------------------------------------------------------


def _load_json(path: str):
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as err:
    raise EvaluationError(f'cannot read JSON {path}: {err}') from err


def load_meta_expressions(path: str) -> dict:
  """{video: {"expressions": {exp_id: {"exp", "obj_id"}}, "frames": [...]}}, validated."""
  data = _load_json(path)
  if not isinstance(data, dict) or not isinstance(data.get('videos'), dict):
    raise EvaluationError(f'{path}: expected {{"videos": {{...}}}}')
  for video, entry in data['videos'].items():
    if (not isinstance(entry, dict) or not isinstance(entry.get('expressions'), dict)
        or not isinstance(entry.get('frames'), list)):
      raise EvaluationError(f'{path}: video {video!r} needs "expressions" (dict) and "frames" '
                            '(list)')
    for exp_id, exp in entry['expressions'].items():
      if not isinstance(exp, dict) or 'obj_id' not in exp:
        raise EvaluationError(f'{path}: video {video!r} expression {exp_id!r} has no "obj_id"')
      try:
        int(exp['obj_id'])
      except (TypeError, ValueError) as err:
        raise EvaluationError(f'{path}: video {video!r} expression {exp_id!r} obj_id '
                              f'{exp["obj_id"]!r} is not an integer') from err
  return data['videos']


def load_expression_kinds(meta_expressions_path: str) -> dict | None:
  """{video: {exp_id: kind}} from expression_kinds.json beside the meta file, or None."""
  try:
    return ytvos_layout.read_expression_kinds(meta_expressions_path)
  except ytvos_layout.MetaFormatError as err:
    raise EvaluationError(str(err)) from None


def _read_png(path: str) -> tuple[np.ndarray, str]:
  try:
    with Image.open(path) as im:
      im.load()
      return np.asarray(im), im.mode
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
    raise EvaluationError(f'cannot read PNG {path}: {err}') from err


def read_prediction(path: str) -> np.ndarray:
  """Binary (H, W) bool mask; any nonzero pixel (any colour channel) is foreground."""
  arr, mode = _read_png(path)
  if arr.ndim == 3:
    if mode in ('LA', 'RGBA', 'PA'):
      arr = arr[..., :-1]  # alpha says nothing about the mask.
    arr = np.any(arr != 0, axis=-1)
  if arr.ndim != 2:
    raise EvaluationError(f'prediction {path}: unexpected array shape {arr.shape}')
  return arr != 0


def read_annotation(path: str) -> np.ndarray:
  """(H, W) integer object-id map from a palette (or grayscale) PNG."""
  arr, mode = _read_png(path)
  if arr.ndim != 2:
    raise EvaluationError(f'annotation {path}: expected a single-channel palette PNG (pixel '
                          f'value = object id), got mode {mode} with shape {arr.shape}')
  return arr.astype(np.int64)


# ------------------------------------------------------------------------------------------------
# Scoring.
# ------------------------------------------------------------------------------------------------


def _annotator_and_type(video: str, exp_id: str) -> tuple[str, str]:
  try:
    index = int(exp_id)
  except ValueError as err:
    raise EvaluationError(f'--annotator_average needs integer expression ids (4k+i), got video '
                          f'{video!r} expression {exp_id!r}') from err
  if index < 0:
    raise EvaluationError(f'video {video!r}: negative expression id {exp_id!r}')
  return _DAVIS_EXPRESSION_TYPES[index % 4]


def _score_expression(video, exp_id, obj_id, gt_frames, predictions, missing_as_empty,
                      bound_th, missing_log):
  """Per-frame J and F of one expression over the annotated frames of its video."""
  j_frames, f_frames = [], []
  for frame, (ann_path, labels) in gt_frames.items():
    gt = labels == obj_id
    pred_path = os.path.join(predictions, video, exp_id, frame + '.png')
    if os.path.exists(pred_path):
      pred = read_prediction(pred_path)
      if pred.shape != gt.shape:
        raise EvaluationError(
            f'size mismatch: prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} (WxH) '
            f'but annotation {ann_path} is {gt.shape[1]}x{gt.shape[0]}')
    elif missing_as_empty:
      pred = np.zeros_like(gt)
      missing_log.append(pred_path)
    else:
      raise EvaluationError(
          f'missing prediction for video {video!r} expression {exp_id!r} frame {frame!r}: '
          f'{pred_path} does not exist (--missing_as_empty scores it as an empty mask)')
    j_frames.append(metrics.region_similarity(pred, gt))
    f_frames.append(metrics.boundary_f_measure(pred, gt, bound_th=bound_th))
  return metrics.expression_scores(j_frames, f_frames)


def _average(summaries: Sequence[dict]) -> dict:
  """Unweighted mean of summaries' scores (the Ref-DAVIS17 two-annotator average)."""
  keys = [k for k in summaries[0] if k != 'num_expressions']
  out = {k: float(np.mean([s[k] for s in summaries])) for k in keys}
  out['num_expressions'] = int(sum(s['num_expressions'] for s in summaries))
  return out


def _summarize_groups(named: dict, thresholds: Sequence[float]) -> dict:
  """{group: [expression scores]} -> {group: J, F, J&F, prec@X over its expressions}."""
  return {name: metrics.summarize([s['J'] for s in ss], [s['F'] for s in ss], thresholds)
          for name, ss in sorted(named.items())}


def _overall(per_expression: dict, num_frames: int, thresholds: Sequence[float]) -> dict:
  """Scores over every expression of {video: {exp_id: scores}}, with the frames scored."""
  overall = metrics.aggregate({(v, e): s for v, ss in per_expression.items()
                               for e, s in ss.items()}, thresholds)
  overall['num_frames'] = num_frames
  return overall


def evaluate_folder(predictions: str, annotations: str, meta_expressions: str, *,
                    annotator_average: bool = False, missing_as_empty: bool = False,
                    bound_th: float = metrics.DEFAULT_BOUND_TH,
                    thresholds: Sequence[float] = metrics.PREC_THRESHOLDS) -> dict:
  """Scores every expression of `meta_expressions`; returns the results dict.

  Keys: 'overall' (J, F, J&F, prec@X, num_expressions, num_frames), 'per_video',
  'per_expression' ({video: {exp_id: {J, F, J&F, num_frames, exp, obj_id[, kind, annotator,
  expression_type]}}}), 'skipped_expressions' (no annotated frame), 'num_missing_predictions',
  'settings'; with `annotator_average`: 'per_annotator' ({'1', '2', 'average'}) and
  'per_expression_type' ({'1/first_frame', ...}); with expression_kinds.json: 'per_kind'.
  """
  videos = load_meta_expressions(meta_expressions)
  kinds = load_expression_kinds(meta_expressions)
  per_expression, per_video, skipped, missing = {}, {}, [], []
  groups = {'annotator': {}, 'expression_type': {}, 'kind': {}}  # group -> name -> [scores]
  num_frames = 0

  for video in sorted(videos):
    entry = videos[video]
    video_dir = os.path.join(annotations, video)
    if not os.path.isdir(video_dir):
      raise EvaluationError(f'no annotation folder for video {video!r}: {video_dir}')
    gt_frames = {}  # frame -> (path, labels); read once, shared by the video's expressions.
    for frame in entry['frames']:
      ann_path = os.path.join(video_dir, frame + '.png')
      if os.path.exists(ann_path):  # unannotated frames are not scored.
        gt_frames[frame] = (ann_path, read_annotation(ann_path))
    video_scores = {}
    for exp_id in sorted(entry['expressions'], key=lambda e: (len(e), e)):
      exp = entry['expressions'][exp_id]
      if not gt_frames:
        skipped.append({'video': video, 'exp_id': exp_id, 'reason': 'no annotated frame'})
        continue
      scores = _score_expression(video, exp_id, int(exp['obj_id']), gt_frames, predictions,
                                 missing_as_empty, bound_th, missing)
      scores.update(exp=exp.get('exp', ''), obj_id=str(exp['obj_id']))
      num_frames += scores['num_frames']
      if annotator_average:
        annotator, exp_type = _annotator_and_type(video, exp_id)
        scores.update(annotator=annotator, expression_type=exp_type)
        groups['annotator'].setdefault(annotator, []).append(scores)
        groups['expression_type'].setdefault(f'{annotator}/{exp_type}', []).append(scores)
      if kinds is not None:
        kind = str(kinds.get(video, {}).get(exp_id, UNLABELLED_KIND))
        scores['kind'] = kind
        groups['kind'].setdefault(kind, []).append(scores)
      video_scores[exp_id] = scores
    if video_scores:
      per_expression[video] = video_scores
      per_video[video] = metrics.aggregate(video_scores, thresholds)

  if skipped:
    logging.warning('%d expressions have no annotated frame and are not scored, e.g. %s',
                    len(skipped), skipped[0])
  if missing:
    logging.warning('%d missing prediction frames scored as empty masks, e.g. %s',
                    len(missing), missing[0])
  overall = _overall(per_expression, num_frames, thresholds)
  results = {
      'overall': overall,
      'per_video': per_video,
      'per_expression': per_expression,
      'skipped_expressions': skipped,
      'num_missing_predictions': len(missing),
      'settings': {
          'predictions': os.path.abspath(predictions),
          'annotations': os.path.abspath(annotations),
          'meta_expressions': os.path.abspath(meta_expressions),
          'bound_th': bound_th, 'prec_thresholds': list(thresholds),
          'annotator_average': annotator_average, 'missing_as_empty': missing_as_empty,
      },
  }

  if annotator_average:
    per_annotator = _summarize_groups(groups['annotator'], thresholds)
    for annotator in ('1', '2'):
      if annotator not in per_annotator:
        raise EvaluationError(f'--annotator_average: no expression of annotator {annotator} '
                              f'(exp ids 4k+{0 if annotator == "1" else 2}, 4k+'
                              f'{1 if annotator == "1" else 3}) in {meta_expressions}')
    per_annotator['average'] = _average([per_annotator['1'], per_annotator['2']])
    results['per_annotator'] = per_annotator
    results['per_expression_type'] = _summarize_groups(groups['expression_type'], thresholds)
  if kinds is not None:
    results['per_kind'] = _summarize_groups(groups['kind'], thresholds)
  return results


def _target_group(num_objects: int) -> str:
  return {0: 'no target', 1: 'one object'}.get(num_objects, 'several objects')


def evaluate_mevis_folder(predictions: str, split: str, *,
                          bound_th: float = metrics.DEFAULT_BOUND_TH,
                          thresholds: Sequence[float] = metrics.PREC_THRESHOLDS) -> dict:
  """Scores <predictions>/<video>/<exp_id>/<frame>.png against a MeViS split folder (its
  meta_expressions.json and mask_dict.json; data_pipelines.mevis_layout), as MeViS's offline
  script for valid_u defines it: per expression, the target in each frame listed in "frames"
  is the union of its anno_ids' masks (empty without anno_id); J and F are averaged over all
  those frames (an empty prediction of an empty target scores 1 on both); J and F overall are
  the means over expressions and J&F their mean. An expression without a prediction folder
  scores J = F = 0, as in the official script; a missing frame inside a folder is an error.
  Also reported: per video, per target ('no target', 'one object', 'several objects'), and
  per kind where an expression_kinds.json lies beside meta_expressions.json (refer_shapes).
  """
  from data_pipelines import mevis_layout  # noqa: PLC0415 -- pycocotools only for MeViS

  meta_path = os.path.join(split, mevis_layout.META_EXPRESSIONS)
  mask_path = os.path.join(split, mevis_layout.MASK_DICT)
  try:
    videos = mevis_layout.read_meta_expressions(meta_path)
    mask_dict = mevis_layout.read_mask_dict(mask_path)
  except mevis_layout.MevisFormatError as err:
    raise EvaluationError(str(err)) from None
  per_expression, per_video, missing, groups, by_kind = {}, {}, [], {}, {}
  kinds = load_expression_kinds(meta_path)
  num_frames = 0
  for video in sorted(videos):
    entry = videos[video]
    video_scores = {}
    for exp_id in sorted(entry['expressions'], key=lambda e: (len(e), e)):
      exp = entry['expressions'][exp_id]
      exp_dir = os.path.join(predictions, video, exp_id)
      n = len(entry['frames'])
      if not os.path.isdir(exp_dir):
        missing.append(exp_dir)
        scores = {'J': 0.0, 'F': 0.0, 'J&F': 0.0, 'num_frames': n}
      else:
        preds = []
        for frame in entry['frames']:
          path = os.path.join(exp_dir, frame + '.png')
          if not os.path.exists(path):
            raise EvaluationError(f'missing prediction for video {video!r} expression '
                                  f'{exp_id!r} frame {frame!r}: {path} does not exist')
          preds.append(read_prediction(path))
        # The frame size is the prediction's (as the official script takes it); an RLE of
        # another size is an error naming it.
        size = preds[0].shape if preds else None
        try:
          target = mevis_layout.expression_target(mask_dict, video, exp_id, exp['anno_id'], n,
                                                  size, where=mask_path)
        except mevis_layout.MevisFormatError as err:
          raise EvaluationError(f'{err} (predictions: {exp_dir})') from None
        for frame, pred in zip(entry['frames'], preds, strict=True):
          if pred.shape != target.shape[1:]:
            raise EvaluationError(f'size mismatch: {os.path.join(exp_dir, frame + ".png")} is '
                                  f'{pred.shape} (HxW), the expression\'s other frames '
                                  f'{target.shape[1:]}')
        preds = np.stack(preds)
        j = metrics.region_similarity_frames(preds, target)
        f = metrics.boundary_f_measure_frames(preds, target, bound_th)
        scores = metrics.expression_scores(j, f)
      group = _target_group(len(exp['anno_id']))
      scores.update(exp=exp['exp'], obj_id=exp['obj_id'], target=group)
      groups.setdefault(group, []).append(scores)
      kind = (kinds or {}).get(video, {}).get(exp_id)
      if kind is not None:
        scores['kind'] = kind
        by_kind.setdefault(kind, []).append(scores)
      num_frames += scores['num_frames']
      video_scores[exp_id] = scores
    if video_scores:
      per_expression[video] = video_scores
      per_video[video] = metrics.aggregate(video_scores, thresholds)
  if missing:
    logging.warning('%d expressions have no prediction folder and score 0, e.g. %s',
                    len(missing), missing[0])
  overall = _overall(per_expression, num_frames, thresholds)
  extra = {'per_kind': _summarize_groups(by_kind, thresholds)} if by_kind else {}
  return {
      'overall': overall,
      'per_video': per_video,
      'per_expression': per_expression,
      'per_target': _summarize_groups(groups, thresholds),
      **extra,
      'skipped_expressions': [],
      'num_missing_predictions': len(missing),
      'missing_note': 'expressions without a prediction folder scored 0 (MeViS rule)',
      'settings': {'predictions': os.path.abspath(predictions), 'layout': 'mevis',
                   'split': os.path.abspath(split), 'bound_th': bound_th,
                   'prec_thresholds': list(thresholds)},
  }


# ------------------------------------------------------------------------------------------------
# Output.
# ------------------------------------------------------------------------------------------------


def _json_safe(value):
  """NaN -> None, so the file is strict JSON."""
  if isinstance(value, float) and math.isnan(value):
    return None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [_json_safe(v) for v in value]
  return value


def write_json(results: dict, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(_json_safe(results), f, indent=2, allow_nan=False)


def format_table(results: dict) -> str:
  """Human-readable table, scores in percent (as the paper's Tables 1-2)."""
  prec_keys = [k for k in results['overall'] if k.startswith('prec@')]
  columns = ['J', 'F', 'J&F', *prec_keys]

  def cell(value):
    return '-' if value is None or (isinstance(value, float) and math.isnan(value)) else (
        f'{100 * value:.1f}')

  sections = [('overall', {'overall': results['overall']})]
  if 'per_annotator' in results:
    sections.append(('Ref-DAVIS17 annotators', {
        ('annotator ' + k if k != 'average' else 'average (1, 2)'): v
        for k, v in results['per_annotator'].items()}))
    sections.append(('expression type', results['per_expression_type']))
  if 'per_kind' in results:
    sections.append(('expression kind', results['per_kind']))
  if 'per_target' in results:
    sections.append(('target', results['per_target']))
  sections.append(('video', results['per_video']))

  width = max([len(name) for _, rows in sections for name in rows] + [len('overall')])
  header = f'{"":<{width}}  ' + ' '.join(f'{c:>8}' for c in columns) + f' {"#exp":>6}'
  lines = []
  for title, rows in sections:
    lines += [f'== {title} ==', header]
    for name, row in rows.items():
      lines.append(f'{name:<{width}}  ' + ' '.join(f'{cell(row.get(c)):>8}' for c in columns)
                   + f' {row.get("num_expressions", 0):>6}')
    lines.append('')
  overall = results['overall']
  missing = results.get('missing_note', 'missing predictions scored as empty')
  lines.append(f'{overall["num_expressions"]} expressions, {overall["num_frames"]} annotated '
               f'frames scored; {len(results["skipped_expressions"])} expressions skipped; '
               f'{results["num_missing_predictions"]} {missing}.')
  return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------
# Model evaluation (periodic evaluation in training, --mode eval): predict, then score.
# ------------------------------------------------------------------------------------------------

RESULTS_JSON = 'results.json'
RESULTS_TABLE = 'results.txt'


def evaluate_model(predict_fn, variables, config, builder, vocab, output_dir: str, *,
                   split: str | None = None, propagator=None, **evaluate_kwargs) -> dict:
  """Predicts `split` (default config.data.eval_split) into <output_dir>/Annotations with
  `rvos_jax.predict.predict_split`, scores it with `evaluate_folder` against
  <root>/<split>/Annotations and <root>/meta_expressions/<split>/meta_expressions.json (per kind
  when expression_kinds.json is there; per annotator for refer_davis17), writes
  <output_dir>/results.json and results.txt (the table) and returns the results dict.

  config: the full config or config.data. propagator: rvos_jax.propagation (the masks then
  propagated from each expression's most confident frame, §3.4). evaluate_kwargs go to the
  scorer.
  """
  from rvos_jax import predict  # noqa: PLC0415 -- keeps the scorer CLI free of JAX.

  data_config = config.data if 'data' in config else config
  split = split or data_config.eval_split
  root = os.path.abspath(os.path.expanduser(data_config.root))
  if layouts.layout_of(data_config.get('name', 'refer_shapes')) == layouts.MEVIS:
    if not layouts.split_is_scored(root, split, layouts.MEVIS):
      raise EvaluationError(f'split {split!r} has no ground truth here '
                            f'({layouts.mask_dict_path(root, split)} is missing): it can only be '
                            'predicted (--mode predict) and scored by its server')
    predict.predict_split(predict_fn, variables, data_config, builder, vocab, output_dir,
                          split=split, propagator=propagator)
    results = evaluate_mevis_folder(os.path.join(output_dir, 'Annotations'),
                                    os.path.join(root, split), **evaluate_kwargs)
    return _write_results(results, split, output_dir)
  annotations = os.path.join(root, split, 'Annotations')
  meta = os.path.join(root, 'meta_expressions', split, 'meta_expressions.json')
  if os.path.isdir(annotations) and not os.path.exists(meta):
    raise EvaluationError(f'no meta_expressions for split {split!r}: {meta}')
  if not ytvos_layout.split_is_scored(root, split):
    raise EvaluationError(f'split {split!r} has no ground truth here ({annotations} is missing, '
                          f'or {meta} gives no obj_id): it can only be predicted (--mode '
                          'predict) and scored by its server')
  evaluate_kwargs.setdefault('annotator_average', data_config.get('name') == 'refer_davis17')
  predict.predict_split(predict_fn, variables, data_config, builder, vocab, output_dir,
                        split=split, propagator=propagator)
  results = evaluate_folder(os.path.join(output_dir, 'Annotations'), annotations, meta,
                            **evaluate_kwargs)
  results['settings']['split'] = split
  return _write_results(results, split, output_dir)


def _write_results(results: dict, split: str, output_dir: str) -> dict:
  """results.json and results.txt (the table) in output_dir; logs the overall scores."""
  table = format_table(results)
  write_json(results, os.path.join(output_dir, RESULTS_JSON))
  with open(os.path.join(output_dir, RESULTS_TABLE), 'w', encoding='utf-8') as f:
    f.write(table + '\n')
  overall = results['overall']
  logging.info('%s: J %.1f  F %.1f  J&F %.1f over %d expressions (%s)', split,
               100 * overall['J'], 100 * overall['F'], 100 * overall['J&F'],
               overall['num_expressions'], output_dir)
  return results


_SAID_UNSCORED = set()


def evaluate_or_predict(predict_fn, variables, config, builder, vocab, output_dir: str) -> dict:
  """evaluate_model where config.data.eval_split has ground truth here; otherwise (its
  valid split published without it) the predictions and <output_dir>/submission.zip, said
  once per split, and {}: training never depends on the eval split being scorable."""
  from rvos_jax import predict  # noqa: PLC0415 -- keeps the scorer CLI free of JAX.

  data_config = config.data if 'data' in config else config
  root = os.path.abspath(os.path.expanduser(data_config.root))
  split = data_config.eval_split
  if layouts.split_is_scored(root, split,
                             layouts.layout_of(data_config.get('name', 'refer_shapes'))):
    return evaluate_model(predict_fn, variables, config, builder, vocab, output_dir)
  if (root, split) not in _SAID_UNSCORED:
    _SAID_UNSCORED.add((root, split))
    logging.warning('eval split %r of %s has no ground truth here: evaluation writes its '
                    'predictions and submission.zip instead of scores', split, root)
  predict.predict_split(predict_fn, variables, data_config, builder, vocab, output_dir,
                        split=split, zip_path=os.path.join(output_dir, 'submission.zip'))
  return {}


# ------------------------------------------------------------------------------------------------
# CLI.
# ------------------------------------------------------------------------------------------------


def define_flags() -> None:
  """CLI flags; defined only when run as a script, so importing this module adds no flags."""
  flags.DEFINE_string('predictions', None, '<predictions>/<video>/<exp_id>/<frame>.png folder.')
  flags.DEFINE_string('annotations', None, 'Refer-YouTube-VOS layout: '
                      '<annotations>/<video>/<frame>.png folder.')
  flags.DEFINE_string('meta_expressions', None, 'meta_expressions.json. Beside a '
                      'mask_dict.json and without --annotations: a MeViS split (valid_u).')
  flags.DEFINE_string('mevis_split', None, 'MeViS: the split folder holding '
                      'meta_expressions.json and mask_dict.json (e.g. mevis/valid_u).')
  flags.DEFINE_string('output_json', None, 'Write the results JSON here.')
  flags.DEFINE_bool('annotator_average', False,
                    'Ref-DAVIS17: exp ids 4k..4k+3 = annotator 1 first/full, annotator 2 '
                    'first/full; report per annotator and their average.')
  flags.DEFINE_bool('missing_as_empty', False,
                    'Score a missing prediction of an annotated frame as an empty mask '
                    'instead of failing.')
  flags.DEFINE_float('bound_th', metrics.DEFAULT_BOUND_TH,
                     'F boundary tolerance: fraction of the image diagonal (<1) or pixels (>=1).')
  flags.mark_flags_as_required(['predictions'])


def _mevis_split(f) -> str | None:
  """The MeViS split folder the flags name (--mevis_split, or --meta_expressions beside a
  mask_dict.json with no --annotations), or None for the Refer-YouTube-VOS layout."""
  if f.mevis_split:
    return f.mevis_split
  if f.meta_expressions and not f.annotations:
    split = os.path.dirname(os.path.abspath(f.meta_expressions))
    if os.path.exists(os.path.join(split, 'mask_dict.json')):
      return split
  return None


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  mevis = _mevis_split(f)
  if mevis is None and not (f.annotations and f.meta_expressions):
    raise app.UsageError('give --annotations and --meta_expressions (Refer-YouTube-VOS '
                         'layout), or --mevis_split (MeViS)')
  try:
    if mevis is not None:
      results = evaluate_mevis_folder(f.predictions, mevis, bound_th=f.bound_th)
    else:
      results = evaluate_folder(
          f.predictions, f.annotations, f.meta_expressions,
          annotator_average=f.annotator_average, missing_as_empty=f.missing_as_empty,
          bound_th=f.bound_th)
  except EvaluationError as err:
    sys.exit(f'error: {err}')
  print(format_table(results))
  if f.output_json:
    write_json(results, f.output_json)
    print(f'results written to {f.output_json}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
