r"""Frames/s without and with the STCN propagation (Table 4's speed columns), JAX against the
PyTorch reference, in one run.

  python -m benchmarks.propagation_speed                      # paper setting (240x432)
  python -m benchmarks.propagation_speed --settings=paper,embedded --repeats=3

Per setting and framework, in a child process each (never two at once):
  mlrl_sa    MLRL-SA inference on one T-frame window (benchmarks.model_speed's `infer` row):
             seconds per frame = window time / T;
  stcn       one propagated frame: encode_key, the memory read + decoder against a bank of
             1 + `--memory_frames` frames, and 1/mem_every of a value encoding (one frame in
             mem_every enters the memory): seconds per frame.
`with propagation` = 1 / (mlrl_sa s/frame + stcn s/frame): every frame is segmented by
MLRL-SA (the confidence picks the reference) and then propagated. paper: the released STCN
(ResNet-50 / ResNet-18, C_k 64, C_v 512) at 240x432 beside configs/default.py; embedded:
configs/propagation_refer_shapes.py's STCN at 64x96 beside configs/refer_shapes.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_list('settings', ['paper'], 'paper and/or embedded.')
flags.DEFINE_list('frameworks', ['jax', 'torch'], 'jax and/or torch.')
flags.DEFINE_integer('repeats', 5, 'Timed calls (median reported).')
flags.DEFINE_integer('warmup', 2, 'Untimed calls first.')
flags.DEFINE_integer('memory_frames', 4, 'Frames in the bank besides the reference.')
flags.DEFINE_integer('mem_every', 5, 'A memory frame every this many frames.')
flags.DEFINE_string('child', None, 'Internal: run one row.')
flags.DEFINE_string('json', None, 'Write the rows here.')
FLAGS = flags.FLAGS

PAPER = dict(key_depth=50, value_depth=18, width=1.0, key_dim=64, value_dim=512,
             decoder_dim=256, stem_pool=True)


def _setting(name):
  if name == 'paper':
    return PAPER, 240, 432
  from configs import propagation_refer_shapes  # noqa: PLC0415
  c = propagation_refer_shapes.get_config()
  return c.stcn.to_dict(), c.data.height, c.data.width


def _median(fn):
  for _ in range(FLAGS.warmup):
    fn()
  times = []
  for _ in range(FLAGS.repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return sorted(times)[len(times) // 2]


def stcn_jax(setting):
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from rvos_jax.models import stcn  # noqa: PLC0415
  arch, h, w = _setting(setting)
  model = stcn.STCN(**arch)
  rng = np.random.default_rng(0)
  frame = jnp.asarray(rng.normal(size=(1, h, w, 3)), jnp.float32)
  v = model.init(jax.random.key(0), frame, jnp.zeros((1, 1, h, w)), frame)
  key_fn = jax.jit(lambda v, f: model.apply(v, f, method=stcn.STCN.encode_key))
  value_fn = jax.jit(lambda v, f, f16, m: model.apply(v, f, f16, m,
                                                      method=stcn.STCN.encode_value))
  k, qv, f16, f8, f4 = key_fn(v, frame)
  n = (1 + FLAGS.memory_frames) * k.shape[1] * k.shape[2]
  mk = jnp.asarray(rng.normal(size=(1, n, k.shape[-1])), jnp.float32)
  mv = jnp.asarray(rng.normal(size=(1, 1, n, qv.shape[-1])), jnp.float32)
  seg_fn = jax.jit(lambda v, *a: model.apply(v, *a, top_k=20, method=stcn.STCN.segment))
  mask = jnp.zeros((1, 1, h, w))

  def step():
    k, qv, f16, f8, f4 = key_fn(v, frame)
    jax.block_until_ready(seg_fn(v, k, qv, f8, f4, mk, mv))

  t_step = _median(step)
  t_value = _median(lambda: jax.block_until_ready(value_fn(v, frame, f16, mask)))
  return {'seconds_per_frame': t_step + t_value / FLAGS.mem_every, 'key_and_read': t_step,
          'value': t_value}


def stcn_torch(setting):
  import numpy as np  # noqa: PLC0415
  import torch  # noqa: PLC0415

  from tests.torch_reference import stcn as ref  # noqa: PLC0415
  arch, h, w = _setting(setting)
  if arch['key_depth'] != 50:
    raise ValueError('the torch reference STCN has the released ResNet-50 key encoder only')
  model = ref.STCN(width=arch['width'], key_dim=arch['key_dim'], value_dim=arch['value_dim'],
                   decoder_dim=arch['decoder_dim'], stem_pool=arch['stem_pool']).eval()
  torch.set_num_threads(os.cpu_count())
  rng = np.random.default_rng(0)
  frame = torch.from_numpy(rng.normal(size=(1, 3, h, w)).astype(np.float32))
  with torch.no_grad():
    k, qv, f16, f8, f4 = model.encode_key(frame)
    n = (1 + FLAGS.memory_frames) * k.shape[2] * k.shape[3]
    mk = torch.randn(1, k.shape[1], n)
    mv = torch.randn(1, 1, qv.shape[1], n)
    mask = torch.zeros(1, 1, h, w)

    def step():
      k, qv, f16, f8, f4 = model.encode_key(frame)
      model.segment(k, qv, f8, f4, mk, mv, 20)

    t_step = _median(step)
    t_value = _median(lambda: model.encode_value(frame, f16, mask))
  return {'seconds_per_frame': t_step + t_value / FLAGS.mem_every, 'key_and_read': t_step,
          'value': t_value}


def mlrl_sa(setting, framework):
  """seconds per frame of MLRL-SA inference, from benchmarks.model_speed's infer row."""
  name = 'paper' if setting == 'paper' else 'embedded'
  cmd = [sys.executable, '-m', 'benchmarks.model_speed', f'--child={name}:{framework}:infer',
         f'--repeats={FLAGS.repeats}', f'--warmup={FLAGS.warmup}', '--clips=1']
  out = _run(cmd)
  times = sorted(out['times'])
  return {'seconds_per_frame': times[len(times) // 2] / out['frames']}


def _run(cmd):
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'),
             TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
  lines = [x for x in proc.stdout.splitlines() if x.startswith('RESULT ')]
  if proc.returncode or not lines:
    sys.exit(f'{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
  return json.loads(lines[0][len('RESULT '):])


def main(argv):
  del argv
  if FLAGS.child:
    setting, framework = FLAGS.child.split(':')
    import rvos_jax  # noqa: F401, PLC0415 -- its XLA flags before JAX starts
    out = stcn_jax(setting) if framework == 'jax' else stcn_torch(setting)
    print('RESULT ' + json.dumps(out))
    return
  rows = []
  for setting in FLAGS.settings:
    for framework in FLAGS.frameworks:
      if framework == 'torch' and setting == 'embedded':
        continue  # the reference has only the released key encoder (ResNet-50)
      prop = _run([sys.executable, '-m', 'benchmarks.propagation_speed',
                   f'--child={setting}:{framework}', f'--repeats={FLAGS.repeats}',
                   f'--warmup={FLAGS.warmup}', f'--memory_frames={FLAGS.memory_frames}',
                   f'--mem_every={FLAGS.mem_every}'])
      net = mlrl_sa(setting, framework)
      rows.append({'setting': setting, 'framework': framework,
                   'mlrl_sa_fps': 1 / net['seconds_per_frame'],
                   'stcn_fps': 1 / prop['seconds_per_frame'],
                   'with_propagation_fps': 1 / (net['seconds_per_frame']
                                                + prop['seconds_per_frame']), **prop})
      print(json.dumps(rows[-1]), flush=True)
  lines = ['| setting | framework | MLRL-SA frames/s | STCN frames/s | with propagation |',
           '|---|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["setting"]} | {r["framework"]} | {r["mlrl_sa_fps"]:.2f} | '
                 f'{r["stcn_fps"]:.2f} | {r["with_propagation_fps"]:.2f} |')
  by = {(r['setting'], r['framework']): r for r in rows}
  for setting in FLAGS.settings:
    if (setting, 'jax') in by and (setting, 'torch') in by:
      j, t = by[(setting, 'jax')], by[(setting, 'torch')]
      lines.append(f'\n{setting}: JAX/torch frames/s: MLRL-SA '
                   f'{j["mlrl_sa_fps"] / t["mlrl_sa_fps"]:.2f}x, STCN '
                   f'{j["stcn_fps"] / t["stcn_fps"]:.2f}x, with propagation '
                   f'{j["with_propagation_fps"] / t["with_propagation_fps"]:.2f}x')
  print('\n'.join(lines))
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  app.run(main)
