"""Table 3's ablations on refer_shapes: trains every (variant, seed) with the same budget, then
writes one results table, a bar chart and the paper's Table 3 claims checked against the runs.

  python -m benchmarks.ablations --workdir workdirs/ablations        # all variants, seeds 0,1
  python -m benchmarks.ablations --workdir /tmp/abl --base refer_shapes_smoke \\
      --variants full,no_video_level --seeds 0 --overrides=--config.train.num_steps=1
  python -m benchmarks.ablations --workdir workdirs/ablations --norun  # re-aggregate only

Each run is `python main.py --config configs/ablations.py:<base>,<variant> --config.seed=<s>
--config.data.seed=<s> [overrides]` in <workdir>/<variant>/seed_<s> (its log: train.log there).
A run whose final evaluation exists is skipped and a killed one resumes from its checkpoint, so
the command can simply be started again. Outputs (--output, default <workdir>/ablations):
.json (every run, the aggregates over seeds, the budget, the claims), .md (the table and the
claims) and .png (J per expression kind per variant); they are rewritten after every run.
"""

import dataclasses
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from configs import ablations

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = 'configs/ablations.py'
KINDS = ('appearance', 'motion', 'position', 'occluded')
# 'J:<kind>' is J over the expressions of one refer_shapes kind (evaluation's 'per_kind').
METRICS = ('J&F', 'J', 'F', *(f'J:{kind}' for kind in KINDS))
RUN_RECORD = 'ablation_run.json'
RUN_LOG = 'train.log'
# The trainer's progress line (rvos_jax/train.py).
STEP_RE = re.compile(r'step (\d+)/(\d+)\s+loss (\S+)\s+(\S+) steps/s\s+ETA (\S+)')
PROGRESS_EVERY_S = 30.0

# The paper's Table 3 (Refer-YouTube-VOS val, J and F in percent). Its full model uses T=12.
PAPER_TABLE3 = {
    'full': (48.43, 50.96),
    'no_video_level': (46.25, 49.04),
    'no_frame_level': (47.09, 49.58),
    'no_object_level': (46.95, 49.10),
    'object_encoder_fcn': (47.24, 49.65),
    'object_encoder_frame': (47.56, 50.04),
    'no_alignment': (36.23, 40.40),
    'frames_1': (46.12, 48.90),
    'frames_2': (46.80, 49.24),
    'frames_4': (47.47, 49.83),
    'frames_8': (48.11, 50.41),
}
PAPER_FULL_T = 12
# "Far below": the paper's drop without alignment is 11.4 J&F points, its largest other drop
# 2.2; 5 points separates the two kinds of effect.
FAR_BELOW = 0.05

# ------------------------------------------------------------------------------------------------
# Configs and runs.
# ------------------------------------------------------------------------------------------------


def seed_flags(seed: int | None) -> list[str]:
  return [] if seed is None else [f'--config.seed={seed}', f'--config.data.seed={seed}']


def normalize_overrides(raw: Sequence[str]) -> list[str]:
  """'--config.a.b=v' strings; an entry may hold several (shell-quoted)."""
  out = []
  for entry in raw:
    for item in shlex.split(entry):
      if item.startswith('config.'):
        item = '--' + item
      if not item.startswith('--config.') or '=' not in item:
        raise ValueError(f'override {item!r} is not of the form --config.<key>=<value>')
      key = item[2:].split('=', 1)[0]
      # The runner owns these: the seeds are its loop, and without the final evaluation a run
      # has no results (and would be retrained on every restart).
      if key in ('config.seed', 'config.data.seed', 'config.train.final_eval'):
        raise ValueError(f'--{key} is set by the ablation runner; do not override it')
      out.append(item)
  return out


def resolve_config(base: str, variant: str, overrides: Sequence[str], seed: int | None = None):
  """The config main.py will see, parsed the way main.py parses it (so a mistyped override
  fails here, before hours of training, and the budget is read from the real values)."""
  argv = ['ablations', f'--config={os.path.join(REPO, CONFIG_FILE)}:{base},{variant}',
          *overrides, *seed_flags(seed)]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=values, lock_config=True,
                                  sys_argv=argv)
  with warnings.catch_warnings():
    # ml_collections loads the config file with the deprecated load_module (once per variant
    # here, so the warning would repeat a dozen times per run).
    warnings.filterwarnings('ignore', r'the load_module\(\) method is deprecated',
                            DeprecationWarning)
    values(argv)
  return values.config


def run_dir(root: str, variant: str, seed: int) -> str:
  return os.path.join(root, variant, f'seed_{seed}')


def final_results_path(workdir: str, config) -> str:
  """Where train.train_and_evaluate writes the evaluation after the last step."""
  return os.path.join(workdir, 'eval', f'step_{config.train.num_steps}', 'results.json')


def _finite(value):
  value = None if value is None else float(value)
  return None if value is None or math.isnan(value) else value


def run_metrics(results: Mapping) -> dict[str, float | None]:
  """METRICS of one evaluation's results.json (None where a kind has no expression)."""
  overall = results['overall']
  out = {key: _finite(overall.get(key)) for key in ('J&F', 'J', 'F')}
  per_kind = results.get('per_kind', {})
  for kind in KINDS:
    out[f'J:{kind}'] = _finite(per_kind.get(kind, {}).get('J'))
  return out


def prepare_dataset(config, generate: bool = True) -> dict:
  """Generates refer_shapes once, from the base config's data.seed: otherwise the first run
  would generate it with its own seed and the dataset would depend on the order of the runs.
  Returns what the dataset is (its generator settings)."""
  data = config.data
  if data.name != 'refer_shapes':
    return {'name': data.name, 'root': data.root}
  from data_pipelines import refer_shapes, ytvos_layout  # noqa: PLC0415 -- refer_shapes only
  root = os.path.join(REPO, os.path.expanduser(data.root))
  if generate and not os.path.exists(ytvos_layout.meta_expressions_path(root, 'train')):
    print(f'generating refer_shapes in {root} (seed {data.seed})', flush=True)
    refer_shapes.generate(root, seed=data.seed, **data.generate.to_dict())
  info = {'name': data.name, 'root': os.path.abspath(root)}
  summary = os.path.join(root, 'refer_shapes.json')
  if os.path.exists(summary):
    with open(summary) as f:
      info.update(json.load(f))
  return info


def _execute(cmd: Sequence[str], workdir: str, label: str) -> tuple[int, float, float | None]:
  """Runs one training, its output appended to <workdir>/train.log; prints a progress line at
  most every PROGRESS_EVERY_S. Returns (exit code, wall seconds, last logged steps/s)."""
  os.makedirs(workdir, exist_ok=True)
  env = dict(os.environ, PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2')
  rate, last_print = None, 0.0
  start = time.time()
  with open(os.path.join(workdir, RUN_LOG), 'a') as log:
    log.write(f'\n$ {shlex.join(cmd)}\n')
    log.flush()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    try:
      for line in proc.stdout:
        log.write(line)
        m = STEP_RE.search(line)
        if m:
          step, total, loss, rate_s, eta = m.groups()
          rate = float(rate_s)
          if time.time() - last_print >= PROGRESS_EVERY_S or step == total:
            last_print = time.time()
            print(f'  {label}: step {step}/{total}  loss {loss}  {rate_s} steps/s  ETA {eta}',
                  flush=True)
    finally:
      returncode = proc.wait()
  return returncode, time.time() - start, rate


def _tail(path: str, lines: int = 20) -> str:
  with open(path, errors='replace') as f:
    return ''.join(f.readlines()[-lines:])


def run_one(root: str, base: str, variant: str, seed: int, overrides: Sequence[str], *,
            main: str = 'main.py', train: bool = True, label: str = '') -> dict:
  """Trains one (variant, seed) unless its final results exist; returns its record."""
  config = resolve_config(base, variant, overrides, seed)
  workdir = run_dir(root, variant, seed)
  results_path = final_results_path(workdir, config)
  record_path = os.path.join(workdir, RUN_RECORD)
  previous = {}
  if os.path.exists(record_path):
    with open(record_path) as f:
      previous = json.load(f)
  label = label or f'{variant} seed {seed}'
  cmd = [sys.executable, main, '--config', f'{CONFIG_FILE}:{base},{variant}',
         f'--workdir={workdir}', *overrides, *seed_flags(seed)]
  record = {
      'variant': variant, 'seed': seed, 'workdir': workdir, 'command': cmd,
      'num_steps': config.train.num_steps, 'batch_size': config.data.batch_size,
      'num_frames': config.data.num_frames, 'height': config.data.height,
      'width': config.data.width, 'results': results_path,
      'attempts': previous.get('attempts', 0), 'wall_s': previous.get('wall_s'),
      'steps_per_s': previous.get('steps_per_s'), 'returncode': previous.get('returncode'),
      'trained_now': False,
  }
  if os.path.exists(results_path):
    # Results of other settings in the same place would be aggregated as if they were these.
    if previous.get('command') and previous['command'][1:] != cmd[1:]:
      raise ValueError(f'{workdir} holds the results of another command:\n'
                       f'  {shlex.join(previous["command"][1:])}\nnot\n  {shlex.join(cmd[1:])}'
                       '\nuse another --workdir for other settings')
    print(f'{label}: finished earlier, skipped ({results_path})', flush=True)
  elif not train:
    print(f'{label}: no results yet (--norun)', flush=True)
    return {**record, 'status': 'missing', 'metrics': None}
  else:
    print(f'{label}: training in {workdir}', flush=True)
    returncode, wall, rate = _execute(cmd, workdir, label)
    # A failed attempt's time is kept: the retry resumes from its checkpoint, so the run's cost
    # is the sum of its attempts.
    record.update(attempts=record['attempts'] + 1, wall_s=(record['wall_s'] or 0.0) + wall,
                  steps_per_s=rate, returncode=returncode, trained_now=True)
    if returncode != 0 or not os.path.exists(results_path):
      record.update(status='failed', metrics=None)
      with open(record_path, 'w') as f:
        json.dump(record, f, indent=2)
      print(f'{label}: FAILED (exit code {returncode}); the end of '
            f'{os.path.join(workdir, RUN_LOG)}:\n{_tail(os.path.join(workdir, RUN_LOG))}',
            flush=True)
      return record
  with open(results_path) as f:
    record.update(status='done', metrics=run_metrics(json.load(f)))
  if record['trained_now'] or not previous:
    with open(record_path, 'w') as f:
      json.dump({k: v for k, v in record.items() if k != 'metrics'}, f, indent=2)
  if record['trained_now']:
    print(f'{label}: done in {record["wall_s"]:.0f} s, J&F {_pct(record["metrics"]["J&F"])}',
          flush=True)
  return record


# ------------------------------------------------------------------------------------------------
# Aggregation and the paper's claims.
# ------------------------------------------------------------------------------------------------


def stats(values: Sequence[float]) -> dict | None:
  """Mean, spread (min..max) and sample std (ddof=1; 0 for one seed) of a metric over seeds."""
  values = [float(v) for v in values if v is not None]
  if not values:
    return None
  x = np.asarray(values)
  return {'mean': float(x.mean()), 'std': float(x.std(ddof=1)) if x.size > 1 else 0.0,
          'min': float(x.min()), 'max': float(x.max()), 'n': int(x.size), 'values': values}


def aggregate(runs: Sequence[Mapping]) -> dict[str, dict[str, dict | None]]:
  """{variant: {metric: stats over its finished seeds}}, variants in order of appearance."""
  by_variant = {}
  for run in runs:
    if run.get('status') == 'done':
      by_variant.setdefault(run['variant'], []).append(run['metrics'])
  return {variant: {metric: stats([m.get(metric) for m in ms]) for metric in METRICS}
          for variant, ms in by_variant.items()}


@dataclasses.dataclass(frozen=True)
class Claim:
  """`better` scores above `worse` on `metric` by more than `margin`."""
  text: str
  better: str
  worse: str
  metric: str = 'J&F'
  margin: float = 0.0
  in_paper: bool = True  # stated in the paper's Table 3 (so its numbers can check it)


def _frames_of(variant: str, full_frames: int) -> int:
  return int(variant.split('_')[1]) if variant.startswith('frames_') else full_frames


def _t_name(variant: str, frames: int) -> str:
  return f'T={frames}' + (' (full)' if variant == 'full' else '')


def paper_claims(full_frames: int) -> list[Claim]:
  """Table 3's ordering claims; `full_frames` is the full model's T here (the paper's is 12),
  which places it in the "more frames are better" chain."""
  claims = [Claim(f'full > w/o {level} level', 'full', f'no_{level}_level')
            for level in ('video', 'frame', 'object')]
  claims += [Claim('full (video object encoder) > FCN object encoder', 'full',
                   'object_encoder_fcn'),
             Claim('full (video object encoder) > frame object encoder', 'full',
                   'object_encoder_frame'),
             Claim(f'w/o alignment far below full (by more than {100 * FAR_BELOW:.0f} points)',
                   'full', 'no_alignment', margin=FAR_BELOW)]
  # More frames are better: consecutive T of frames_t and the full model. A frames_t with the
  # full model's T is the full model again and adds no claim.
  chain = sorted({_frames_of(v, full_frames): v for v in ablations.VARIANTS
                  if v.startswith('frames_') and _frames_of(v, full_frames) != full_frames}
                 .items())
  chain = sorted([*chain, (full_frames, 'full')])
  for (t_lo, lo), (t_hi, hi) in itertools.pairwise(chain):
    claims.append(Claim(f'more frames are better: {_t_name(hi, t_hi)} > {_t_name(lo, t_lo)}',
                        hi, lo))
  # The paper's qualitative claim (Fig. 5) behind the video level: moving objects. refer_shapes
  # has motion expressions to measure it; the paper gives no per-kind numbers.
  claims.append(Claim('full > w/o video level on motion expressions', 'full', 'no_video_level',
                      metric='J:motion', in_paper=False))
  claims.append(Claim('full > frame only on motion expressions', 'full', 'frame_only',
                      metric='J:motion', in_paper=False))
  return claims


def verdict(better: Mapping | None, worse: Mapping | None, margin: float = 0.0) -> str:
  """'holds' when every seed of `better` beats every seed of `worse` by more than margin;
  'does not hold' when not even the best pair of seeds does; otherwise 'within spread'."""
  if not better or not worse:
    return 'not measured'
  if better['min'] - worse['max'] > margin:
    return 'holds'
  if better['max'] - worse['min'] <= margin:
    return 'does not hold'
  return 'within spread'


def paper_aggregates() -> dict[str, dict[str, dict]]:
  """Table 3 as one-seed aggregates on the 0..1 scale of ours."""
  return {v: {'J': stats([j / 100]), 'F': stats([f / 100]), 'J&F': stats([(j + f) / 200])}
          for v, (j, f) in PAPER_TABLE3.items()}


def check_claims(aggregates: Mapping, claims: Sequence[Claim]) -> list[dict]:
  paper = paper_aggregates()
  out = []
  for claim in claims:
    better = aggregates.get(claim.better, {}).get(claim.metric)
    worse = aggregates.get(claim.worse, {}).get(claim.metric)
    # The paper's full model has T=12: a frames claim that places it below some frames_t here
    # (our full model has fewer frames) is not one the paper's numbers speak to.
    frames_claim = any(v.startswith('frames_') for v in (claim.better, claim.worse))
    paper_order = not frames_claim or (
        _frames_of(claim.better, PAPER_FULL_T) > _frames_of(claim.worse, PAPER_FULL_T))
    paper_ok = claim.in_paper and paper_order and claim.metric in ('J', 'F', 'J&F')
    p_better = paper[claim.better][claim.metric] if paper_ok else None
    p_worse = paper[claim.worse][claim.metric] if paper_ok else None
    out.append({
        **dataclasses.asdict(claim),
        'verdict': verdict(better, worse, claim.margin),
        'better_stats': better, 'worse_stats': worse,
        'difference': better['mean'] - worse['mean'] if better and worse else None,
        'paper_verdict': verdict(p_better, p_worse, claim.margin) if paper_ok else 'n/a',
        'paper_better': p_better['mean'] if paper_ok else None,
        'paper_worse': p_worse['mean'] if paper_ok else None,
    })
  return out


# ------------------------------------------------------------------------------------------------
# Outputs.
# ------------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
  return '—' if value is None else f'{100 * value:.1f}'


def _cell(s: Mapping | None) -> str:
  return '—' if not s else f'{_pct(s["mean"])} ± {_pct(s["std"])} ({s["n"]})'


def _range(s: Mapping | None) -> str:
  return '—' if not s else f'{_pct(s["mean"])} [{_pct(s["min"])}..{_pct(s["max"])}]'


def budget(configs: Mapping, runs: Sequence[Mapping], seeds: Sequence[int],
           overrides: Sequence[str], dataset: Mapping) -> dict:
  """What every run got: the full model's config (variants differ only in what they ablate,
  and frames_t in T), and the measured time per run."""
  full = configs['full']
  walls = [r['wall_s'] for r in runs if r.get('status') == 'done' and r.get('wall_s')]
  rates = [r['steps_per_s'] for r in runs if r.get('status') == 'done' and r.get('steps_per_s')]
  return {
      'num_steps': full.train.num_steps, 'batch_size': full.data.batch_size,
      'height': full.data.height, 'width': full.data.width, 'num_frames': full.data.num_frames,
      'num_frames_per_variant': {v: c.data.num_frames for v, c in configs.items()},
      'seeds': list(seeds), 'overrides': list(overrides), 'dataset': dict(dataset),
      'seconds_per_run': stats(walls), 'steps_per_s': stats(rates),
      'total_seconds': float(sum(walls)), 'cpu_count': os.cpu_count(),
  }


def budget_line(b: Mapping) -> str:
  seconds = b['seconds_per_run']
  time_text = ('time not recorded' if not seconds else
               f'{seconds["mean"]:.0f} s per run on average ({seconds["min"]:.0f}..'
               f'{seconds["max"]:.0f} s, {b["total_seconds"] / 3600:.2f} h in all)')
  rate = b['steps_per_s']
  rate_text = f', {rate["mean"]:.2f} steps/s' if rate else ''
  overrides = f'; overrides: `{" ".join(b["overrides"])}`' if b['overrides'] else ''
  steps = f'{b["num_steps"]} step' + ('s' if b['num_steps'] != 1 else '')
  return (f'Budget per run: {steps} of batch {b["batch_size"]}, '
          f'T={b["num_frames"]} frames of {b["height"]}x{b["width"]} (frames_t: T=t); '
          f'seeds {", ".join(map(str, b["seeds"]))}; {time_text}{rate_text} on '
          f'{b["cpu_count"]} CPU cores{overrides}.')


def markdown(report: Mapping, compare_paper: bool = True) -> str:
  aggregates, b = report['aggregates'], report['budget']
  lines = [f'# Table 3 ablations on refer_shapes (base `{report["base"]}`)', '',
           budget_line(b), '',
           'Scores in percent, mean ± sample std over seeds (number of seeds). The paper column '
           "is its Table 3 on Refer-YouTube-VOS (J / F, full model T=12): a reference for the "
           'ordering, not for the values.', '',
           '| variant | J&F | J | F | J appearance | J motion | J position | J occluded '
           '| paper J / F |',
           '|---|' + '---:|' * 8]
  for variant in report['variants']:
    agg = aggregates.get(variant, {})
    paper = PAPER_TABLE3.get(variant)
    paper_cell = f'{paper[0]:.1f} / {paper[1]:.1f}' if paper else '—'
    lines.append(f'| {variant} | ' + ' | '.join(_cell(agg.get(m)) for m in METRICS)
                 + f' | {paper_cell} |')
  unfinished = [r for r in report['runs'] if r['status'] != 'done']
  if unfinished:
    lines += ['', 'Not in the table: ' + ', '.join(
        f'{r["variant"]} seed {r["seed"]} ({r["status"]})' for r in unfinished) + '.']
  if compare_paper and report.get('claims'):
    claims = report['claims']
    counts = {v: sum(c['verdict'] == v for c in claims)
              for v in ('holds', 'within spread', 'does not hold', 'not measured')}
    lines += ['', "## The paper's Table 3 claims, measured", '',
              'holds: every seed of the first variant beats every seed of the second (by more '
              'than the margin); does not hold: not even the best pair of seeds does; within '
              'spread: the seeds of the two overlap. Measured: mean [min..max] over seeds, in '
              'percent; paper: its numbers and its verdict.', '',
              '| claim | metric | paper | measured | verdict |', '|---|---|---|---|---|']
    for c in claims:
      paper = ('n/a' if c['paper_verdict'] == 'n/a' else
               f'{_pct(c["paper_better"])} vs {_pct(c["paper_worse"])}: {c["paper_verdict"]}')
      measured = f'{_range(c["better_stats"])} vs {_range(c["worse_stats"])}'
      lines.append(f'| {c["text"]} | {c["metric"]} | {paper} | {measured} | '
                   f'**{c["verdict"]}** |')
    lines += ['', ', '.join(f'{n} {v}' for v, n in counts.items() if n) + f' of {len(claims)} '
              'claims.']
  return '\n'.join(lines) + '\n'


def plot_kinds(aggregates: Mapping, path: str, title: str = '') -> None:
  """Grouped bars: J per expression kind (and over all expressions), one bar per variant,
  error bars from the lowest to the highest seed."""
  import matplotlib  # noqa: PLC0415 -- only the chart needs it
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415

  variants = list(aggregates)
  kinds = [k for k in KINDS if any(aggregates[v].get(f'J:{k}') for v in variants)]
  groups = [*(f'J:{k}' for k in kinds), 'J']
  x = np.arange(len(groups))
  width = 0.8 / max(len(variants), 1)
  colours = plt.get_cmap('tab20')
  fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.25 * len(groups) * len(variants)), 4.0))
  for i, variant in enumerate(variants):
    cells = [aggregates[variant].get(g) for g in groups]
    mean = np.array([100 * c['mean'] if c else np.nan for c in cells])
    lo = np.array([100 * c['min'] if c else np.nan for c in cells])
    hi = np.array([100 * c['max'] if c else np.nan for c in cells])
    ax.bar(x + (i - (len(variants) - 1) / 2) * width, mean, width, label=variant,
           color=colours(i % 20), yerr=np.stack([mean - lo, hi - mean]), capsize=2,
           error_kw={'elinewidth': 0.8})
  ax.set_xticks(x, [g.split(':', 1)[1] if ':' in g else 'all' for g in groups])
  ax.set_ylabel('J (%)')
  ax.set_ylim(0, 100)
  ax.grid(axis='y', alpha=0.3)
  if variants:
    ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.0, 1.0))
  else:
    ax.text(0.5, 0.5, 'no finished runs yet', ha='center', transform=ax.transAxes)
  if title:
    ax.set_title(title, fontsize=8)
  fig.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(fig)


def _json_safe(value):
  if isinstance(value, float) and math.isnan(value):
    return None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def write_outputs(report: Mapping, prefix: str, compare_paper: bool = True) -> dict[str, str]:
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  paths = {ext: f'{prefix}.{ext}' for ext in ('json', 'md', 'png')}
  with open(paths['json'], 'w') as f:
    json.dump(_json_safe(report), f, indent=2)
  with open(paths['md'], 'w') as f:
    f.write(markdown(report, compare_paper))
  b = report['budget']
  plot_kinds(report['aggregates'], paths['png'],
             f'refer_shapes ({report["base"]}): J per expression kind, {b["num_steps"]} steps, '
             f'seeds {",".join(map(str, b["seeds"]))}; bars: min..max over seeds')
  return paths


def make_report(base, variants, seeds, overrides, configs, runs, dataset) -> dict:
  aggregates = aggregate(runs)
  report = {'base': base, 'variants': list(variants), 'runs': list(runs),
            'aggregates': aggregates,
            'budget': budget(configs, runs, seeds, overrides, dataset),
            'paper_table3': {v: {'J': j, 'F': f, 'J&F': (j + f) / 2}
                             for v, (j, f) in PAPER_TABLE3.items()}}
  report['claims'] = check_claims(aggregates, paper_claims(configs['full'].data.num_frames))
  return report


def check_arguments(variants: Sequence[str], overrides: Sequence[str]):
  """(variants, normalized overrides); ValueError on an unknown variant or a bad override."""
  variants = list(variants or ablations.VARIANTS)
  unknown = [v for v in variants if v not in ablations.VARIANTS]
  if unknown:
    raise ValueError(f'unknown variants {unknown}; choose from {list(ablations.VARIANTS)}')
  return variants, normalize_overrides(overrides)


def run_ablations(root: str, base: str = 'refer_shapes', variants: Sequence[str] = (),
                  seeds: Sequence[int] = (0, 1), overrides: Sequence[str] = (), *,
                  output: str = '', compare_paper: bool = True, train: bool = True,
                  main: str = 'main.py') -> dict:
  """Runs (or, with train=False, only collects) every (variant, seed); writes the outputs
  after each trained run and at the end; returns the report."""
  variants, overrides = check_arguments(variants, overrides)
  root = os.path.abspath(root)
  # Every variant's config, also of those not run: the claims need the full model's T.
  configs = {v: resolve_config(base, v, overrides) for v in ablations.VARIANTS}
  if configs['full'].train.num_steps <= 0:
    raise ValueError('config.train.num_steps must be positive: the runs need a final eval')
  dataset = prepare_dataset(configs['full'], generate=train)
  prefix = output or os.path.join(root, 'ablations')
  jobs = list(itertools.product(variants, seeds))
  runs = []
  for i, (variant, seed) in enumerate(jobs, 1):
    runs.append(run_one(root, base, variant, seed, overrides, main=main, train=train,
                        label=f'[{i}/{len(jobs)}] {variant} seed {seed}'))
    if runs[-1]['trained_now']:  # hours-long batches: a partial table is there to look at
      write_outputs(make_report(base, variants, seeds, overrides, configs, runs, dataset),
                    prefix, compare_paper)
  report = make_report(base, variants, seeds, overrides, configs, runs, dataset)
  paths = write_outputs(report, prefix, compare_paper)
  print(f'wrote {", ".join(paths.values())}', flush=True)
  return report


def define_flags() -> None:
  # Defined only when run as a script, so that importing this module (the tests do) registers
  # no --workdir or --output that could clash with another module's flags.
  flags.DEFINE_list('variants', list(ablations.VARIANTS),
                    f'Variants to run, of {", ".join(ablations.VARIANTS)}.')
  flags.DEFINE_list('seeds', ['0', '1'], 'Seeds (config.seed and config.data.seed).')
  flags.DEFINE_enum('base', 'refer_shapes', sorted(ablations.BASES),
                    'Base config of configs/ablations.py (refer_shapes_smoke for tests).')
  flags.DEFINE_string('workdir', None, 'Root: each run in <root>/<variant>/seed_<s>.',
                      required=True)
  flags.DEFINE_multi_string(
      'overrides', [], 'Extra config overrides for every run, e.g. '
      '--overrides=--config.train.num_steps=300 (repeatable; one entry may hold several).')
  flags.DEFINE_string('output', '', 'Output prefix ("" = <workdir>/ablations).')
  flags.DEFINE_bool('compare_paper', True,
                    "Check the paper's Table 3 claims against the measured means.")
  flags.DEFINE_bool('run', True, 'Train the missing runs; --norun only aggregates.')
  flags.DEFINE_string('main', 'main.py',
                      'Training entry point, relative to the repository (tests use a stub).')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  try:
    seeds = [int(s) for s in f.seeds]
    check_arguments(f.variants, f.overrides)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  report = run_ablations(f.workdir, f.base, f.variants, seeds, f.overrides, output=f.output,
                         compare_paper=f.compare_paper, train=f.run, main=f.main)
  failed = [r for r in report['runs'] if r['status'] == 'failed']
  if failed:
    sys.exit(f'{len(failed)} run(s) failed: '
             + ', '.join(f'{r["variant"]} seed {r["seed"]}' for r in failed))


if __name__ == '__main__':
  define_flags()
  app.run(main)
