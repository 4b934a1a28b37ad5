"""benchmarks/model_speed.py: one real JAX row and one real torch row on a tiny setting through
the child-process path, then the table and the JAX/torch ratios on hand-made rows."""

import json
import os
import subprocess
import sys

from benchmarks import model_speed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(spec, *flags):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.model_speed', f'--child={spec}',
                         '--repeats=2', '--warmup=1', '--clips=1', *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  line = [x for x in proc.stdout.splitlines() if x.startswith('RESULT ')][0]
  return json.loads(line[len('RESULT '):])


def test_real_rows_on_the_embedded_setting():
  jax_row = _child('embedded:jax:infer')
  assert len(jax_row['times']) == 2 and min(jax_row['times']) > 0
  assert jax_row['flops'] > 5e8  # XLA's count of a real forward (~1.1 GFLOP per clip)
  assert jax_row['compile_s'] > 0 and jax_row['frames'] == 4  # T=4, one clip
  assert 'xla_cpu_experimental_ynn_fusion_type' in jax_row['xla_flags']
  torch_row = _child('embedded:torch_cl:infer')
  assert len(torch_row['times']) == 2 and torch_row['rss_mib'] > 100


def _row(setting, mode, framework, times, flops=None, allocator='tcmalloc'):
  r = dict(setting=setting, mode=mode, framework=framework, times=times, frames=12,
           rss_mib=1000.0, allocator=allocator)
  if framework == 'jax':
    r.update(flops=flops, compile_s=3.0, xla_temp=2**20)
  return r


def test_table_and_ratios():
  rows = [_row('paper', 'infer', 'jax', [1.0, 1.2, 1.1], flops=22e9 * 12),
          _row('paper', 'infer', 'torch', [2.0, 2.2, 2.4]),
          _row('paper', 'infer', 'torch_cl', [0.55, 0.5, 0.6])]
  text = model_speed.summarise(rows, dict(jax_gflops=400.0, torch_gflops=500.0,
                                          peak_gflops=500.0))
  assert rows[0]['median_s'] == 1.1 and abs(rows[0]['frames_per_s'] - 12 / 1.1) < 1e-9
  assert abs(rows[0]['spread'] - 0.2 / 1.1) < 1e-9
  assert abs(rows[0]['gflops_per_s'] - 264 / 1.1) < 1e-6
  assert ('| paper | infer | tcmalloc | jax | 1.1000 | 18% | 10.9 | 3.0 | 264.0 | 240.0 | 48% |'
          in text)
  assert 'JAX / torch, paper infer, both under tcmalloc: 2.00x (JAX faster)' in text
  assert 'JAX / torch_cl, paper infer, both under tcmalloc: 0.50x (torch faster)' in text
  # Two allocators in one run: each framework's rows against the first allocator's.
  slow = _row('paper', 'infer', 'jax', [2.2, 2.2, 2.2], flops=22e9 * 12, allocator='system')
  text = model_speed.summarise([slow, rows[0]], dict(jax_gflops=400.0, torch_gflops=500.0,
                                                     peak_gflops=500.0))
  assert 'jax, paper infer: tcmalloc against system: 2.00x' in text
