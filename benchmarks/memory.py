"""Memory per device of the paper's training step (configs/default.py), from XLA's own buffer
assignment: `jax.jit(train_step).lower(abstract state, abstract batch).compile()
.memory_analysis()`. Nothing is allocated or run; the state is abstract (jax.eval_shape).

  python -m benchmarks.memory                          # the table below, a few minutes on CPU
  python -m benchmarks.memory --settings=1:1,8:8 --batch_per_device=2 --vocab_size=8000

Each setting DEVICES:MODEL runs in a child process on DEVICES simulated CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count) with mesh model=MODEL (data = the rest): the
parameters and Adam moments over config.sharding.min_bytes (256 KiB) are sharded over 'model';
the batch is split over every device (batch_per_device clips each, the paper's 2 per GPU).
Columns, per device:
  params / adam: the train state's parameters and Adam moments held by one device (from the
                 shardings);
  arguments:     XLA's argument buffers (the whole train state + this device's batch);
  outputs:       new state + metrics; donated: output bytes that reuse argument buffers;
  temp:          XLA's temporaries (activations kept for the backward pass, gradients,
                 all-gathered parameters);
  peak ~ arguments + outputs - donated + temp (XLA's CPU buffer assignment; a GPU or TPU
  compiler schedules and fuses differently, so treat it as an estimate within tens of percent).
"""

import json
import os
import subprocess
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string('settings', '1:1,8:8', 'Comma-separated DEVICES:MODEL pairs.')
flags.DEFINE_integer('batch_per_device', 2, 'Clips per device (the paper: 2 per GPU).')
flags.DEFINE_integer('vocab_size', 8000, 'Word-embedding rows (the vocabulary of the training '
                     'expressions; it only changes the 384-wide embedding table).')
flags.DEFINE_string('child', '', 'Internal: run one DEVICES:MODEL setting, print JSON.')
FLAGS = flags.FLAGS


def measure(devices: int, model_axis: int, batch_per_device: int, vocab_size: int) -> dict:
  import jax  # noqa: PLC0415 -- after XLA_FLAGS is set by the parent
  import jax.numpy as jnp  # noqa: PLC0415

  from configs import default  # noqa: PLC0415
  from rvos_jax import sharding, train  # noqa: PLC0415
  from rvos_jax.models import mlrl_sa  # noqa: PLC0415

  assert jax.device_count() == devices, (jax.device_count(), devices)
  config = default.get_config()
  config.mesh.model = model_axis
  d = config.data
  model = mlrl_sa.build_model(config.model, vocab_size)
  tx = train.make_optimizer(config)
  mesh = sharding.make_mesh(config)
  abstract_state, shardings = train.abstract_train_state(config, model, tx, mesh)
  b = batch_per_device * devices
  bs = sharding.batch_sharding(mesh)
  video = (b, d.num_frames, d.height, d.width)
  batch = {
      'frames': jax.ShapeDtypeStruct((*video, 3), jnp.float32, sharding=bs),
      'tokens': jax.ShapeDtypeStruct((b, d.max_words), jnp.int32, sharding=bs),
      'token_mask': jax.ShapeDtypeStruct((b, d.max_words), jnp.bool_, sharding=bs),
      'masks': jax.ShapeDtypeStruct(video, jnp.float32, sharding=bs),
      'object_masks': jax.ShapeDtypeStruct(video, jnp.float32, sharding=bs),
      'boundary': jax.ShapeDtypeStruct(video, jnp.float32, sharding=bs),
      'frame_valid': jax.ShapeDtypeStruct((b, d.num_frames), jnp.bool_, sharding=bs),
  }
  t0 = time.time()
  compiled = train.jit_train_step(model, tx, config, mesh, shardings).lower(
      abstract_state, batch).compile()
  mem = compiled.memory_analysis()
  params, params_total = sharding.bytes_per_device(abstract_state.params)
  adam, adam_total = sharding.bytes_per_device(abstract_state.opt_state)
  out = dict(
      devices=devices, mesh=dict(mesh.shape), global_batch=b, params=params,
      params_total=params_total, adam=adam, adam_total=adam_total,
      arguments=int(mem.argument_size_in_bytes), outputs=int(mem.output_size_in_bytes),
      donated=int(mem.alias_size_in_bytes), temp=int(mem.temp_size_in_bytes),
      code=int(mem.generated_code_size_in_bytes), compile_s=round(time.time() - t0, 1))
  out['peak'] = out['arguments'] + out['outputs'] - out['donated'] + out['temp']
  return out


def gib(n: int) -> str:
  return f'{n / 2**30:.2f} GiB'


def mib(n: int) -> str:
  return f'{n / 2**20:.1f}'


def table(rows: list[dict]) -> str:
  head = ('| devices | mesh (data x model) | global batch | params | Adam moments | arguments '
          '| outputs | donated | temp | peak |')
  lines = [head, '|' + '---|' * 10]
  for r in rows:
    lines.append(
        f"| {r['devices']} | {r['mesh']['data']} x {r['mesh']['model']} | {r['global_batch']} "
        f"| {mib(r['params'])} MiB | {mib(r['adam'])} MiB | {gib(r['arguments'])} "
        f"| {gib(r['outputs'])} | {gib(r['donated'])} | {gib(r['temp'])} | **{gib(r['peak'])}** |")
  return '\n'.join(lines) + '\n\nPer device; GiB = 2^30 bytes, MiB = 2^20 bytes.'


def main(argv):
  del argv
  if FLAGS.child:
    devices, model_axis = map(int, FLAGS.child.split(':'))
    print('RESULT ' + json.dumps(measure(devices, model_axis, FLAGS.batch_per_device,
                                         FLAGS.vocab_size)), flush=True)
    return
  rows = []
  for setting in FLAGS.settings.split(','):
    devices = int(setting.split(':')[0])
    env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
               XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
    cmd = [sys.executable, '-m', 'benchmarks.memory', f'--child={setting}',
           f'--batch_per_device={FLAGS.batch_per_device}', f'--vocab_size={FLAGS.vocab_size}']
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    result = [x for x in proc.stdout.splitlines() if x.startswith('RESULT ')]
    if proc.returncode or not result:
      sys.exit(f'{setting} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
    rows.append(json.loads(result[0][len('RESULT '):]))
    r = rows[-1]
    print(f"{setting}: compiled in {r['compile_s']} s; parameters {r['params_total']:,} bytes "
          f"in all, Adam moments {r['adam_total']:,}", flush=True)
  print(table(rows))


if __name__ == '__main__':
  app.run(main)
