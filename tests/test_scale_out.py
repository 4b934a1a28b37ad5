"""Scale-out: the same training on 1 device, 8 devices (data-parallel, and with parameters sharded
over a 'model' axis), and 2 processes x 4 devices through jax.distributed; checkpoints moving
between those topologies; a 2-process run with one process SIGKILLed, restarted.

Each scenario runs in subprocesses (tests/scale_out_worker.py, or main.py for the killed run):
the device count is fixed by XLA_FLAGS before JAX starts. Every wait is bounded and every child
is killed on the way out, so a hung collective fails the test instead of hanging it.

Tolerance (float32). The runs are not bit-equal: the gradient all-reduce sums in another order,
and Adam divides each gradient by its own running magnitude, so a rounding difference in a
small gradient becomes a visible difference in the step. Stated and measured:
  losses and gradient norms of each of the 5 steps: rtol=RTOL (measured <= 5e-7 relative);
  parameters and BatchNorm statistics after 5 steps: rtol=RTOL, atol=PARAM_ATOL = 3% of the
  learning rate, i.e. of one step's largest Adam update (measured: 9.2e-6 on 8 devices, 1.1e-6
  on 2 processes x 4; the parameters move by up to 3.3e-3 in those 5 steps).
The runs use Adam's eps=1e-4 instead of 1e-8: the model has biases whose exact gradient is 0
(a conv bias before a GroupNorm, an attention key bias before the softmax), and with eps=1e-8
Adam turns their rounding-noise gradients into steps of up to lr in a direction the summation
order decides (measured: 21 such leaves off by up to 3.7e-4 while the losses agreed to 5e-7).
The worst differences are printed and put in every assertion message.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rvos_jax import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, 'tests', 'scale_out_worker.py')
RTOL = 1e-5
PARAM_ATOL = 3e-5  # 3% of the runs' learning rate (1e-3)
# XLA's CPU compiler at low optimisation: compiling the step takes about half as long on this
# 2-core machine, and every run being compared is compiled with the same flags.
FAST_COMPILE = ('--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true '
                '--xla_cpu_use_fusion_emitters=false')


# ------------------------------------------------------------------------------ helpers
def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def child_env(devices: int, cache_dir) -> dict[str, str]:
  return {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu', 'PYTHONUNBUFFERED': '1',
          'TF_CPP_MIN_LOG_LEVEL': '2',
          'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices} {FAST_COMPILE}',
          # A killed run's restart finds its programs compiled. (JAX_SHARE_BINARY_BETWEEN_HOSTS,
          # process 0 compiling for all, deadlocked the first collective of the 2-process run.)
          'JAX_COMPILATION_CACHE_DIR': str(cache_dir)}


def tail(path, n=4000) -> str:
  try:
    with open(path, errors='replace') as f:
      text = f.read()
  except FileNotFoundError:
    return f'<no {path}>'
  # Drop Gloo's and Orbax's chatter so that the end of the log is the useful part.
  keep = [line for line in text.splitlines() if not line.startswith(('[Gloo]', 'I0', 'I1'))]
  return f'--- {path}\n' + '\n'.join(keep)[-n:]


def kill_all(procs) -> None:
  for p in procs:
    if p.poll() is None:
      p.kill()
  for p in procs:
    try:
      p.wait(timeout=30)
    except subprocess.TimeoutExpired:
      pass


def launch(cmds, env, logs) -> list[subprocess.Popen]:
  procs = []
  for cmd, log in zip(cmds, logs, strict=True):
    with open(log, 'w') as f:  # the child keeps its own descriptor
      procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT))
  return procs


def run_group(cmds, env, logs, timeout: float) -> None:
  """Runs the processes together; all must exit 0 within `timeout` s. When one fails, the
  others (waiting for it in a collective) are killed after a short grace."""
  procs = launch(cmds, env, logs)
  deadline = time.monotonic() + timeout
  try:
    while any(p.poll() is None for p in procs):
      failed = [p for p in procs if p.poll() not in (None, 0)]
      if failed:
        time.sleep(5)
        break
      assert time.monotonic() < deadline, (
          f'timed out after {timeout} s\n' + '\n'.join(tail(log) for log in logs))
      time.sleep(0.2)
  finally:
    kill_all(procs)
  codes = [p.returncode for p in procs]
  assert codes == [0] * len(procs), f'exit codes {codes}\n' + '\n'.join(tail(x) for x in logs)


def load(out, name):
  with np.load(os.path.join(out, f'{name}.npz')) as f:
    return dict(f)


def facts(out, name, process=0):
  with open(os.path.join(out, f'{name}_p{process}.json')) as f:
    return json.load(f)


def max_diffs(a: dict, b: dict) -> tuple[float, float, str]:
  """(max |a-b|, max |a-b| / (atol + rtol |b|), worst leaf) over the leaves of `b`."""
  assert set(a) == set(b), set(a) ^ set(b)
  worst_abs, worst_ratio, worst = 0.0, 0.0, ''
  for k in sorted(b):
    x, y = np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)
    assert x.shape == y.shape, (k, x.shape, y.shape)
    d = np.abs(x - y)
    ratio = float(np.max(d / (PARAM_ATOL + RTOL * np.abs(y)), initial=0.0))
    if ratio > worst_ratio:
      worst_ratio, worst = ratio, k
    worst_abs = max(worst_abs, float(np.max(d, initial=0.0)))
  return worst_abs, worst_ratio, worst


def assert_same_training(runs, tag: str) -> None:
  """Losses and gradient norms of every step, and the final parameters / BatchNorm statistics,
  of run `tag` equal those of the 1-device run (see the module docstring for the tolerance)."""
  out = runs['out']
  got, ref = facts(out, tag), facts(out, 'one')
  final, expected, initial = load(out, tag), load(out, 'one'), load(out, 'one_initial')
  moved = max(float(np.max(np.abs(v - initial[k]))) for k, v in expected.items()
              if k.startswith('params/'))
  loss_rel = float(np.max(np.abs(np.subtract(got['losses'], ref['losses'])) / ref['losses']))
  grad_rel = float(np.max(np.abs(np.subtract(got['grad_norms'], ref['grad_norms']))
                          / np.asarray(ref['grad_norms'])))
  abs_diff, ratio, leaf = max_diffs(final, expected)
  msg = (f'{tag} vs 1 device, 5 steps: losses max rel diff {loss_rel:.2g}, grad norms max rel '
         f'diff {grad_rel:.2g} (rtol {RTOL}); parameters max |diff| {abs_diff:.2g} = '
         f'{ratio:.2f} x tolerance (atol {PARAM_ATOL}, rtol {RTOL}) at {leaf}; parameters moved '
         f'by up to {moved:.2g}; losses {got["losses"]} vs {ref["losses"]}')
  print(msg)
  assert len(got['losses']) == len(ref['losses']) == 5, msg
  np.testing.assert_allclose(got['losses'], ref['losses'], rtol=RTOL, err_msg=msg)
  np.testing.assert_allclose(got['grad_norms'], ref['grad_norms'], rtol=RTOL, err_msg=msg)
  assert ref['losses'][-1] < ref['losses'][0] and moved > 30 * PARAM_ATOL, msg  # it trained
  for k, v in expected.items():
    np.testing.assert_allclose(final[k], v, rtol=RTOL, atol=PARAM_ATOL, err_msg=f'{k}: {msg}')


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope='module')
def scale_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('scale_out')


@pytest.fixture(scope='module')
def data_root(scale_dir):
  """The smoke dataset, generated by the first run that needs it (process 0 first)."""
  return scale_dir / 'data'


@pytest.fixture(scope='module')
def runs(scale_dir, data_root):
  """8 devices (DP, then FSDP model=2; saves steps 0 and 5), 1 device (reference; restores
  step 5), 2 processes x 4 devices (restores step 0, trains; restores step 5; reads data)."""
  out, ckpt, cache = scale_dir / 'out', scale_dir / 'ckpt', scale_dir / 'cache'
  timings = {}
  base = [sys.executable, WORKER]
  for mode, devices in (('eight', 8), ('one', 1)):
    t = time.monotonic()
    run_group([base + [mode, f'--out={out}', f'--ckpt={ckpt}']], child_env(devices, cache),
              [scale_dir / f'{mode}.log'], timeout=300)
    timings[mode] = time.monotonic() - t
  port, t = free_port(), time.monotonic()
  run_group([base + ['multi', f'--out={out}', f'--ckpt={ckpt}', f'--data_root={data_root}',
                     f'--port={port}', f'--process_id={i}'] for i in range(2)],
            child_env(4, cache), [scale_dir / f'multi{i}.log' for i in range(2)], timeout=360)
  timings['multi'] = time.monotonic() - t
  print('scenario wall times (s):', {k: round(v, 1) for k, v in timings.items()})
  return {'out': str(out), 'timings': timings}


# ------------------------------------------------------------------------------ rules (no JAX)
def test_param_spec_rules():
  sizes = {'data': 4, 'model': 2}
  config = ml_collections.ConfigDict({'sharding': {'min_bytes': 4096, 'rules': (
      ('^text/', ()), ('embedding$', ('model', None)))}})
  spec = lambda path, shape: sharding.param_spec(path, shape, np.float32, sizes, config)
  assert spec('backbone/conv/kernel', (3, 3, 64, 128)) == P(None, None, None, 'model')
  assert spec('backbone/conv/kernel', (3, 3, 63, 64)) == P(None, None, None, 'model')
  assert spec('fc/kernel', (96, 24)) == P('model')  # the largest divisible dimension
  assert spec('fc/kernel', (33, 64)) == P(None, 'model')  # 33 does not divide
  assert spec('odd/kernel', (33, 1025)) == P()  # nothing divides
  assert spec('norm/scale', (512,)) == P()  # 2 KiB < min_bytes
  assert spec('text/ffn/kernel', (512, 512)) == P()  # rule: replicated
  assert spec('word_embedding/embedding', (20, 24)) == P('model', None)  # rule beats size
  assert sharding.param_spec('a/kernel', (512, 512), np.float32, {'data': 8, 'model': 1},
                             config) == P()  # no model axis: replicated
  with pytest.raises(ValueError, match='not divisible'):
    spec('word_embedding/embedding', (21, 24))
  bad = ml_collections.ConfigDict({'sharding': {'rules': (('x', ('tensor',)),)}})
  with pytest.raises(ValueError, match='no axis'):
    sharding.param_spec('x', (4,), np.float32, sizes, bad)


def test_mesh_shape_and_multihost_detection():
  config = ml_collections.ConfigDict({'mesh': {'data': -1, 'model': 4}})
  assert sharding.mesh_shape(config, 8) == (2, 4)
  assert sharding.mesh_shape(None, 8) == (8, 1)
  config.mesh.model = 3
  with pytest.raises(ValueError, match='does not divide'):
    sharding.mesh_shape(config, 8)
  slurm = {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'gpu[01-02]', 'SLURM_NTASKS': '16',
           'SLURM_PROCID': '3', 'SLURM_LOCALID': '3'}
  assert sharding._env_says_multihost(slurm) == 'Slurm'
  assert sharding._env_says_multihost({**slurm, 'SLURM_NTASKS': '1'}) is None  # salloc shell
  assert sharding._env_says_multihost({'TPU_WORKER_HOSTNAMES': 'a,b,c,d'}) == 'TPU pod (GKE)'
  assert sharding._env_says_multihost({'TPU_WORKER_HOSTNAMES': 'localhost'}) is None
  assert sharding._env_says_multihost({}) is None
  # Single process: 'auto' does nothing, and nothing was initialized here.
  assert not sharding.initialize_distributed(ml_collections.ConfigDict(), environ={})


# ------------------------------------------------------------------------------ scenarios
@pytest.mark.slow  # the `runs` fixture: 4 scenarios in subprocesses, ~3 min
def test_data_parallel_8_devices_equals_1_device(runs):
  """(a) mesh data=8: 5 steps, same losses and parameters as 1 device, same global batch."""
  assert facts(runs['out'], 'dp8')['mesh'] == {'data': 8, 'model': 1}
  assert_same_training(runs, 'dp8')


@pytest.mark.slow  # the `runs` fixture: 4 scenarios in subprocesses, ~3 min
def test_fsdp_8_devices_equals_1_device_and_shards_parameters(runs):
  """(b) mesh data=4 x model=2: the same equality, and the compiled step's input shardings put
  less than the whole parameter tree on device 0."""
  f, dp = facts(runs['out'], 'fsdp8'), facts(runs['out'], 'dp8')
  assert f['mesh'] == {'data': 4, 'model': 2}
  assert_same_training(runs, 'fsdp8')
  report = (f"FSDP model=2: parameters {f['param_bytes_device0']} of {f['param_bytes_total']} "
            f"bytes on device 0, Adam moments {f['opt_bytes_device0']} of "
            f"{f['opt_bytes_total']}; XLA argument bytes per device {f['argument_bytes']} vs "
            f"{dp['argument_bytes']} data-parallel")
  print(report)
  assert f['param_bytes_device0'] < 0.7 * f['param_bytes_total'], report
  assert f['opt_bytes_device0'] < 0.7 * f['opt_bytes_total'], report
  assert f['argument_bytes'] < dp['argument_bytes'], report
  assert dp['param_bytes_device0'] == dp['param_bytes_total'], 'data-parallel: replicated'
  specs = f['specs']
  assert specs['backbone/layer4/1/conv2/kernel'] == "P(None, None, None, 'model')", specs
  # The config's rules beat the size rule, both ways.
  assert specs['object_encoder/conv/kernel'] == 'P()', specs
  assert specs['word_embedding/embedding'] == "P('model', None)", specs
  assert specs['backbone/bn1/scale'] == 'P()', 'small leaves stay replicated'


@pytest.mark.slow  # the `runs` fixture: 4 scenarios in subprocesses, ~3 min
def test_two_processes_equal_one_process_and_read_disjoint_data(runs):
  """(c) 2 processes x 4 devices (data=2 x model=4) through jax.distributed: the same equality;
  each process feeds its own block of the global batch and reads its own share of the data."""
  out = runs['out']
  p0, p1 = facts(out, 'multi', 0), facts(out, 'multi', 1)
  assert p0['process_count'] == 2 and p0['device_count'] == 8
  assert p0['mesh'] == {'data': 2, 'model': 4}
  assert p0['losses'] == p1['losses']
  assert_same_training(runs, 'multi')
  assert p0['batch_row_starts'] == [0, 1, 2, 3] and p1['batch_row_starts'] == [4, 5, 6, 7]
  assert p0['param_bytes_device0'] < 0.5 * p0['param_bytes_total'], p0['param_bytes_device0']
  d0, d1 = (json.load(open(os.path.join(out, f'data_p{i}.json'))) for i in range(2))
  assert d0['records'] and d1['records'], (d0, d1)
  assert not set(d0['records']) & set(d1['records']), (d0['records'], d1['records'])
  assert sorted(d0['records'] + d1['records']) == d0['all_videos']
  assert set(d0['streamed']) <= set(d0['records']) and set(d1['streamed']) <= set(d1['records'])


@pytest.mark.slow  # the `runs` fixture: 4 scenarios in subprocesses, ~3 min
def test_checkpoint_from_8_devices_restores_on_1_device_and_2_processes(runs):
  """(d) the FSDP state saved on 8 devices (data=4 x model=2) restores, bit-exact, on 1 device
  and on 2 processes x 4 (data=2 x model=4: every sharded leaf is re-cut)."""
  out = runs['out']
  saved = load(out, f'saved_{5}')
  assert any(k.startswith('opt_state/') for k in saved) and 'step' in saved
  assert int(saved['step']) == 5
  for tag in ('restored1', 'restored_multi'):
    restored = load(out, tag)
    assert set(restored) == set(saved), set(restored) ^ set(saved)
    for k, v in saved.items():
      np.testing.assert_array_equal(restored[k], v, err_msg=f'{tag}: {k}')
  one, multi = facts(out, 'restored1'), facts(out, 'restored_multi', 1)
  assert one['mesh'] == {'data': 1, 'model': 1} and one['kernel_shard_shape'] == [3, 3, 64, 64]
  assert multi['mesh'] == {'data': 2, 'model': 4}
  assert multi['kernel_spec'] == "P(None, None, None, 'model')"
  assert multi['kernel_shard_shape'] == [3, 3, 64, 16]


# ------------------------------------------------------------------------------ killed run
def _steps_logged(log) -> list[int]:
  try:
    with open(log, errors='replace') as f:
      return [int(m) for m in re.findall(r'step (\d+)/\d+', f.read())]
  except FileNotFoundError:
    return []


def _finalized_steps(workdir) -> list[int]:
  root = workdir / 'checkpoints'
  return sorted(int(p.name) for p in root.glob('*') if p.name.isdigit()) if root.exists() else []


@pytest.mark.slow  # two launches of main.py on 2 processes: ~2.5 min on 2 CPU cores
def test_killed_process_of_two_resumes_from_last_checkpoint(tmp_path, scale_dir, data_root):
  """(e) main.py on 2 processes (1 device each); process 1 is SIGKILLed mid-training, then
  process 0 is killed as a cluster scheduler would once a peer died; both relaunched, they
  resume from the last checkpoint Orbax finalized and finish."""
  steps, kill_after = 8, 2
  workdir = tmp_path / 'work'
  flags = ['--config=configs/refer_shapes.py:smoke', f'--workdir={workdir}',
           f'--config.data.root={data_root}',
           # test_train's tiny sizes: a step compiles in ~20 s instead of ~60 s.
           '--config.data.height=32', '--config.data.width=48', '--config.data.num_frames=2',
           '--config.model.hidden_dim=24', '--config.model.decoder_dim=8',
           '--config.model.text_ffn_dim=16', '--config.model.backbone_width=0.125',
           f'--config.train.num_steps={steps}', '--config.train.final_eval=False',
           '--config.train.checkpoint_every=2', '--config.train.log_every=1',
           '--config.distributed.num_processes=2', '--config.distributed.initialization_timeout=60']
  env = child_env(1, scale_dir / 'cache')

  def start(tag):
    port = free_port()
    logs = [tmp_path / f'{tag}{i}.log' for i in range(2)]
    cmds = [[sys.executable, 'main.py', *flags, f'--config.distributed.process_id={i}',
             f'--config.distributed.coordinator_address=localhost:{port}'] for i in range(2)]
    return launch(cmds, env, logs), logs

  procs, logs = start('first')
  survivor = 'still running'
  try:
    deadline = time.monotonic() + 300
    while not (max(_steps_logged(logs[0]), default=0) >= kill_after
               and _finalized_steps(workdir)):
      assert all(p.poll() is None for p in procs), 'a process ended early\n' + '\n'.join(
          tail(x) for x in logs)
      assert time.monotonic() < deadline, 'no checkpoint in 300 s\n' + tail(logs[0])
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    assert procs[1].wait(timeout=30) == -signal.SIGKILL
    try:  # the survivor blocks in a collective or a checkpoint barrier of its dead peer
      survivor = f"exited by itself with code {procs[0].wait(timeout=5)}"
    except subprocess.TimeoutExpired:
      procs[0].kill()
      procs[0].wait(timeout=30)
      survivor = "blocked; killed after 5 s"
  finally:
    kill_all(procs)
  killed_at = max(_steps_logged(logs[0]), default=0)
  finalized = _finalized_steps(workdir)
  print(f'process 1 killed after step {killed_at} of {steps}; process 0 {survivor}; '
        f'finalized checkpoints {finalized}')
  assert finalized and max(finalized) < steps, finalized

  t = time.monotonic()
  procs, logs = start('restart')
  try:
    deadline = time.monotonic() + 300
    while any(p.poll() is None for p in procs):
      assert all(p.poll() in (None, 0) for p in procs), '\n'.join(tail(x) for x in logs)
      assert time.monotonic() < deadline, 'restart timed out\n' + '\n'.join(tail(x) for x in logs)
      time.sleep(0.2)
  finally:
    kill_all(procs)
  assert [p.returncode for p in procs] == [0, 0], '\n'.join(tail(x) for x in logs)
  print(f'restart finished in {time.monotonic() - t:.1f} s')
  for log in logs:
    text = open(log, errors='replace').read()
    assert f'resumed from step {max(finalized)}' in text, tail(log)
  assert _steps_logged(logs[0])[0] == max(finalized) + 1 and f'step {steps}/{steps}' in open(
      logs[0]).read(), tail(logs[0])
  assert steps in _finalized_steps(workdir)
