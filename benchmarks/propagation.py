r"""Table 4 on refer_shapes: MLRL-SA without and with the STCN propagation of §3.4, on the same
checkpoints, in one run (scores per expression kind, frames/s of both on this machine).

  python -m benchmarks.propagation --stcn workdirs/propagation_refer_shapes/stcn \
      --run default_s0=configs/refer_shapes.py:previous@workdirs/refer_shapes \
      --run motion_s0=configs/refer_shapes.py:motion@workdirs/motion \
      --output benchmarks/results/table4_refer_shapes

Each --run is NAME=CONFIG[:ARG]@WORKDIR (the latest checkpoint of WORKDIR, evaluated on its
config's eval split and data root; --data_root overrides the root of every run). Both
settings predict the same split with the same checkpoint; the propagation reads the masks and
confidences the first pass wrote. frames/s: predicted frames over the wall time of the
prediction (and the propagation) alone, scoring excluded. Writes <output>.json and <output>.md.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import time

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

FLAGS = flags.FLAGS
flags.DEFINE_multi_string('run', [], 'NAME=CONFIG[:ARG]@WORKDIR of an MLRL-SA run.')
flags.DEFINE_string('stcn', None, 'The STCN checkpoint (port_stcn layout).')
flags.DEFINE_string('data_root', None, 'Override config.data.root of every run.')
flags.DEFINE_string('output', 'benchmarks/results/table4_refer_shapes', 'Output path stem.')
flags.DEFINE_integer('mem_every', 5, 'config.inference.mem_every.')
flags.DEFINE_integer('top_k', 20, 'config.inference.top_k.')

COLUMNS = ('J', 'F', 'J&F', 'prec@0.5', 'prec@0.7', 'prec@0.9')


def load_config(spec: str):
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('cfg', os.path.join(REPO, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def evaluate(config, workdir: str, output_dir: str, propagator) -> tuple[dict, float, int]:
  """(results, seconds of prediction, frames predicted) of one setting."""
  from data_pipelines import builders  # noqa: PLC0415
  from rvos_jax import evaluation, inference, predict  # noqa: PLC0415

  model, variables, vocab = inference.restore_for_inference(config, workdir)
  builder = builders.prepare(config.data)
  predict_fn = predict.make_predict_fn(model)
  split = config.data.eval_split
  # A first pass compiles; the timed pass then measures the steady state.
  predict.predict_split(predict_fn, variables, config.data, builder, vocab, output_dir,
                        split=split)
  start = time.perf_counter()
  predict.predict_split(predict_fn, variables, config.data, builder, vocab, output_dir,
                        split=split, propagator=propagator)
  seconds = time.perf_counter() - start
  root = os.path.abspath(os.path.expanduser(config.data.root))
  results = evaluation.evaluate_folder(
      os.path.join(output_dir, 'Annotations'), os.path.join(root, split, 'Annotations'),
      os.path.join(root, 'meta_expressions', split, 'meta_expressions.json'))
  return results, seconds, results['overall']['num_frames']


def row(results: dict, group: str | None = None) -> dict:
  scores = results['overall'] if group is None else results['per_kind'][group]
  return {c: scores.get(c) for c in COLUMNS} | {'num_expressions': scores['num_expressions']}


def main(argv):
  del argv
  from rvos_jax import port_stcn, propagation  # noqa: PLC0415

  if not FLAGS.run or not FLAGS.stcn:
    raise app.UsageError('give --stcn and at least one --run')
  model, variables = port_stcn.load_stcn(FLAGS.stcn)
  settings = propagation.Settings(mem_every=FLAGS.mem_every, top_k=FLAGS.top_k)
  propagator = propagation.Propagator(model, variables, settings)
  table = {'stcn': os.path.abspath(FLAGS.stcn), 'settings': dataclasses.asdict(settings),
           'runs': {}}
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
  for spec in FLAGS.run:
    name, _, rest = spec.partition('=')
    config_spec, _, workdir = rest.partition('@')
    config = load_config(config_spec)
    if FLAGS.data_root:
      config.data.root = FLAGS.data_root
    entry = {'config': config_spec, 'workdir': os.path.abspath(workdir)}
    for setting, prop in (('none', None), ('stcn', propagator)):
      out = os.path.join(workdir, 'table4', setting)
      results, seconds, frames = evaluate(config, workdir, out, prop)
      entry[setting] = {'overall': row(results),
                        'per_kind': {k: row(results, k) for k in sorted(results['per_kind'])},
                        'seconds': seconds, 'frames': frames,
                        'frames_per_second': frames / seconds}
      print(f'{name} {setting}: J&F {100 * results["overall"]["J&F"]:.1f} '
            f'({frames / seconds:.1f} frames/s)', flush=True)
    table['runs'][name] = entry
    with open(FLAGS.output + '.json', 'w') as f:
      json.dump(table, f, indent=1)
  with open(FLAGS.output + '.md', 'w') as f:
    f.write(markdown(table))
  print(markdown(table))


def markdown(table: dict) -> str:
  pct = lambda v: '-' if v is None else f'{100 * v:.1f}'
  lines = ['| run | propagation | J | F | J&F | prec@0.5 | prec@0.7 | prec@0.9 | '
           'appearance J&F | motion J&F | position J&F | occluded J&F | frames/s |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for name, entry in table['runs'].items():
    for setting in ('none', 'stcn'):
      e = entry[setting]
      kinds = [pct(e['per_kind'].get(k, {}).get('J&F'))
               for k in ('appearance', 'motion', 'position', 'occluded')]
      lines.append(f'| {name} | {setting} | ' + ' | '.join(pct(e['overall'][c])
                                                          for c in COLUMNS)
                   + ' | ' + ' | '.join(kinds) + f' | {e["frames_per_second"]:.1f} |')
  means = {}
  for setting in ('none', 'stcn'):
    means[setting] = np.mean([e[setting]['overall']['J&F'] for e in table['runs'].values()])
  lines.append('')
  lines.append(f'Mean J&F over runs: {100 * means["none"]:.1f} without, '
               f'{100 * means["stcn"]:.1f} with propagation.')
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  app.run(main)
