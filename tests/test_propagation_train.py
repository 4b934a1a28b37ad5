"""STCN training (rvos_jax/propagation_train.py): the bootstrapped cross-entropy and its
schedule against their definitions, the 3-frame pass learning a fixed clip, and main.py's
train -> export -> VOS evaluation on the smoke config."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax

from rvos_jax import port_stcn, propagation_train
from rvos_jax.models import stcn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bootstrapped_cross_entropy_is_the_mean_of_the_hardest_pixels():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 2, 5, 7)).astype(np.float32)
  target = rng.random((3, 5, 7)) < 0.4
  for fraction in (1.0, 0.3, 0.15, 0.01):
    got = float(propagation_train.bootstrapped_cross_entropy(logits, target, fraction))
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -np.where(target, logp[:, 1], logp[:, 0]).reshape(3, -1)
    k = max(1, int(np.floor(35 * fraction)))
    want = np.mean([np.sort(row)[::-1][:k].mean() for row in ce])
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_bootstrap_schedule():
  f = lambda s: float(propagation_train.bootstrap_fraction(s, 100, 500, 0.15))
  assert f(0) == f(99) == 1.0
  np.testing.assert_allclose([f(100), f(300), f(500), f(900)], [1.0, 0.575, 0.15, 0.15],
                             rtol=1e-6)


def test_the_three_frame_pass_learns_a_clip():
  """A few Adam steps on one clip: the loss falls (the gradient reaches every part)."""
  model = stcn.STCN(key_depth=18, width=0.25, key_dim=8, value_dim=16, decoder_dim=8,
                    stem_pool=False)
  rng = np.random.default_rng(1)
  frames = rng.random((2, 3, 32, 32, 3)).astype(np.float32)
  masks = np.zeros((2, 3, 32, 32), np.float32)
  for t in range(3):
    masks[:, t, 8:20, 6 + 3 * t:18 + 3 * t] = 1.0
    frames[:, t, 8:20, 6 + 3 * t:18 + 3 * t] = [1.0, 0.2, 0.2]
  variables = model.init(jax.random.key(0), frames[:, 0], masks[:, :1], frames[:, 1])
  params, stats = variables['params'], variables['batch_stats']
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    (loss, aux), grads = jax.value_and_grad(
        lambda p: propagation_train.clip_loss(model, p, stats, stcn.normalize(frames), masks,
                                              1.0), has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss, grads

  losses = []
  for i in range(25):
    params, opt, loss, grads = step(params, opt)
    if i == 0:
      zero = [k for k, g in jax.tree_util.tree_flatten_with_path(grads)[0]
              if not np.any(np.asarray(g))]
      assert not zero, f'no gradient reaches {zero[:3]}'
    losses.append(float(loss))
  assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses


def test_main_trains_exports_and_evaluates_stcn(tmp_path):
  env = dict(os.environ, PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2')
  args = [sys.executable, 'main.py', '--config', 'configs/propagation_refer_shapes.py:smoke',
          f'--workdir={tmp_path / "work"}', f'--config.data.root={tmp_path / "data"}']
  proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert 'STCN semi-supervised VOS (valid, first frame given)' in proc.stdout
  results = json.loads((tmp_path / 'work' / 'eval' / 'vos_results.json').read_text())
  assert results['num_objects'] > 0 and 0 <= results['J&F'] <= 1
  model, _ = port_stcn.load_stcn(str(tmp_path / 'work' / 'stcn'))
  assert (model.key_depth, model.value_dim, model.stem_pool) == (18, 64, False)
  # --mode eval evaluates the export again; --mode predict is refused with a pointer.
  proc = subprocess.run(args + ['--mode=eval', f'--output_dir={tmp_path / "again"}'], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  again = json.loads((tmp_path / 'again' / 'vos_results.json').read_text())
  assert again['J&F'] == results['J&F']
  proc = subprocess.run(args + ['--mode=predict'], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode != 0 and 'inference.propagation=stcn' in proc.stderr
