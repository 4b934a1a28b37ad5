"""Where predicted masks land: the target, look-alike distractors, other objects, background.

J says how wrong a mask is; this says which way. A model that ignores the words masks every
object (the hedge Dice rewards); one that reads single words but not their conjunction masks
objects that share the colour or the shape; one without motion masks both look-alike twins.
For every expression the predicted foreground pixels of each frame are split by the ground-truth
object under them, and each object is put in one class by its relation to the target:

  target         the referred object;
  twin           same category and same colour (refer_shapes' motion/position look-alikes);
  same category  same category (YouTube-VOS: "a lion" among lions; refer_shapes: same shape);
  same colour    same colour, other category (refer_shapes only: meta.json has 'colour');
  other objects  any other annotated object;
  background     no object.

Per expression kind (refer_shapes' expression_kinds.json) or over all expressions, it reports
the share of the predicted foreground in each class and the target recall (share of target
pixels predicted). Layouts as in `rvos_jax.evaluation`; `meta.json` is the split's
{"videos": {video: {"objects": {obj_id: {"category": ..., ["colour": ...]}}}}}.

  python -m rvos_jax.analysis.distractors --predictions DIR --annotations DIR \
      --meta_expressions FILE --meta FILE [--output_json FILE]
"""

import collections
import json
import os
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from rvos_jax import evaluation

CLASSES = ('target', 'twin', 'same category', 'same colour', 'other objects', 'background')


def relation(obj: dict, target: dict) -> str:
  """The class of a non-target object given both objects' meta.json entries."""
  same_category = obj.get('category') == target.get('category')
  colour = obj.get('colour')
  same_colour = colour is not None and colour == target.get('colour')
  if same_category and same_colour:
    return 'twin'
  if same_category:
    return 'same category'
  if same_colour:
    return 'same colour'
  return 'other objects'


def mask_mass(predictions: str, annotations: str, meta_expressions: str, meta: str) -> dict:
  """{group: {'recall': float, 'share': {class: float}, 'pixels': int, 'expressions': int}}
  with group = each expression kind when expression_kinds.json is present, and 'overall'."""
  expressions = evaluation.load_meta_expressions(meta_expressions)
  kinds = evaluation.load_expression_kinds(meta_expressions) or {}
  with open(meta) as f:
    objects = {v: x.get('objects', {}) for v, x in json.load(f)['videos'].items()}
  counts = collections.defaultdict(collections.Counter)
  for video, entry in expressions.items():
    if video not in objects:
      raise evaluation.EvaluationError(f'{meta}: no entry for video {video!r} of '
                                       f'{meta_expressions}')
    gt = {}
    for frame in entry['frames']:
      path = os.path.join(annotations, video, frame + '.png')
      if os.path.exists(path):
        gt[frame] = evaluation.read_annotation(path)
    for exp_id, exp in entry['expressions'].items():
      target_id = str(exp['obj_id'])
      if target_id not in objects[video]:
        raise evaluation.EvaluationError(f'{meta}: video {video!r} has no object {target_id} '
                                         f'(expression {exp_id})')
      target = objects[video][target_id]
      groups = ('overall', kinds.get(video, {}).get(exp_id, 'overall'))
      for group in set(groups):
        counts[group]['expressions'] += 1
      for frame, ids in gt.items():
        path = os.path.join(predictions, video, exp_id, frame + '.png')
        if not os.path.exists(path):
          raise evaluation.EvaluationError(f'{path}: no prediction for {video}/{exp_id} frame '
                                           f'{frame}')
        fg = evaluation.read_prediction(path)
        if fg.shape != ids.shape:
          raise evaluation.EvaluationError(f'{path}: mask {fg.shape} but annotation {ids.shape}')
        frame_counts = collections.Counter({'target pixels': int((ids == int(target_id)).sum())})
        values, pixels = np.unique(ids[fg], return_counts=True)
        for value, n in zip(values.tolist(), pixels.tolist(), strict=True):
          if value == 0:
            cls = 'background'
          elif str(value) == target_id:
            cls = 'target'
          else:
            cls = relation(objects[video].get(str(value), {}), target)
          frame_counts[cls] += n
        for group in set(groups):
          counts[group].update(frame_counts)
  out = {}
  for group, c in counts.items():
    total = sum(c[k] for k in CLASSES)
    out[group] = {
        'expressions': c['expressions'],
        'pixels': total,
        'recall': c['target'] / c['target pixels'] if c['target pixels'] else float('nan'),
        'share': {k: (c[k] / total if total else 0.0) for k in CLASSES},
    }
  return out


def format_table(results: dict) -> str:
  head = f'{"group":14s} {"#exp":>5s} {"recall":>7s} ' + ' '.join(f'{k:>14s}' for k in CLASSES)
  rows = [head]
  for group in sorted(results, key=lambda g: (g == 'overall', g)):
    r = results[group]
    rows.append(f'{group:14s} {r["expressions"]:5d} {100 * r["recall"]:7.1f} ' +
                ' '.join(f'{100 * r["share"][k]:14.1f}' for k in CLASSES))
  return ('share of the predicted foreground (%) on each object class; recall: % of target '
          'pixels predicted\n' + '\n'.join(rows))


def define_flags() -> None:
  flags.DEFINE_string('predictions', None, '<predictions>/<video>/<exp_id>/<frame>.png folder.')
  flags.DEFINE_string('annotations', None, '<annotations>/<video>/<frame>.png folder.')
  flags.DEFINE_string('meta_expressions', None, 'meta_expressions.json.')
  flags.DEFINE_string('meta', None, "The split's meta.json (object categories, colours).")
  flags.DEFINE_string('output_json', None, 'Write the results JSON here.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  results = mask_mass(f.predictions, f.annotations, f.meta_expressions, f.meta)
  print(format_table(results))
  if f.output_json:
    evaluation.write_json(results, f.output_json)


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['predictions', 'annotations', 'meta_expressions', 'meta'])
  app.run(main)
