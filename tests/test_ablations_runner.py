"""benchmarks/ablations.py: end to end through main.py on the smoke base (2 variants, 1 seed,
1 step each), the 2-seed bookkeeping with a stub trainer, and the aggregation and the paper's
claims checked on hand-made numbers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from benchmarks import ablations

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Stands in for main.py: writes the final results.json a real run would write, with numbers
# made from (variant, seed), prints the trainer's progress line and counts its calls.
STUB_MAIN = r'''
import json, os, sys
args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if a.startswith('--') and '=' in a)
variant = sys.argv[sys.argv.index('--config') + 1].split(',')[1]
seed, steps = int(args['config.seed']), int(args['config.train.num_steps'])
assert args['config.data.seed'] == str(seed)
workdir = args['workdir']
os.makedirs(workdir, exist_ok=True)
with open(os.path.join(workdir, 'calls'), 'a') as f:
  f.write('1')
if variant == os.environ.get('STUB_FAIL'):
  sys.exit(3)
print(f'step {steps}/{steps}  loss 0.5000  12.50 steps/s  ETA 00:00:00', flush=True)
j = {'full': 0.70, 'no_video_level': 0.60}.get(variant, 0.5) + 0.02 * seed
kinds = {'appearance': j + 0.1, 'motion': j - 0.2, 'position': j}
results = {'overall': {'J': j, 'F': j + 0.04, 'J&F': j + 0.02},
           'per_kind': {k: {'J': v, 'F': v} for k, v in kinds.items()}}
out = os.path.join(workdir, 'eval', f'step_{steps}')
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, 'results.json'), 'w') as f:
  json.dump(results, f)
'''


def _md_rows(md: str, variants) -> list[str]:
  return [line for line in md.splitlines()
          if line.startswith('| ') and line.split('|')[1].strip() in variants]


def _check_png(path):
  assert os.path.getsize(path) > 0
  with Image.open(path) as im:
    assert im.format == 'PNG' and im.size[0] > 100 and im.size[1] > 100


def _check_aggregates(report, variants, seeds):
  """The report's aggregates, recomputed from its per-run numbers."""
  assert {(r['variant'], r['seed']) for r in report['runs']} == {
      (v, s) for v in variants for s in seeds}
  for variant in variants:
    runs = [r for r in report['runs'] if r['variant'] == variant]
    assert all(r['status'] == 'done' for r in runs)
    for metric in ablations.METRICS:
      values = [r['metrics'][metric] for r in runs if r['metrics'][metric] is not None]
      agg = report['aggregates'][variant][metric]
      if not values:
        assert agg is None, (variant, metric)
        continue
      assert agg['n'] == len(values)
      assert agg['mean'] == pytest.approx(np.mean(values))
      assert agg['std'] == pytest.approx(np.std(values, ddof=1) if len(values) > 1 else 0.0)
      assert (agg['min'], agg['max']) == pytest.approx((min(values), max(values)))


def test_end_to_end_on_the_smoke_base(tmp_path):
  """The command line trains through main.py, writes the three outputs and, started again,
  trains nothing."""
  variants = ['full', 'no_video_level']
  root = tmp_path / 'abl'
  cmd = [sys.executable, '-m', 'benchmarks.ablations', f'--workdir={root}',
         '--base=refer_shapes_smoke', f'--variants={",".join(variants)}', '--seeds=0',
         '--overrides=--config.train.num_steps=1',
         f'--overrides=--config.data.root={tmp_path / "data"}']

  # XLA's CPU backend without its optimisation passes: the same programs compile in about half
  # the CPU time, and one step of a smoke model does not need them.
  env = dict(os.environ, XLA_FLAGS='--xla_backend_optimization_level=0')

  def run():
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout

  out = run()
  assert 'step 1/1' in out  # the progress line
  report = json.loads((root / 'ablations.json').read_text())
  _check_aggregates(report, variants, [0])
  for r in report['runs']:
    assert r['trained_now'] and r['wall_s'] > 0 and r['steps_per_s'] > 0
    assert 0 <= r['metrics']['J&F'] <= 1
    assert (root / r['variant'] / 'seed_0' / 'eval' / 'step_1' / 'results.json').exists()
  b = report['budget']
  assert (b['num_steps'], b['batch_size'], b['num_frames'], b['height'], b['width']) == (
      1, 4, 4, 48, 64)
  assert b['seconds_per_run']['n'] == 2 and b['dataset']['seed'] == 0
  md = (root / 'ablations.md').read_text()
  assert len(_md_rows(md, variants)) == 2
  assert 'Budget per run: 1 step of batch 4, T=4 frames of 48x64' in md
  assert "## The paper's Table 3 claims, measured" in md
  _check_png(root / 'ablations.png')

  logs = {v: root / v / 'seed_0' / 'train.log' for v in variants}
  mtimes = {v: log.stat().st_mtime_ns for v, log in logs.items()}
  out = run()
  assert out.count('finished earlier, skipped') == 2 and 'training in' not in out
  assert {v: log.stat().st_mtime_ns for v, log in logs.items()} == mtimes
  again = json.loads((root / 'ablations.json').read_text())
  assert not any(r['trained_now'] for r in again['runs'])
  # The time of a skipped run is the one recorded when it trained.
  assert [r['wall_s'] for r in again['runs']] == [r['wall_s'] for r in report['runs']]


def test_two_seeds_failures_and_resume_with_a_stub_trainer(tmp_path, monkeypatch, capsys):
  stub = tmp_path / 'stub_main.py'
  stub.write_text(STUB_MAIN)
  root, variants, seeds = tmp_path / 'abl', ['full', 'no_video_level'], [0, 1]
  overrides = ['--config.train.num_steps=3', f'--config.data.root={tmp_path / "data"}']
  kwargs = dict(main=str(stub), output=str(tmp_path / 'out' / 'table'))

  report = ablations.run_ablations(str(root), 'refer_shapes_smoke', variants, seeds, overrides,
                                   **kwargs)
  _check_aggregates(report, variants, seeds)
  full = report['aggregates']['full']
  assert full['J']['mean'] == pytest.approx(0.71) and full['J']['n'] == 2
  assert full['J']['std'] == pytest.approx(np.std([0.70, 0.72], ddof=1))
  assert full['J:occluded'] is None  # the stub reports no occluded expressions
  assert all(r['steps_per_s'] == 12.5 for r in report['runs'])
  saved = json.loads((tmp_path / 'out' / 'table.json').read_text())
  assert saved['aggregates'] == json.loads(json.dumps(report['aggregates']))
  md = (tmp_path / 'out' / 'table.md').read_text()
  rows = _md_rows(md, variants)
  assert len(rows) == 2 and rows[0].startswith('| full | 73.0 ± 1.4 (2) | 71.0 ± 1.4 (2)')
  assert '| full > w/o video level | J&F | 49.7 vs 47.6: holds |' in md
  _check_png(tmp_path / 'out' / 'table.png')

  # Started again with one more variant that fails: only that one is trained, the rest kept.
  monkeypatch.setenv('STUB_FAIL', 'no_alignment')
  capsys.readouterr()
  report = ablations.run_ablations(str(root), 'refer_shapes_smoke', [*variants, 'no_alignment'],
                                   [0, 1], overrides, **kwargs)
  assert capsys.readouterr().out.count('finished earlier, skipped') == 4
  for v in variants:
    for s in seeds:
      assert (root / v / f'seed_{s}' / 'calls').read_text() == '1'
  failed = [r for r in report['runs'] if r['status'] == 'failed']
  assert [(r['variant'], r['returncode']) for r in failed] == [('no_alignment', 3)] * 2
  assert 'no_alignment' not in report['aggregates']
  md = (tmp_path / 'out' / 'table.md').read_text()
  assert 'Not in the table: no_alignment seed 0 (failed), no_alignment seed 1 (failed).' in md
  claim = next(c for c in report['claims'] if c['worse'] == 'no_alignment')
  assert claim['verdict'] == 'not measured'

  # Other settings in the same workdir would be mistaken for these: refused.
  with pytest.raises(ValueError, match='results of another command'):
    ablations.run_ablations(str(root), 'refer_shapes_smoke', ['full'], [0],
                            [*overrides, '--config.model.hidden_dim=16'], **kwargs)

  # --norun only collects: the failed runs are reported missing, nothing is called.
  report = ablations.run_ablations(str(root), 'refer_shapes_smoke', ['no_alignment'], [0],
                                   overrides, train=False, **kwargs)
  assert report['runs'][0]['status'] == 'missing'
  assert (root / 'no_alignment' / 'seed_0' / 'calls').read_text() == '1'


def test_overrides_are_checked():
  assert ablations.normalize_overrides(
      ['--config.train.num_steps=5 config.data.root=/x', "--config.data.root='/a b'"]) == [
          '--config.train.num_steps=5', '--config.data.root=/x', '--config.data.root=/a b']
  for bad in ('--config.seed=1', '--config.data.seed=1', '--config.train.final_eval=False',
              '--workdir=/x', '--config.train.num_steps'):
    with pytest.raises(ValueError):
      ablations.normalize_overrides([bad])
  with pytest.raises(ValueError, match='unknown variants'):
    ablations.check_arguments(['full', 'no_language'], [])
  with pytest.raises(AttributeError, match='num_steps'):
    ablations.resolve_config('refer_shapes_smoke', 'full', ['--config.train.num_stpes=1'])
  config = ablations.resolve_config('refer_shapes_smoke', 'frames_2',
                                    ['--config.train.num_steps=7'], seed=3)
  assert (config.train.num_steps, config.data.num_frames, config.seed, config.data.seed) == (
      7, 2, 3, 3)


def _run(variant, seed, **metrics):
  full = {m: None for m in ablations.METRICS}
  return {'variant': variant, 'seed': seed, 'status': 'done', 'metrics': {**full, **metrics}}


def test_aggregate_hand_made():
  runs = [_run('full', 0, **{'J&F': 0.6, 'J': 0.5, 'J:motion': 0.4}),
          _run('full', 1, **{'J&F': 0.8, 'J': 0.7}),
          _run('full', 2, **{'J&F': 0.7, 'J': 0.9, 'J:motion': 0.6}),
          {'variant': 'full', 'seed': 3, 'status': 'failed', 'metrics': None},
          _run('frames_1', 0, **{'J&F': 0.3})]
  agg = ablations.aggregate(runs)
  assert list(agg) == ['full', 'frames_1']
  jf = agg['full']['J&F']
  assert jf['n'] == 3 and jf['mean'] == pytest.approx(0.7)
  assert jf['std'] == pytest.approx(0.1)  # sample std of 0.6, 0.8, 0.7
  assert (jf['min'], jf['max']) == pytest.approx((0.6, 0.8))
  motion = agg['full']['J:motion']  # seed 1 has no motion expression
  assert motion['n'] == 2 and motion['mean'] == pytest.approx(0.5)
  assert motion['std'] == pytest.approx(np.std([0.4, 0.6], ddof=1))
  assert agg['full']['J:occluded'] is None
  assert agg['frames_1']['J&F'] == {'mean': 0.3, 'std': 0.0, 'min': 0.3, 'max': 0.3, 'n': 1,
                                    'values': [0.3]}
  assert ablations.run_metrics({'overall': {'J': 0.5, 'F': 0.7, 'J&F': 0.6},
                                'per_kind': {'motion': {'J': float('nan')}}}) == {
      'J&F': 0.6, 'J': 0.5, 'F': 0.7, 'J:appearance': None, 'J:motion': None,
      'J:position': None, 'J:occluded': None}


def test_verdicts():
  s = lambda *v: ablations.stats(v)
  assert ablations.verdict(s(0.7, 0.72), s(0.6, 0.65)) == 'holds'
  assert ablations.verdict(s(0.7, 0.72), s(0.69, 0.71)) == 'within spread'
  assert ablations.verdict(s(0.7, 0.72), s(0.73, 0.75)) == 'does not hold'
  assert ablations.verdict(s(0.7), s(0.7)) == 'does not hold'  # ties do not show "better"
  # With a margin: 5 points apart is not "far"; 8 are; 3..7 straddles it.
  assert ablations.verdict(s(0.70), s(0.65), margin=0.05) == 'does not hold'
  assert ablations.verdict(s(0.70), s(0.62), margin=0.05) == 'holds'
  assert ablations.verdict(s(0.70, 0.72), s(0.65, 0.67), margin=0.05) == 'within spread'
  assert ablations.verdict(None, s(0.5)) == 'not measured'


def test_paper_claims_hold_on_the_paper_numbers():
  claims = ablations.paper_claims(ablations.PAPER_FULL_T)
  checked = ablations.check_claims(ablations.paper_aggregates(), claims)
  assert [c['verdict'] for c in checked if c['in_paper']] == ['holds'] * 10
  assert [c['text'] for c in checked if c['text'].startswith('more frames')] == [
      'more frames are better: T=2 > T=1', 'more frames are better: T=4 > T=2',
      'more frames are better: T=8 > T=4', 'more frames are better: T=12 (full) > T=8']
  # Ours, not the paper's: motion expressions against w/o video level and the frame-only control.
  for motion, worse in zip(checked[-2:], ('no_video_level', 'frame_only'), strict=True):
    assert motion['worse'] == worse and motion['metric'] == 'J:motion'
    assert motion['verdict'] == 'not measured' and motion['paper_verdict'] == 'n/a'


def test_claims_that_fail_and_the_frames_chain_around_the_full_model():
  # Full model with T=6: the chain is 1 < 2 < 4 < 6 (full) < 8.
  claims = ablations.paper_claims(6)
  pairs = [(c.better, c.worse) for c in claims if c.text.startswith('more frames')]
  assert pairs == [('frames_2', 'frames_1'), ('frames_4', 'frames_2'), ('full', 'frames_4'),
                   ('frames_8', 'full')]
  agg = lambda *v: {'J&F': ablations.stats(v), 'J:motion': ablations.stats(v)}
  aggregates = {
      'full': agg(0.80, 0.82),
      'no_video_level': agg(0.84, 0.85),  # fails: above the full model
      'no_frame_level': agg(0.79, 0.83),  # within spread
      'no_alignment': agg(0.78, 0.79),  # below, but not far below
      'frames_8': agg(0.70, 0.72),  # fails: more frames are worse here
      'frames_4': agg(0.60, 0.61),
  }
  checked = {(c['better'], c['worse'], c['metric']): c
             for c in ablations.check_claims(aggregates, claims)}
  assert checked['full', 'no_video_level', 'J&F']['verdict'] == 'does not hold'
  assert checked['full', 'no_video_level', 'J&F']['difference'] == pytest.approx(-0.035)
  assert checked['full', 'no_video_level', 'J:motion']['verdict'] == 'does not hold'
  assert checked['full', 'no_frame_level', 'J&F']['verdict'] == 'within spread'
  assert checked['full', 'no_alignment', 'J&F']['verdict'] == 'does not hold'
  assert checked['full', 'no_alignment', 'J&F']['paper_verdict'] == 'holds'
  assert checked['full', 'frames_4', 'J&F']['verdict'] == 'holds'
  assert checked['frames_8', 'full', 'J&F']['verdict'] == 'does not hold'
  # The paper's full model (T=12) is not below its T=8: its numbers cannot check this one.
  assert checked['frames_8', 'full', 'J&F']['paper_verdict'] == 'n/a'
  assert checked['full', 'no_object_level', 'J&F']['verdict'] == 'not measured'
