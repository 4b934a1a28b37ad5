"""End to end through main.py: train + evaluate on 8 simulated CPU devices, then eval and predict
of that checkpoint on 1 device, the error paths of a checkpoint that does not fit, and a run
killed with SIGKILL that resumes to the same parameters as an uninterrupted one."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import refer_shapes
from rvos_jax import checkpointing, inference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(workdir, data_root, *flags, devices=1, timeout=600, **popen):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2')
  cmd = [sys.executable, 'main.py', '--config', 'configs/refer_shapes.py:smoke',
         f'--workdir={workdir}', f'--config.data.root={data_root}', *flags]
  if popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return proc.stdout + proc.stderr


def smoke_config(data_root):
  config = refer_shapes.get_config('smoke')
  config.data.root = str(data_root)
  return config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """One training step of train_and_evaluate on 8 simulated devices (batch 8, one clip each)."""
  tmp = tmp_path_factory.mktemp('main')
  workdir, data_root = tmp / 'work', tmp / 'data'
  log = run_main(workdir, data_root, '--config.data.batch_size=8', '--config.train.num_steps=1',
                 devices=8)
  return workdir, data_root, log


def test_train_and_evaluate_on_8_devices(trained):
  workdir, data_root, log = trained
  assert 'step 1/1' in log
  results = json.loads((workdir / 'eval' / 'step_1' / 'results.json').read_text())
  assert set(results['overall']) >= {'J', 'F', 'J&F', 'prec@0.5', 'prec@0.9'}
  assert set(results['per_kind']) <= {'appearance', 'motion', 'position', 'occluded'}
  assert results['per_kind'], 'refer_shapes reports J per expression kind'
  assert (workdir / 'vocab.txt').exists()
  assert list((workdir / 'checkpoints').glob('1')), 'final checkpoint at step 1'
  assert list(workdir.glob('events.out.tfevents.*')), 'TensorBoard event file'
  overlays = sorted(o for o in (workdir / 'overlays').iterdir() if o.is_dir())
  assert overlays and all((o / 'overlay.gif').exists() for o in overlays)
  assert all((o / 'overlay_strip.png').exists() for o in overlays)
  # A motion expression comes with its look-alike twin's and one still of the two.
  motion = [o.name for o in overlays if o.name.startswith('motion_')]
  pairs = sorted(p.name for p in (workdir / 'overlays').glob('*_pair.png'))
  assert len(motion) == 2 * len(pairs) and pairs == sorted(
      {'_'.join(n.split('_')[:-1]) + '_pair.png' for n in motion})


def test_eval_and_predict_restore_onto_one_device(trained, tmp_path):
  """The 8-device checkpoint restores in this 1-device process; eval and predict modes."""
  workdir, data_root, _ = trained
  config = smoke_config(data_root)
  results = inference.evaluate_checkpoint(config, str(workdir), output_dir=str(tmp_path / 'eval'))
  step1 = json.loads((workdir / 'eval' / 'step_1' / 'results.json').read_text())
  for key in ('J', 'F', 'J&F'):  # same parameters, same data: same numbers
    assert results['overall'][key] == pytest.approx(step1['overall'][key], abs=1e-6)

  video = sorted((data_root / 'valid' / 'JPEGImages').iterdir())[0]
  out = inference.predict_checkpoint(config, str(workdir), video=str(video),
                                     expression='the red square moving left',
                                     output_dir=str(tmp_path / 'pred'))
  n = len(list(video.iterdir()))
  assert out['num_frames'] == n and len(list((tmp_path / 'pred' / 'masks').iterdir())) == n
  assert (tmp_path / 'pred' / 'overlay.gif').exists()
  assert (tmp_path / 'pred' / 'overlay_strip.png').exists()


def test_motion_probe_on_the_trained_checkpoint(trained):
  """rvos_jax.analysis.motion_probe end to end: every level's embedding and map is measured."""
  from rvos_jax.analysis import motion_probe  # noqa: PLC0415
  workdir, data_root, _ = trained
  result = motion_probe.probe(smoke_config(data_root), str(workdir), 'train')
  assert result['expressions'] >= 2
  assert set(result['decodable']) == set(motion_probe.EMBEDDINGS.values())
  for r in result['decodable'].values():
    assert 0 <= r['accuracy'] <= 1 and r['objects'] == result['expressions']
  assert set(result['margin']) == {'final mask E', 'video text-to-pixel',
                                   'frame text-to-pixel', 'object text-to-pixel'}
  assert 'held-out accuracy' in motion_probe.format_table(result)


def test_appearance_probe_on_the_trained_checkpoint(trained):
  """rvos_jax.analysis.appearance_probe end to end: colour and shape from every level."""
  from rvos_jax.analysis import appearance_probe, motion_probe  # noqa: PLC0415
  workdir, data_root, _ = trained
  result = appearance_probe.probe(smoke_config(data_root), str(workdir), 'train')
  assert result['objects'] >= 4
  assert set(result['decodable']) == set(motion_probe.EMBEDDINGS.values())
  for r in result['decodable'].values():
    assert set(r) == {'colour', 'shape'}
    for a in r.values():
      assert 0 <= a['accuracy'] <= 1 and a['objects'] == result['objects']
  assert 'colour' in appearance_probe.format_table(result)


def test_checkpoint_from_another_config_is_refused(trained):
  workdir, data_root, _ = trained
  config = smoke_config(data_root)
  config.model.hidden_dim = 96
  with pytest.raises(checkpointing.CheckpointMismatchError, match=r'model\.hidden_dim'):
    inference.restore_for_inference(config, str(workdir))


def test_vocabulary_that_does_not_match_is_refused(trained, tmp_path):
  workdir, data_root, _ = trained
  copy = tmp_path / 'work'
  shutil.copytree(workdir, copy)
  tokens = (copy / 'vocab.txt').read_text().split('\n')
  tokens[2], tokens[3] = tokens[3], tokens[2]
  (copy / 'vocab.txt').write_text('\n'.join(tokens))
  with pytest.raises(checkpointing.CheckpointMismatchError, match='vocab'):
    inference.restore_for_inference(smoke_config(data_root), str(copy))


def _final_params(workdir, data_root):
  config = smoke_config(data_root)
  _, variables, _ = inference.restore_for_inference(config, str(workdir))
  return jax.device_get(variables)


def _finalized_steps(workdir):
  """Steps whose checkpoint Orbax has finished writing (renamed from its tmp directory)."""
  root = workdir / checkpointing.CHECKPOINTS_DIR
  return sorted(int(p.name) for p in root.glob('*') if p.name.isdigit()) if root.exists() else []


@pytest.mark.slow  # three main.py runs (~3.5 min); the SIGTERM save-and-resume test stays in
def test_sigkill_and_resume_gives_the_same_parameters(tmp_path):
  """A run killed with SIGKILL at a random step and restarted ends bit-for-bit where an
  uninterrupted run ends (same data order, same dropout noise, same XLA program on CPU)."""
  steps = 8
  flags = (f'--config.train.num_steps={steps}', '--config.train.final_eval=False',
           '--config.train.checkpoint_every=1', '--config.train.log_every=1')
  data_root = tmp_path / 'data'
  run_main(tmp_path / 'straight', data_root, *flags)

  kill_at = random.Random(os.getpid()).randint(2, steps - 2)
  proc = run_main(tmp_path / 'killed', data_root, *flags, popen=True)
  deadline = time.time() + 600
  seen = []
  for line in proc.stdout:
    seen.append(line)
    m = re.search(r'step (\d+)/', line)
    # Saves are asynchronous: on a slow machine the first checkpoint may still be in its tmp
    # directory at step `kill_at`. Kill only once one is final, so the restart must resume.
    if m and int(m.group(1)) >= kill_at and _finalized_steps(tmp_path / 'killed'):
      proc.send_signal(signal.SIGKILL)
      break
    assert time.time() < deadline, ''.join(seen[-50:])
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, ''.join(seen[-50:])
  log = run_main(tmp_path / 'killed', data_root, *flags)
  assert 'resumed from step' in log, log[-3000:]

  a = _final_params(tmp_path / 'straight', data_root)
  b = _final_params(tmp_path / 'killed', data_root)
  flat_a, flat_b = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
  assert len(flat_a) == len(flat_b)
  for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def test_training_and_inference_do_not_import_the_analysis_tools():
  """rvos_jax.analysis (the probes, where masks land) is research tooling: training, inference
  and main.py run without it."""
  code = ('import sys, main, rvos_jax.train, rvos_jax.inference, rvos_jax.evaluation; '
          'print(sorted(m for m in sys.modules if m.startswith("rvos_jax.analysis")))')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                        check=True)
  assert proc.stdout.strip().splitlines()[-1] == '[]', proc.stdout


def test_eval_with_stcn_propagation_and_the_table4_runner(trained, tmp_path):
  """--mode eval with config.inference.propagation='stcn' (an untrained STCN exported as
  training exports it), and benchmarks/propagation.py's two settings on the same checkpoint."""
  from benchmarks import propagation as table4  # noqa: PLC0415
  from rvos_jax import propagation, propagation_train  # noqa: PLC0415
  from rvos_jax.models import stcn  # noqa: PLC0415

  workdir, data_root, _ = trained
  config = smoke_config(data_root)
  h, w = config.data.generate.height, config.data.generate.width
  model = stcn.STCN(key_depth=18, width=0.25, key_dim=8, value_dim=16, decoder_dim=8,
                    stem_pool=False)
  v = model.init(jax.random.key(0), np.zeros((1, h, w, 3)), np.zeros((1, 1, h, w)),
                 np.zeros((1, h, w, 3)))
  propagation_train.export(model, v['params'], v['batch_stats'], str(tmp_path / 'stcn'))
  config.inference.propagation = 'stcn'
  config.inference.stcn_checkpoint = str(tmp_path / 'stcn')
  results = inference.evaluate_checkpoint(config, str(workdir), output_dir=str(tmp_path / 'ev'))
  assert 0 <= results['overall']['J&F'] <= 1

  entry = {}
  for setting, prop in (('none', None), ('stcn', propagation.from_config(config))):
    res, seconds, frames = table4.evaluate(smoke_config(data_root), str(workdir),
                                           str(tmp_path / setting), prop)
    assert seconds > 0 and frames == res['overall']['num_frames'] > 0
    entry[setting] = {'overall': table4.row(res), 'frames_per_second': frames / seconds,
                      'per_kind': {k: table4.row(res, k) for k in res['per_kind']}}
  # Without propagation: the checkpoint's own masks (as training's evaluation scored them).
  step1 = json.loads((workdir / 'eval' / 'step_1' / 'results.json').read_text())
  assert entry['none']['overall']['J&F'] == pytest.approx(step1['overall']['J&F'], abs=1e-6)
  assert entry['stcn']['overall']['J&F'] == pytest.approx(results['overall']['J&F'], abs=1e-6)
  md = table4.markdown({'runs': {'smoke': entry}})
  assert md.count('| smoke |') == 2 and 'Mean J&F over runs' in md
