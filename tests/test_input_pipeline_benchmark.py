"""benchmarks/input_pipeline.py runs end to end on a tiny generated dataset (no timing asserted)."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('setting,shape', [('paper', '(2, 12, 240, 432, 3)'),
                                           ('embedded', '(4, 4, 64, 96, 3)')])
def test_prints_throughput(setting, shape):
  flags = ['--videos=3', '--video_frames=14', '--batches=2', '--warmup=1']
  if setting == 'embedded':
    flags.append('--batch_size=4')  # 1 clip x 4 expressions
  else:
    flags += ['--source_height=120', '--source_width=216']  # resized up to 240x432
  out = subprocess.run([sys.executable, '-m', 'benchmarks.input_pipeline',
                        f'--setting={setting}', *flags], cwd=REPO, capture_output=True,
                       text=True, timeout=300, check=True).stdout
  line = re.search(rf'input pipeline \({setting}\), training, batch (\(.*?\)) from .*?: '
                   r'(\S+) clips/s, (\d+) frames/s, (\d+) ms CPU per batch', out)
  assert line, out
  assert line.group(1) == shape
  assert float(line.group(2)) > 0 and int(line.group(3)) > 0 and int(line.group(4)) >= 0
