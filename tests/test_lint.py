"""The code base passes its own ruff settings (pyproject.toml [tool.ruff])."""

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_clean():
  ruff = shutil.which('ruff') or os.path.join(os.path.dirname(sys.executable), 'ruff')
  proc = subprocess.run([ruff, 'check', 'rvos_jax', 'data_pipelines', 'configs', 'tests',
                         'benchmarks', 'main.py'], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr
