"""Save / resume / preemption for training checkpoints (rvos_jax/checkpointing.py)."""

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rvos_jax import checkpointing

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB_SHA = 'a' * 64


@flax.struct.dataclass
class TinyState:
  """Shaped like the training loop's TrainState."""
  step: jax.Array
  params: dict
  batch_stats: dict
  opt_state: optax.OptState
  rng: jax.Array


def make_state(step=0, seed=0, w_shape=(2, 3)):
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = {'dense': {'kernel': jax.random.normal(k1, w_shape), 'bias': jnp.arange(3.0)}}
  opt = optax.adamw(1e-3)
  opt_state = opt.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = opt.update(grads, opt_state, params)  # non-trivial mu / nu / count
  return TinyState(step=jnp.asarray(step, jnp.int32), params=params,
                   batch_stats={'bn': {'mean': jnp.full((3,), 0.5), 'var': jnp.ones(3)}},
                   opt_state=opt_state, rng=k2)


def abstract(state, sharding=None):
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def make_config(hidden_dim=64):
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict({'hidden_dim': hidden_dim, 'text_layers': 2,
                                            'backbone_init': ''})
  config.data = ml_collections.ConfigDict({'num_frames': 4})
  config.seed = 0
  return config


def make_meta(config=None, examples_seen=0):
  return {'config': config or make_config(), 'vocab_sha256': VOCAB_SHA, 'vocab_size': 17,
          'data': {'data_seed': 3, 'examples_seen': np.int64(examples_seen)}}


def assert_same_state(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b),
                          strict=True):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      assert jax.dtypes.issubdtype(y.dtype, jax.dtypes.prng_key), jax.tree_util.keystr(path)
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    assert x.dtype == y.dtype, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), jax.tree_util.keystr(path))


def test_round_trip_bit_exact(tmp_path):
  manager = checkpointing.make_manager(tmp_path, max_to_keep=2, save_interval_steps=1)
  state = make_state(step=7)
  assert checkpointing.save(manager, 7, state, make_meta(examples_seen=14))
  manager.wait_until_finished()
  assert os.path.isdir(tmp_path / 'checkpoints' / '7')

  restored, meta = checkpointing.restore_latest(manager, abstract(state), config=make_config())
  assert_same_state(state, restored)
  assert int(restored.step) == 7
  assert isinstance(restored.opt_state[0], optax.ScaleByAdamState)
  # The key comes back as a typed key and draws the same numbers.
  np.testing.assert_array_equal(jax.random.uniform(restored.rng, (4,)),
                                jax.random.uniform(state.rng, (4,)))
  assert meta['data'] == {'data_seed': 3, 'examples_seen': 14}
  assert meta['vocab_sha256'] == VOCAB_SHA and meta['vocab_size'] == 17
  assert meta['config'] == make_config().to_dict()
  assert meta['step'] == 7
  checkpointing.check_vocabulary(meta, VOCAB_SHA, 17)  # no error
  manager.close()


def test_relative_workdir_is_made_absolute(tmp_path, monkeypatch):
  # Orbax's array writer rejects relative paths, and only in its background thread.
  monkeypatch.chdir(tmp_path)
  manager = checkpointing.make_manager('run', max_to_keep=1, save_interval_steps=1)
  assert checkpointing.save(manager, 1, make_state(step=1), make_meta())
  manager.wait_until_finished()
  assert list(manager.all_steps()) == [1] and os.path.isdir(tmp_path / 'run/checkpoints/1')


def test_restore_empty_workdir_returns_none(tmp_path):
  manager = checkpointing.make_manager(tmp_path, max_to_keep=2, save_interval_steps=1)
  assert checkpointing.restore_latest(manager, abstract(make_state()), config=make_config()) is None


def test_interval_latest_and_pruning(tmp_path):
  manager = checkpointing.make_manager(tmp_path, max_to_keep=2, save_interval_steps=10)
  saved = [s for s in range(0, 36) if checkpointing.save(manager, s, make_state(step=s),
                                                         make_meta(examples_seen=2 * s))]
  assert saved == [0, 10, 20, 30]
  assert checkpointing.save(manager, 35, make_state(step=35), make_meta(), force=True)
  # Forcing a step that is already saved is a no-op (Orbax itself would raise).
  assert not checkpointing.save(manager, 35, make_state(step=35), make_meta(), force=True)
  manager.wait_until_finished()
  assert list(manager.all_steps()) == [30, 35]

  # A fresh manager (a new run) sees the same.
  manager = checkpointing.make_manager(tmp_path, max_to_keep=2, save_interval_steps=10)
  restored, meta = checkpointing.restore_latest(manager, abstract(make_state()),
                                                config=make_config())
  assert int(restored.step) == 35 and meta['step'] == 35
  restored, meta = checkpointing.restore_latest(manager, abstract(make_state()),
                                                config=make_config(), step=30)
  assert int(restored.step) == 30 and meta['data']['examples_seen'] == 60
  with pytest.raises(FileNotFoundError, match='step 20'):
    checkpointing.restore_latest(manager, abstract(make_state()), config=make_config(), step=20)


@pytest.mark.parametrize('kind', ['single_device', 'named'])
def test_restore_uses_target_sharding(tmp_path, kind):
  state = make_state(step=3)
  manager = checkpointing.make_manager(tmp_path, max_to_keep=1, save_interval_steps=1)
  checkpointing.save(manager, 3, state, make_meta())
  manager.wait_until_finished()
  if kind == 'single_device':
    target = abstract(state, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  else:
    mesh = jax.make_mesh((1,), ('data',))
    target = abstract(state, NamedSharding(mesh, P()))
    # One leaf sharded along its first axis, as parameter sharding would.
    kernel = target.params['dense']['kernel']
    target.params['dense']['kernel'] = kernel.update(sharding=NamedSharding(mesh, P('data')))
  restored, _ = checkpointing.restore_latest(manager, target, config=make_config())
  assert_same_state(state, restored)
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(restored),
                               jax.tree.leaves(target), strict=True):
    assert got.sharding == want.sharding, jax.tree_util.keystr(path)


def test_target_without_sharding_is_rejected(tmp_path):
  manager = checkpointing.make_manager(tmp_path, max_to_keep=1, save_interval_steps=1)
  checkpointing.save(manager, 1, make_state(), make_meta())
  manager.wait_until_finished()
  with pytest.raises(ValueError, match='need a sharding'):
    checkpointing.restore_latest(manager, jax.eval_shape(make_state), config=make_config())


def test_model_config_mismatch_names_key_values_and_path(tmp_path):
  manager = checkpointing.make_manager(tmp_path, max_to_keep=1, save_interval_steps=1)
  checkpointing.save(manager, 4, make_state(), make_meta(make_config(hidden_dim=64)))
  manager.wait_until_finished()
  target = abstract(make_state())
  with pytest.raises(checkpointing.CheckpointMismatchError) as e:
    checkpointing.restore_latest(manager, target, config=make_config(hidden_dim=48))
  msg = str(e.value)
  assert 'model.hidden_dim: 64 in the checkpoint vs 48 in the current config' in msg, msg
  assert os.fspath(tmp_path / 'checkpoints' / '4') in msg, msg
  assert 'text_layers' not in msg

  # Added key; and keys outside `model` or only used at init do not count.
  config = make_config()
  config.model.new_switch = True
  with pytest.raises(checkpointing.CheckpointMismatchError, match='model.new_switch: <absent>'):
    checkpointing.restore_latest(manager, target, config=config)
  config = make_config()
  config.model.backbone_init = '/elsewhere/resnet50'
  config.data.num_frames = 12
  assert checkpointing.restore_latest(manager, target, config=config) is not None


def test_keys_added_later_read_as_what_older_checkpoints_were_trained_with():
  # A checkpoint from before model.embedding_position / embedding_heads / text_pixel_head /
  # backbone_stem_pool / text_pixel_to_decoder / video_motion existed was trained with Eq. 1-4
  # as printed, without the text-to-pixel heads and with torchvision's stem: it resumes under
  # those values, not others.
  old = {'config': checkpointing.config_to_dict(make_config())}
  config = make_config()
  config.model.embedding_position = 'none'
  config.model.embedding_heads = 1
  config.model.text_pixel_head = False
  config.model.backbone_stem_pool = True
  config.model.text_pixel_to_decoder = False
  config.model.video_motion = 'none'
  checkpointing.check_model_config(old, config)
  for key, value, want in (('embedding_position', 'sine', "'none' in the checkpoint vs 'sine'"),
                           ('embedding_heads', 4, '1 in the checkpoint vs 4'),
                           ('text_pixel_head', True, 'False in the checkpoint vs True'),
                           ('backbone_stem_pool', False, 'True in the checkpoint vs False'),
                           ('text_pixel_to_decoder', True, 'False in the checkpoint vs True'),
                           ('video_motion', 'rgb_diff', "'none' in the checkpoint vs 'rgb_diff'")):
    changed = make_config()
    changed.model[key] = value
    with pytest.raises(checkpointing.CheckpointMismatchError, match=f'model.{key}: {want}'):
      checkpointing.check_model_config(old, changed)


def test_removed_switches_restore_at_their_kept_value_and_refuse_the_other():
  # model.alignment_fusion and model.video_temporal_kernel were removed: a checkpoint saved
  # with 'add' / 0 (what the network always does now) restores; one trained with the product
  # term or the 3-D convolution was another network and is refused, naming the key.
  config = make_config()
  saved = checkpointing.config_to_dict(config)
  saved['model'].update(alignment_fusion='add', video_temporal_kernel=0)
  checkpointing.check_model_config({'config': saved}, config)
  for key, value in (('alignment_fusion', 'multiply'), ('video_temporal_kernel', 3)):
    other = checkpointing.config_to_dict(config)
    other['model'].update(alignment_fusion='add', video_temporal_kernel=0)
    other['model'][key] = value
    with pytest.raises(checkpointing.CheckpointMismatchError,
                       match=f"model.{key}: {value!r} in the checkpoint, a switch this version "
                             'no longer has'):
      checkpointing.check_model_config({'config': other}, config)


def test_shape_mismatch_names_leaves_and_shapes(tmp_path):
  manager = checkpointing.make_manager(tmp_path, max_to_keep=1, save_interval_steps=1)
  checkpointing.save(manager, 2, make_state(w_shape=(2, 3)), make_meta())
  manager.wait_until_finished()
  target = abstract(make_state(w_shape=(4, 3)))
  target.batch_stats['bn']['extra'] = jax.ShapeDtypeStruct((5,), jnp.float32,
                                                           sharding=target.step.sharding)
  del target.batch_stats['bn']['var']
  with pytest.raises(checkpointing.CheckpointMismatchError) as e:
    checkpointing.restore_latest(manager, target, config=make_config())
  msg = str(e.value)
  assert 'params/dense/kernel: (2, 3) float32 in the checkpoint vs (4, 3) float32' in msg, msg
  assert 'opt_state/0/mu/dense/kernel: (2, 3) float32' in msg, msg
  assert 'batch_stats/bn/extra: missing from the checkpoint' in msg, msg
  assert 'batch_stats/bn/var: in the checkpoint ((3,) float32) but not in the target' in msg, msg
  assert os.fspath(tmp_path / 'checkpoints' / '2') in msg, msg

  target = abstract(make_state())
  target = target.replace(step=jax.ShapeDtypeStruct((), jnp.float32, sharding=target.step.sharding))
  with pytest.raises(checkpointing.CheckpointMismatchError, match=r'step: \(\) int32 in the '
                     r'checkpoint vs \(\) float32'):
    checkpointing.restore_latest(manager, target, config=make_config())


def test_vocabulary_mismatch():
  meta = {'vocab_sha256': VOCAB_SHA, 'vocab_size': 17}
  checkpointing.check_vocabulary(meta, VOCAB_SHA)
  with pytest.raises(checkpointing.CheckpointMismatchError, match=f'{VOCAB_SHA}.*size 17.*b{{64}}'):
    checkpointing.check_vocabulary(meta, 'b' * 64, path='/w/checkpoints/3')
  with pytest.raises(checkpointing.CheckpointMismatchError, match='size 18'):
    checkpointing.check_vocabulary(meta, VOCAB_SHA, 18)


def test_save_requires_meta_keys(tmp_path):
  manager = checkpointing.make_manager(tmp_path, max_to_keep=1, save_interval_steps=1)
  with pytest.raises(ValueError, match=r"lacks \['vocab_sha256', 'vocab_size'\]"):
    checkpointing.save(manager, 1, make_state(), {'config': make_config(), 'data': {}})
  with pytest.raises(TypeError, match='object is not JSON serialisable'):
    checkpointing.save(manager, 1, make_state(), {**make_meta(), 'bad': object()})


def test_preemption_guard_sets_flag_and_restores_handlers():
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  with checkpointing.PreemptionGuard() as guard:
    assert not guard.requested and not checkpointing.should_stop(guard, 0)
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + 5
    while not guard.requested and time.monotonic() < deadline:  # delivered between bytecodes
      time.sleep(0.01)
    assert guard.requested and guard.signal_received == signal.SIGTERM
    assert checkpointing.should_stop(guard, 1)
    # Ctrl-C while a stop is pending still interrupts.
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)
  assert {s: signal.getsignal(s) for s in before} == before


LOOP_SCRIPT = """
import sys, time
import jax.numpy as jnp
from rvos_jax import checkpointing

workdir = sys.argv[1]
manager = checkpointing.make_manager(workdir, max_to_keep=3, save_interval_steps=10)
meta = {'config': {'model': {'hidden_dim': 8}}, 'vocab_sha256': 'x', 'vocab_size': 3}
state = {'step': jnp.int32(0), 'w': jnp.zeros(3)}
with checkpointing.PreemptionGuard() as guard:
  print('ready', flush=True)
  for step in range(1, 1001):
    state = {'step': jnp.int32(step), 'w': state['w'] + 1}
    step_meta = {**meta, 'data': {'examples_seen': 2 * step}}
    checkpointing.save(manager, step, state, step_meta)
    print(f'step {step}', flush=True)
    if checkpointing.should_stop(guard, step):
      checkpointing.save(manager, step, state, step_meta, force=True)
      print(f'stopped at {step}', flush=True)
      break
    time.sleep(0.02)
manager.wait_until_finished()
manager.close()
sys.exit(0 if guard.requested else 3)
"""


def _read_lines(proc):
  lines = queue.Queue()

  def pump():
    for line in proc.stdout:
      lines.put(line.rstrip('\n'))
    lines.put(None)

  threading.Thread(target=pump, daemon=True).start()
  return lines


def _wait_for(lines, prefix, timeout, seen):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    try:
      line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
      break
    if line is None:
      break
    seen.append(line)
    if line.startswith(prefix):
      return line
  raise AssertionError(f'no {prefix!r} line within {timeout} s; output:\n' + '\n'.join(seen))


def test_sigterm_mid_run_saves_and_resumes(tmp_path):
  script = tmp_path / 'loop.py'
  script.write_text(LOOP_SCRIPT)
  workdir = tmp_path / 'work'
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.Popen([sys.executable, str(script), str(workdir)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env)
  seen = []
  try:
    lines = _read_lines(proc)
    _wait_for(lines, 'step 25', 120, seen)
    proc.send_signal(signal.SIGTERM)
    stopped = int(_wait_for(lines, 'stopped at', 60, seen).split()[-1])
    assert proc.wait(timeout=60) == 0, '\n'.join(seen)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert 25 <= stopped < 1000

  manager = checkpointing.make_manager(workdir, max_to_keep=3, save_interval_steps=10)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = {'step': jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding),
            'w': jax.ShapeDtypeStruct((3,), jnp.float32, sharding=sharding)}
  state, meta = checkpointing.restore_latest(manager, target, config={'model': {'hidden_dim': 8}})
  assert int(state['step']) == stopped
  np.testing.assert_array_equal(state['w'], np.full(3, stopped, np.float32))
  assert meta['data'] == {'examples_seen': 2 * stopped}
  assert max(manager.all_steps()) == stopped


MULTIPROCESS_SCRIPT = """
import sys, time
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.config.update('jax_enable_preemption_service', sys.argv[4] == 'jax_service')
process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f'localhost:{port}', num_processes=2, process_id=process_id)
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from rvos_jax import checkpointing

mesh = jax.make_mesh((2,), ('data',), devices=jax.devices())
replicated = NamedSharding(mesh, P())
def global_state(step):
  w = np.full((2, 3), step, np.float32)
  return {'step': jax.make_array_from_callback((), replicated, lambda _: np.int32(step)),
          'w': jax.make_array_from_callback((2, 3), NamedSharding(mesh, P('data')),
                                            lambda idx: w[idx])}
manager = checkpointing.make_manager(workdir, max_to_keep=2, save_interval_steps=10)
meta = {'config': {'model': {}}, 'data': {}, 'vocab_sha256': 'x', 'vocab_size': 3}
with checkpointing.PreemptionGuard() as guard:
  for step in range(1, 1001):
    state = global_state(step)
    checkpointing.save(manager, step, state, meta)
    print(f'step {step}', flush=True)
    if checkpointing.should_stop(guard, step, sync_every=1):
      checkpointing.save(manager, step, state, meta, force=True)
      print(f'stopped at {step}', flush=True)
      break
    time.sleep(0.05)
manager.wait_until_finished()
target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      global_state(0))
restored, _ = checkpointing.restore_latest(manager, target, config={'model': {}})
local = np.concatenate([np.asarray(s.data) for s in restored['w'].addressable_shards])
print(f'restored {int(restored["step"].addressable_data(0))} {local.ravel().tolist()}',
      flush=True)
manager.close()
jax.distributed.shutdown()
"""


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.parametrize('mode', ['jax_service', 'allgather'])
def test_two_processes_stop_at_the_same_step(tmp_path, mode):
  """One host gets SIGTERM; both stop, save and restore the same step.

  'jax_service': JAX's preemption service (jax.distributed's default) catches SIGTERM and agrees
  on the step; 'allgather': the service is off, the guard catches it, should_stop all-gathers.
  """
  script = tmp_path / 'multi.py'
  script.write_text(MULTIPROCESS_SCRIPT)
  workdir, port = tmp_path / 'work', str(_free_port())
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT, 'JAX_PLATFORMS': 'cpu'}
  procs = [subprocess.Popen([sys.executable, str(script), str(i), port, str(workdir), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
           for i in range(2)]
  seen = [[], []]
  try:
    lines = [_read_lines(p) for p in procs]
    _wait_for(lines[1], 'step 15', 120, seen[1])
    procs[1].send_signal(signal.SIGTERM)
    stopped = [int(_wait_for(lines[i], 'stopped at', 60, seen[i]).split()[-1]) for i in range(2)]
    restored = [_wait_for(lines[i], 'restored', 60, seen[i]) for i in range(2)]
    for i, p in enumerate(procs):
      assert p.wait(timeout=60) == 0, '\n'.join(seen[i])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert stopped[0] == stopped[1] >= 15, stopped
  s = stopped[0]
  assert restored[0] == f'restored {s} {[float(s)] * 3}', restored
  assert restored[1] == f'restored {s} {[float(s)] * 3}', restored
  assert sorted(int(d) for d in os.listdir(workdir / 'checkpoints') if d.isdigit())[-1] == s

